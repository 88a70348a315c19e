"""The one base class of the errors that mean bad input, not a bug.

Every binary (runtime/cli.py) reports an `Error` as one line naming the file, line, key or field, with a non-zero
exit; anything else that escapes is a bug and keeps its traceback. Modules define their own subclasses, usually
also deriving from the built-in class whose meaning they share (`class ConfigError(Error, ValueError)`), so callers
that catch ValueError keep working.
"""


class Error(Exception):
  """Bad input, a bad file or a bad config: reported to the user in one line."""


class DiskFullError(Error, OSError):
  """A write that failed because the disk (or quota) is full; the message names the path."""


_DISK_FULL_RE = r"no space left on device|enospc|storagefull|disk quota exceeded|\bos error 28\b|\bcode: 28\b"


def is_disk_full(exc: BaseException) -> bool:
  """Whether `exc` says the disk is full: an OSError with errno ENOSPC / EDQUOT, or a library's own error (Rust
  safetensors' SafetensorError, array_record's RuntimeError) whose text carries the OS's message."""
  import errno  # pylint: disable=import-outside-toplevel
  if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
    return True
  import re  # pylint: disable=import-outside-toplevel
  return re.search(_DISK_FULL_RE, str(exc).lower()) is not None


def disk_full(path: str, doing: str, exc: BaseException) -> DiskFullError:
  """The one-line error for a full disk while `doing` something to `path`."""
  detail = " ".join(str(exc).split())[:200]
  return DiskFullError(f"{path}: disk full while {doing} ({detail}); free space (or write elsewhere) and run again")


def utf8_location(path, exc: UnicodeDecodeError | None = None) -> str:
  """ "<path>:<line>: not valid UTF-8 (<reason> at byte <column>)" for the first line of `path` that does not decode
  (a decoder's error knows only its offset in a buffer, not the line)."""
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        raw.decode("utf-8")
      except UnicodeDecodeError as e:
        return f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start} of the line)"
  reason = f" ({exc.reason})" if exc is not None else ""
  return f"{path}: not valid UTF-8{reason}"
