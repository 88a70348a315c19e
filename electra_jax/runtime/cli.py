"""What every binary does around its main: bad input is one line and a non-zero exit, --help exits 0, logs are quiet.

    from electra_jax.runtime import cli
    def main(argv): ...
    if __name__ == "__main__":
      cli.run(main, required=("config", "workdir"))

  * user errors -> `<prog>: error: <message>` on stderr and exit status 1 (`error_status`), the traceback in the log
    at debug level (--verbosity=1 shows it). A user error is the project's own `electra_jax.errors.Error` (bad
    input, file, config; every module's error class derives from it), an OS error about a file (not found,
    permission denied, a directory where a file was expected or the reverse, already exists, disk full), or a
    FloatingPointError (a diverged run);
  * anything else (a plain ValueError, KeyError, TypeError, ...) is a bug: its traceback, then `<prog>: internal
    error: ... this is a bug` with where to report it, exit status 1;
  * flag problems (an unknown flag, a mistyped config field, a config file that raises, a missing required flag)
    -> `<prog>: error: ...` and exit status 2, with the "did you mean" hint when there is one;
  * --help / --helpshort / --helpfull print the usage and exit 0; binaries with a --config flag also get
    --config_help, which prints every config field with its value and exits;
  * logs: by default the lines of this project (steps, scores, paths) and every library's warnings; other libraries'
    INFO lines (Orbax's per-save chatter, JAX's "Unable to initialize backend 'tpu'") and Orbax's warnings appear
    with --verbosity=1 (which also turns on debug lines).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

from electra_jax import errors

FLAGS = flags.FLAGS
_HELP = ("--help", "-help", "-h", "--helpshort", "-helpshort", "--helpfull", "-helpfull", "-?", "--?")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # electra_jax/
_REPO_DIR = os.path.dirname(_PACKAGE_DIR)
_OWN_DIRS = tuple(os.path.join(_REPO_DIR, d) + os.sep for d in ("electra_jax", "configs", "benchmarks", "scripts"))


class UsageError(Exception):
  """Bad flags: reported in one line with exit status 2."""


def _program() -> str:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  name = spec.name if spec is not None else os.path.basename(sys.argv[0])
  name = name.removesuffix(".__main__")
  return name.rsplit(".", 1)[-1]


_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
REPORT_BUGS_TO = "the electra_jax issue tracker, with the command you ran"   # where a bug report goes


def is_user_error(exc: BaseException) -> bool:
  """Whether `exc` means bad input (or a diverged run), not a bug: the project's own errors, OS errors about a file
  (including a full disk) and FloatingPointError."""
  if isinstance(exc, (errors.Error, FloatingPointError, *_FILE_ERRORS)):
    return True
  return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def one_line(exc: BaseException) -> str:
  """The message of `exc` on one line (KeyError's quotes dropped; empty messages named by their class)."""
  text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
  text = " ".join(str(text).split())
  return text or type(exc).__name__


def _override_flag(argv: Sequence[str], key: str) -> str:
  """The --config.a.b.<key> argument that names the unknown field `key` (ml_collections reports the last part)."""
  for arg in argv:
    name = arg.split("=", 1)[0]
    if name.startswith("--") and "." in name and name.rsplit(".", 1)[1] == key:
      return name
  return f"--config.{key}"


def _config_field_hint(text: str) -> str:
  """The hint "; did you mean --config.<name>?" when an unknown flag names a field of the parsed --config."""
  unknown = re.search(r"Unknown command line flag '([^']+)'", text)
  if not unknown or "config" not in FLAGS:
    return ""
  name = unknown.group(1)
  config = FLAGS["config"].value
  try:
    known = config is not None and name.split(".")[0] in config
  except Exception:  # pylint: disable=broad-except
    known = False
  if not known:
    return ""
  return f"; did you mean --config.{name}? (config fields are set as --config.<field>=<value>)"


def _flag_error_message(exc: BaseException, argv: Sequence[str] = ()) -> str:
  """A flag parsing error as one line: the config file's own exception, or the mistyped field and its suggestion."""
  text = str(exc.args[0]) if isinstance(exc, (KeyError, AttributeError)) and exc.args else str(exc)
  hint = _config_field_hint(text)
  if hint:
    return text.strip().splitlines()[0] + hint
  suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if suggestion:
    good, bad = suggestion.groups()
    return f"{_override_flag(argv, bad)}: no such config field; did you mean {good}? (--config_help lists the fields)"
  if isinstance(exc, (KeyError, AttributeError)):
    key = text.strip().splitlines()[0].strip("'\"") if text.strip() else "?"
    return f"{_override_flag(argv, key)}: no such config field (--config_help lists the fields)"
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  if any(l.startswith("Traceback") for l in lines):   # config_flags embeds the config file's traceback
    head = lines[0].rstrip(":").removesuffix(": Error whilst parsing config file").rstrip(":")
    cause = re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", lines[-1])
    return f"{head}: {cause}"
  return " ".join(lines) if lines else type(exc).__name__


def _config_lines(config: Any, prefix: str = "") -> list[str]:
  lines = []
  for key in sorted(config.keys()):
    value = config[key]
    if hasattr(value, "keys") and not isinstance(value, (str, bytes)):
      lines += _config_lines(value, f"{prefix}{key}.")
    else:
      lines.append(f"  --config.{prefix}{key}={value!r}")
  return lines


def config_help(flag_name: str = "config") -> str:
  """Every field of the parsed --config with its value, and where the fields are documented."""
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  try:
    source = config_flags.get_config_filename(FLAGS[flag_name])
  except Exception:  # pylint: disable=broad-except
    source = FLAGS[flag_name].serialize()
  source = source.split(":")[0]
  head = (f"Fields of --{flag_name} ({source}; the comments there say what each does). Override any with "
          f"--{flag_name}.<field>=<value>:")
  return "\n".join([head, *_config_lines(FLAGS[flag_name].value)])


def _parser(required: Sequence[str], has_config: bool) -> Callable[[list[str]], list[str]]:
  def parse(argv: list[str]) -> list[str]:
    prog = _program()
    wants_help = any(a in _HELP for a in argv[1:])
    try:
      rest = FLAGS(argv)
    except SystemExit as e:   # absl's help flags print the usage, then exit 1
      if wants_help:
        if has_config:
          print("\nConfig fields: every field of --config can be overridden with --config.<field>=<value>; "
                "--config=<file> --config_help lists them with their values (the file's comments say what each "
                "does).")
        sys.exit(0)
      raise e
    except (flags.Error, KeyError, AttributeError, ValueError) as e:
      message = _flag_error_message(e, argv)
      print(f"{prog}: error: {message}{'' if '--config_help' in message else ' (see --help)'}", file=sys.stderr)
      sys.exit(2)
    if has_config and FLAGS["config_help"].value:
      if FLAGS["config"].value is None:
        print(f"{prog}: error: --config_help needs --config=<file> (see --help)", file=sys.stderr)
        sys.exit(2)
      print(config_help())
      sys.exit(0)
    missing = [f"--{name}" for name in required if FLAGS[name].value in (None, "")]
    if missing:
      print(f"{prog}: error: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required (see --help)",
            file=sys.stderr)
      sys.exit(2)
    return rest
  return parse


class _OwnLinesFilter(logging.Filter):
  """Keeps warnings and errors, and this project's own INFO lines; drops other libraries' INFO/DEBUG lines and
  Orbax's warnings (about its own internals: read-only managers, async threads)."""

  def filter(self, record: logging.LogRecord) -> bool:
    own = record.pathname.startswith(_OWN_DIRS) or record.pathname == "<stdin>"
    if own:
      return True
    if f"{os.sep}orbax{os.sep}" in record.pathname:
      return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING


def configure_logging() -> None:
  """Quiet logs unless --verbosity >= 1 (see the module docstring). Call after flags are parsed."""
  verbose = FLAGS["verbosity"].value >= 1 if "verbosity" in FLAGS else False
  logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
  if verbose:
    return
  handlers = [*logging.getLogger().handlers, absl_logging.get_absl_handler()]
  for handler in handlers:
    if not any(isinstance(f, _OwnLinesFilter) for f in handler.filters):
      handler.addFilter(_OwnLinesFilter())


def run(main: Callable[[list[str]], Any], *, required: Sequence[str] = (), error_status: int = 1) -> None:
  """absl's app.run(main) with the behaviour of the module docstring."""
  has_config = "config" in FLAGS
  if has_config and "config_help" not in FLAGS:
    flags.DEFINE_bool("config_help", False, "Print every field of --config with its value (what can be overridden "
                      "with --config.<field>=<value>), then exit.")

  def wrapped(argv: list[str]) -> None:
    configure_logging()
    prog = _program()
    try:
      main(argv)
    except app.UsageError as e:
      print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
      sys.exit(2)
    except UsageError as e:
      print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
      sys.exit(2)
    except Exception as e:  # pylint: disable=broad-except
      if is_user_error(e):
        logging.debug("%s failed", prog, exc_info=True)
        message = one_line(e)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC and "disk" not in message.lower():
          message = f"disk full: {message}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(error_status)
      traceback.print_exc()
      print(f"{prog}: internal error: {type(e).__name__}: {one_line(e)}. This is a bug, not a problem with your "
            f"input: please report it, with the traceback above, to {REPORT_BUGS_TO}", file=sys.stderr)
      sys.exit(1)

  app.run(wrapped, flags_parser=_parser(tuple(required), has_config))
