"""The one place that says where the benchmark data lives.

`ELECTRA_DATA_DIR` wins; otherwise `../shared/data` next to the repository (where the team's machines keep it).
"""

from __future__ import annotations

import os
from pathlib import Path

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
