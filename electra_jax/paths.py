"""Where the benchmark data lives, and the one way a JSON file is written whole.

`ELECTRA_DATA_DIR` wins; otherwise `../shared/data` next to the repository (where the team's machines keep it).
`write_json_atomically(path, obj)`: readers see the old file or the new one, never a part (local paths and, through
etils.epath, gs:// and other remote paths).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "ELECTRA_DATA_DIR"


def data_dir() -> Path:
  """Returns the data folder (it may not exist; callers say what is missing)."""
  env = os.environ.get(ENV_VAR)
  if env:
    return Path(env).expanduser().resolve()
  return (REPO_ROOT.parent / "shared" / "data").resolve()


def default_vocab() -> Path:
  return data_dir() / "vocab" / "bert-base-uncased-vocab.txt"


def default_corpus() -> Path:
  return data_dir() / "corpus" / "wikitext-2-raw"


def write_json_atomically(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = True,
                          default: Callable[[Any], Any] | None = None, allow_nan: bool = True,
                          tmp_suffix: str = ".tmp") -> str:
  """Writes `obj` as JSON to `path` + `tmp_suffix`, then renames it over `path` (local files are synced first);
  returns the path. The arguments are json.dump's."""
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default, allow_nan=allow_nan) + "\n"
  path = os.fspath(path)
  tmp = path + tmp_suffix
  if "://" in path:
    from etils import epath  # pylint: disable=import-outside-toplevel
    epath.Path(tmp).write_text(text)
    epath.Path(tmp).replace(path)
    return path
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path
