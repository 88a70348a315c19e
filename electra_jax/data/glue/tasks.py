"""GLUE task registry: the tasks, their TSV layouts and labels, and where each split lives."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from electra_jax import errors, paths

log = logging.getLogger(__name__)

PathLike = str | os.PathLike



class GlueFormatError(errors.Error, ValueError):
  """A GLUE file (or prediction file) that does not have the expected format; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One GLUE example.

  Attributes:
    guid: `"<split>-<idx>"`, unique within a split.
    text_a: first sentence.
    text_b: second sentence, or None for single-sentence tasks.
    label: int index into the task's labels, float score (STS-B), or None (test splits).
    idx: the GLUE index: the file's `index` (or QQP test `id`) column where it has one, else the 0-based data-row
      number. Leaderboard prediction files are keyed by it.
  """
  guid: str
  text_a: str
  text_b: str | None
  label: int | float | None
  idx: int


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the fields of one kind of TSV file are.

  With `header=True`, fields are named by header column and every row must have as many columns as the header.
  With `header=False`, fields are column positions and every row must have exactly `num_columns` columns.
  """
  header: bool
  text_a: str | int
  text_b: str | int | None = None
  label: str | int | None = None
  index: str | None = None
  num_columns: int | None = None


@dataclasses.dataclass(frozen=True)
class GlueTask:
  """Everything the readers, writers and scorers need to know about one GLUE task."""
  name: str
  folder: str                          # folder under glue_data/
  files: Mapping[str, str]             # split -> file name in the folder
  layouts: Mapping[str, Layout]        # split -> column layout
  labels: tuple[str, ...] | None       # label strings as written in the TSVs; None = regression
  metrics: tuple[str, ...]             # what `electra_jax.eval.metrics.glue_metrics` reports
  main_metric: str                     # the ELECTRA paper's metric for the task
  submissions: Mapping[str, str]       # test split -> leaderboard file name
  tfds_name: str
  tfds_text: tuple[str, str | None]    # TFDS feature names of text_a / text_b
  tfds_labels: tuple[str, ...] | None  # TFDS ClassLabel names, in TFDS order

  @property
  def is_regression(self) -> bool:
    return self.labels is None

  @property
  def num_labels(self) -> int:
    return 1 if self.labels is None else len(self.labels)

  @property
  def label_names(self) -> tuple[str, ...] | None:
    """Readable label names in label order: the TFDS names where the TSVs write 0/1 (SST-2: negative, positive)."""
    if self.labels == _BINARY and self.tfds_labels is not None:
      return self.tfds_labels
    return self.labels

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.files)

  def is_test(self, split: str) -> bool:
    return split.startswith("test")


_BINARY = ("0", "1")
_NLI = ("entailment", "not_entailment")
_MNLI = ("contradiction", "entailment", "neutral")   # ELECTRA/BERT MnliProcessor order (TFDS/HF order differs)
_STD_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_MNLI_FILES = {"train": "train.tsv", "dev_matched": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv",
               "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}


def _pair_layouts(a: str, b: str, label: str, index: str | None = "index",
                  test_index: str = "index") -> dict[str, Layout]:
  labelled = Layout(header=True, text_a=a, text_b=b, label=label, index=index)
  return {"train": labelled, "dev": labelled, "test": Layout(header=True, text_a=a, text_b=b, index=test_index)}


_COLA_NO_HEADER = Layout(header=False, text_a=3, label=1, num_columns=4)   # source, label, author mark, sentence
_MNLI_LABELLED = Layout(header=True, text_a="sentence1", text_b="sentence2", label="gold_label", index="index")
_MNLI_TEST = Layout(header=True, text_a="sentence1", text_b="sentence2", index="index")

TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "cola", "CoLA", _STD_FILES,
        {"train": _COLA_NO_HEADER, "dev": _COLA_NO_HEADER,
         "test": Layout(header=True, text_a="sentence", index="index")},
        _BINARY, ("mcc",), "mcc", {"test": "CoLA.tsv"},
        "glue/cola", ("sentence", None), ("unacceptable", "acceptable")),
    "sst2": GlueTask(
        "sst2", "SST-2", _STD_FILES,
        {"train": Layout(header=True, text_a="sentence", label="label"),
         "dev": Layout(header=True, text_a="sentence", label="label"),
         "test": Layout(header=True, text_a="sentence", index="index")},
        _BINARY, ("accuracy",), "accuracy", {"test": "SST-2.tsv"},
        "glue/sst2", ("sentence", None), ("negative", "positive")),
    "mrpc": GlueTask(
        "mrpc", "MRPC", _STD_FILES,
        _pair_layouts("#1 String", "#2 String", "Quality", index=None),
        _BINARY, ("accuracy", "f1", "accuracy_f1_avg"), "accuracy", {"test": "MRPC.tsv"},
        "glue/mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    "stsb": GlueTask(
        "stsb", "STS-B", _STD_FILES,
        _pair_layouts("sentence1", "sentence2", "score"),
        None, ("pearson", "spearman", "pearson_spearman_avg"), "spearman", {"test": "STS-B.tsv"},
        "glue/stsb", ("sentence1", "sentence2"), None),
    "qqp": GlueTask(
        "qqp", "QQP", _STD_FILES,
        _pair_layouts("question1", "question2", "is_duplicate", index=None, test_index="id"),
        _BINARY, ("accuracy", "f1", "accuracy_f1_avg"), "accuracy", {"test": "QQP.tsv"},
        "glue/qqp", ("question1", "question2"), ("not_duplicate", "duplicate")),
    "mnli": GlueTask(
        "mnli", "MNLI", _MNLI_FILES,
        {"train": _MNLI_LABELLED, "dev_matched": _MNLI_LABELLED, "dev_mismatched": _MNLI_LABELLED,
         "test_matched": _MNLI_TEST, "test_mismatched": _MNLI_TEST},
        _MNLI, ("accuracy",), "accuracy", {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
        "glue/mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction")),
    "qnli": GlueTask(
        "qnli", "QNLI", _STD_FILES,
        _pair_layouts("question", "sentence", "label"),
        _NLI, ("accuracy",), "accuracy", {"test": "QNLI.tsv"},
        "glue/qnli", ("question", "sentence"), ("entailment", "not_entailment")),
    "rte": GlueTask(
        "rte", "RTE", _STD_FILES,
        _pair_layouts("sentence1", "sentence2", "label"),
        _NLI, ("accuracy",), "accuracy", {"test": "RTE.tsv"},
        "glue/rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
    "wnli": GlueTask(
        "wnli", "WNLI", _STD_FILES,
        _pair_layouts("sentence1", "sentence2", "label"),
        _BINARY, ("accuracy",), "accuracy", {"test": "WNLI.tsv"},
        "glue/wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    # The diagnostic set: test only, scored by GLUE with Matthews correlation over the MNLI labels.
    "ax": GlueTask(
        "ax", "diagnostic", {"test": "diagnostic.tsv"},
        {"test": Layout(header=True, text_a="sentence1", text_b="sentence2", index="index")},
        _MNLI, ("mcc",), "mcc", {"test": "AX.tsv"},
        "glue/ax", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction")),
}

_TFDS_SPLITS = {"train": "train", "dev": "validation", "test": "test",
                "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched",
                "test_matched": "test_matched", "test_mismatched": "test_mismatched"}

# STS-B scores are similarity ratings on a 0..5 scale.
STSB_RANGE = (0.0, 5.0)


def get_task(task: str) -> GlueTask:
  """The registry entry for `task` (case-insensitive; "sst-2", "sts-b" and "diagnostic" are accepted too)."""
  key = task.lower().replace("-", "")
  key = {"diagnostic": "ax", "sst": "sst2", "sts": "stsb"}.get(key, key)
  if key not in TASKS:
    raise GlueFormatError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
  return TASKS[key]


def _check_split(t: GlueTask, split: str) -> None:
  if split not in t.files:
    raise GlueFormatError(f"GLUE task {t.name} has no split {split!r}; its splits are {list(t.files)}")


def split_file(task: str, data_dir_or_task_folder: PathLike | None, split: str) -> Path:
  """The TSV of `split`, given either the `glue_data/` folder or the task's own folder (None: the shared data)."""
  t = get_task(task)
  _check_split(t, split)
  base = Path(data_dir_or_task_folder) if data_dir_or_task_folder is not None else paths.data_dir() / "glue_data"
  base = base.expanduser()
  for folder in (base / t.folder, base):
    candidate = folder / t.files[split]
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
      f"GLUE {t.name} {split}: neither {base / t.folder / t.files[split]} nor {base / t.files[split]} exists "
      f"(pass the glue_data/ folder or the {t.folder}/ folder)")


@dataclasses.dataclass
class ReadSummary:
  """What a reader did with a file: counts, and every skipped row as (line number, reason)."""
  path: str
  rows: int = 0
  examples: int = 0
  skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    text = f"{self.path}: {self.rows} data rows, {self.examples} examples"
    if self.skipped:
      first = "; ".join(f"line {n}: {why}" for n, why in self.skipped[:3])
      text += f", {len(self.skipped)} malformed rows skipped ({first}{'; ...' if len(self.skipped) > 3 else ''})"
    return text


def parse_label(t: GlueTask, raw: str) -> int | float:
  """A TSV label string as an int index (classification) or a float (STS-B); ValueError if it is not one."""
  if t.labels is None:
    try:
      value = float(raw)
    except ValueError:
      raise ValueError(f"STS-B score {raw!r} is not a number") from None
    if not math.isfinite(value) or not STSB_RANGE[0] <= value <= STSB_RANGE[1]:
      raise ValueError(f"STS-B score {raw!r} is outside {list(STSB_RANGE)}")
    return value
  try:
    return t.labels.index(raw)
  except ValueError:
    raise ValueError(f"unknown label {raw!r} (expected one of {list(t.labels)})") from None


