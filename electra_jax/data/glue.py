"""GLUE tasks: registry, TSV and TFDS readers, featurization, leaderboard files.

    from electra_jax.data import glue
    from electra_jax.data.tokenization import load_tokenizer

    examples = glue.read_split("mrpc", "/data/glue_data", "train")   # or the MRPC/ folder itself
    tok = load_tokenizer("vocab.txt")
    arrays = glue.featurize(examples, tok, max_seq_length=128, double_unordered=True)
    # arrays: input_ids, attention_mask, token_type_ids [N, L] int32; labels [N] int32 (float32 for stsb);
    # example_index [N] int32 (row of `examples` each feature came from)

    test = glue.read_split("mnli", "/data/glue_data", "test_matched")
    glue.write_predictions("mnli", {ex.idx: pred for ex, pred in zip(test, preds)},
                           "out/" + glue.submission_filename("mnli", "test_matched"))   # MNLI-m.tsv

    dev = glue.read_tfds("rte", "dev", data_dir="~/tensorflow_datasets")   # prepared TFDS glue/rte

Labels are int indices into `TASKS[task].labels` (the strings the TSVs use, in the order of the original ELECTRA/BERT
processors), floats for STS-B, and None for test splits. Malformed rows raise `GlueFormatError` naming the file and
line; `skip_malformed=True` skips them instead, counts them in a `ReadSummary` and logs that count.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from electra_jax import paths

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


class GlueFormatError(ValueError):
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
    raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
  return TASKS[key]


def _check_split(t: GlueTask, split: str) -> None:
  if split not in t.files:
    raise ValueError(f"GLUE task {t.name} has no split {split!r}; its splits are {list(t.files)}")


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


def _tsv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
  # utf-8-sig drops the BOM that starts the MRPC headers; QUOTE_NONE because GLUE texts contain bare quotes.
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    for row in reader:
      yield reader.line_num, row


def _resolve_columns(layout: Layout, header: list[str] | None, path: Path) -> dict[str, int | None]:
  fields = {"text_a": layout.text_a, "text_b": layout.text_b, "label": layout.label, "index": layout.index}
  if header is None:
    return {k: v for k, v in fields.items()}  # type: ignore[misc]
  out: dict[str, int | None] = {}
  for key, name in fields.items():
    if name is None:
      out[key] = None
    elif name not in header:
      raise GlueFormatError(f"{path}:1: header lacks column {name!r} (header is {header})")
    else:
      out[key] = header.index(name)
  return out


def read_file(task: str, path: PathLike, split: str, *, skip_malformed: bool = False
              ) -> tuple[list[Example], ReadSummary]:
  """Reads one GLUE TSV laid out as `split` of `task` says; returns the examples and a summary.

  Raises GlueFormatError (file:line) for a wrong column count, an unknown label, a bad index, or a duplicate index.
  With `skip_malformed=True` such rows are skipped and listed in the summary instead (header problems still raise).
  """
  t = get_task(task)
  _check_split(t, split)
  layout = t.layouts[split]
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"GLUE file {path} does not exist")
  summary = ReadSummary(str(path))
  examples: list[Example] = []
  seen: dict[int, int] = {}
  rows = _tsv_rows(path)
  header: list[str] | None = None
  expected = layout.num_columns
  if layout.header:
    first = next(iter(rows), None)
    if first is None:
      raise GlueFormatError(f"{path}:1: empty file (expected a header line)")
    header = first[1]
    expected = len(header)
  cols = _resolve_columns(layout, header, path)
  is_test = t.is_test(split)
  for line, row in rows:
    summary.rows += 1
    try:
      if len(row) != expected:
        raise ValueError(f"expected {expected} tab-separated columns, found {len(row)}")
      if cols["index"] is not None:
        raw_idx = row[cols["index"]]
        try:
          idx = int(raw_idx)
        except ValueError:
          raise ValueError(f"index {raw_idx!r} is not an integer") from None
      else:
        idx = summary.rows - 1
      if idx in seen:
        raise ValueError(f"index {idx} already used on line {seen[idx]}")
      label = None if is_test or cols["label"] is None else parse_label(t, row[cols["label"]])
    except ValueError as e:
      if not skip_malformed:
        raise GlueFormatError(f"{path}:{line}: {e}") from None
      summary.skipped.append((line, str(e)))
      continue
    seen[idx] = line
    text_b = row[cols["text_b"]] if cols["text_b"] is not None else None
    examples.append(Example(f"{split}-{idx}", row[cols["text_a"]], text_b, label, idx))
  summary.examples = len(examples)
  if summary.skipped:
    log.warning("%s", summary)
  return examples, summary


def read_split_with_summary(task: str, data_dir_or_task_folder: PathLike | None, split: str, *,
                            skip_malformed: bool = False) -> tuple[list[Example], ReadSummary]:
  """`read_split`, also returning the ReadSummary (rows read, examples kept, rows skipped with reasons)."""
  return read_file(task, split_file(task, data_dir_or_task_folder, split), split, skip_malformed=skip_malformed)


def read_split(task: str, data_dir_or_task_folder: PathLike | None, split: str, *,
               skip_malformed: bool = False) -> list[Example]:
  """Examples of `split` ("train", "dev", "test"; MNLI: "dev_matched", "test_mismatched", ...) of a GLUE task.

  Args:
    task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli or ax.
    data_dir_or_task_folder: the `glue_data/` folder, or the task's folder (e.g. `glue_data/MRPC`); None means
      `electra_jax.paths.data_dir() / "glue_data"`.
    split: a split of the task (`TASKS[task].splits`).
    skip_malformed: skip (and count, and log) malformed rows instead of raising GlueFormatError.
  """
  return read_split_with_summary(task, data_dir_or_task_folder, split, skip_malformed=skip_malformed)[0]


# ----------------------------------------------------------------------------------------------------------------------
# TFDS


def _as_str(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


def tfds_records(name: str, split: str, data_dir: PathLike | None) -> Sequence[Mapping[str, Any]]:
  """Records of a prepared TFDS dataset as numpy dicts.

  Uses `tfds.data_source` (random access; needs no TensorFlow) when the prepared files are array_record; falls back to
  `tfds.load` + `tfds.as_numpy`, which needs TensorFlow, for tfrecord data and says so when TF is absent.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading TFDS datasets needs the tensorflow-datasets package") from e
  # Register the builders explicitly: the lazy registry may skip modules that import TensorFlow.
  # pylint: disable=import-outside-toplevel,unused-import
  if name.startswith("glue/"):
    import tensorflow_datasets.text.glue  # noqa: F401
  elif name.startswith("squad/"):
    import tensorflow_datasets.question_answering.squad  # noqa: F401
  # pylint: enable=import-outside-toplevel,unused-import
  data_dir = os.fspath(Path(data_dir).expanduser()) if data_dir is not None else None
  try:
    # download=False: no network at run time; the data must already be prepared.
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except NotImplementedError as random_access_error:  # prepared (or expected) in a format without random access
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
          f"no prepared TFDS dataset {name} under {data_dir or 'the default TFDS data_dir'} (looked for "
          f"{builder.data_dir}); prepare it first, e.g. tfds build {name} --data_dir=... "
          f"--file_format=array_record") from None
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise RuntimeError(
          f"TFDS {name} in {builder.data_dir} is stored as {builder.info.file_format}, not array_record, so reading "
          f"it needs TensorFlow, which is not installed. Install tensorflow, or prepare the dataset again with "
          f"--file_format=array_record. (tfds.data_source said: {random_access_error})") from None
    return list(tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, download=False)))


def read_tfds(task: str, split: str, data_dir: PathLike | None = None) -> list[Example]:
  """Examples of a prepared TFDS `glue/<task>` dataset, mapped to the same Example/label scheme as `read_split`.

  `split` uses this module's names ("dev", "dev_matched", ...); TFDS "validation*" splits are picked accordingly.
  TFDS labels are remapped to this registry's order (by name for MNLI/AX/QNLI/RTE); label -1 becomes None.
  """
  t = get_task(task)
  _check_split(t, split)
  name = t.tfds_name
  records = tfds_records(name, _TFDS_SPLITS[split], data_dir)
  if t.tfds_labels is not None:
    # TFDS name -> our index. Binary tasks written 0/1 in the TSVs keep the TFDS integer.
    to_ours = [int(i) if t.labels == _BINARY else t.labels.index(n) for i, n in enumerate(t.tfds_labels)]
  examples = []
  for n, rec in enumerate(records):
    where = f"TFDS {name} {split} record {n}"
    try:
      idx = int(rec["idx"])
      text_a = _as_str(rec[t.tfds_text[0]])
      text_b = _as_str(rec[t.tfds_text[1]]) if t.tfds_text[1] else None
      raw = rec["label"]
    except KeyError as e:
      raise GlueFormatError(f"{where}: missing feature {e}") from None
    label: int | float | None
    if t.labels is None:
      value = float(raw)
      label = None if value == -1.0 and t.is_test(split) else value
    else:
      k = int(raw)
      if k == -1:
        label = None
      elif 0 <= k < len(to_ours):
        label = to_ours[k]
      else:
        raise GlueFormatError(f"{where}: label {k} outside 0..{len(to_ours) - 1}")
    if label is None and not t.is_test(split):
      raise GlueFormatError(f"{where}: unlabelled record in a labelled split")
    examples.append(Example(f"{split}-{idx}", text_a, text_b, label, idx))
  return examples


# ----------------------------------------------------------------------------------------------------------------------
# Featurization


def _truncate_pair(a: list[int], b: list[int], max_length: int) -> None:
  """BERT's longest-first truncation: drop the last token of the longer list (of `b` on ties) until they fit."""
  while len(a) + len(b) > max_length:
    if len(a) > len(b):
      a.pop()
    else:
      b.pop()


def featurize(examples: Sequence[Example], tokenizer, max_seq_length: int, *, double_unordered: bool = False,
              regression: bool | None = None) -> dict[str, np.ndarray]:
  """Tokenizes GLUE examples into fixed-length arrays: [CLS] A [SEP] (B [SEP]), zero-padded.

  Args:
    examples: from `read_split` / `read_tfds`.
    tokenizer: a `tokenizers.Tokenizer` from `electra_jax.data.tokenization.load_tokenizer`.
    max_seq_length: length of every row; pairs are truncated longest-first as BERT does.
    double_unordered: also add every pair with its sentences swapped (ELECTRA does this for MRPC and STS-B training
      data); the swapped copies follow the originals and share their `example_index`.
    regression: float32 labels if True, int32 if False; None infers it (float labels mean regression).

  Returns:
    input_ids, attention_mask, token_type_ids: int32 [N, max_seq_length]; labels: int32 [N] (-1 where the example has
    no label) or float32 [N] (NaN where none); example_index: int32 [N].
  """
  from electra_jax.data.tokenization import special_ids  # pylint: disable=import-outside-toplevel
  if max_seq_length < 3:
    raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
  ids = special_ids(tokenizer)
  cls_id, sep_id, pad_id = ids["cls"], ids["sep"], ids["pad"]
  if regression is None:
    regression = any(isinstance(ex.label, float) for ex in examples)
  order = list(range(len(examples)))
  swapped = [False] * len(examples)
  if double_unordered:
    pairs = [i for i, ex in enumerate(examples) if ex.text_b is not None]
    order += pairs
    swapped += [True] * len(pairs)
  enc_a = tokenizer.encode_batch([ex.text_a for ex in examples], add_special_tokens=False)
  has_b = [i for i, ex in enumerate(examples) if ex.text_b is not None]
  enc_b_list = tokenizer.encode_batch([examples[i].text_b for i in has_b], add_special_tokens=False)
  enc_b = dict(zip(has_b, enc_b_list))

  n = len(order)
  input_ids = np.full((n, max_seq_length), pad_id, np.int32)
  token_type = np.zeros((n, max_seq_length), np.int32)
  mask = np.zeros((n, max_seq_length), np.int32)
  labels = np.full((n,), np.nan, np.float32) if regression else np.full((n,), -1, np.int32)
  for row, (i, swap) in enumerate(zip(order, swapped)):
    a = list(enc_a[i].ids)
    b = list(enc_b[i].ids) if i in enc_b else None
    if swap:
      a, b = b, a
    if b is None:
      a = a[:max_seq_length - 2]
      seq, types = [cls_id] + a + [sep_id], [0] * (len(a) + 2)
    else:
      _truncate_pair(a, b, max_seq_length - 3)
      seq = [cls_id] + a + [sep_id] + b + [sep_id]
      types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    input_ids[row, :len(seq)] = seq
    token_type[row, :len(seq)] = types
    mask[row, :len(seq)] = 1
    if examples[i].label is not None:
      labels[row] = examples[i].label
  return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type, "labels": labels,
          "example_index": np.asarray(order, np.int32)}


# ----------------------------------------------------------------------------------------------------------------------
# Leaderboard files

PREDICTION_HEADER = ("index", "prediction")


def submission_filename(task: str, split: str = "test") -> str:
  """The file name the GLUE leaderboard expects for `split` of `task` (CoLA.tsv, MNLI-m.tsv, AX.tsv, ...)."""
  t = get_task(task)
  if split not in t.submissions:
    raise ValueError(f"GLUE {t.name} has no leaderboard file for split {split!r}; test splits: {list(t.submissions)}")
  return t.submissions[split]


def format_prediction(task: str, prediction: Any) -> str:
  """One prediction as the leaderboard writes it: the label string, or the STS-B score as a float."""
  t = get_task(task)
  if t.labels is None:
    value = float(np.asarray(prediction).reshape(()))
    if not math.isfinite(value):
      raise ValueError(f"STS-B prediction {prediction!r} is not finite")
    return f"{value:.3f}"
  if isinstance(prediction, str):
    if prediction not in t.labels:
      raise ValueError(f"{t.name} prediction {prediction!r} is not one of {list(t.labels)}")
    return prediction
  k = int(np.asarray(prediction).reshape(()))
  if not 0 <= k < len(t.labels):
    raise ValueError(f"{t.name} prediction {k} is not a label index in 0..{len(t.labels) - 1}")
  return t.labels[k]


def write_predictions(task: str, predictions: Mapping[int, Any] | Sequence[Any] | np.ndarray, path: PathLike) -> None:
  """Writes a GLUE leaderboard file: `index<TAB>prediction` header, then one row per example in index order.

  Args:
    task: the GLUE task (AX is written with MNLI labels).
    predictions: {idx: prediction} keyed by `Example.idx`, or a sequence whose position is the index. A prediction is
      a label index (or the label string) for classification tasks, a float for STS-B.
    path: output file; parent folders are created.
  """
  if isinstance(predictions, Mapping):
    items = sorted((int(k), v) for k, v in predictions.items())
  else:
    items = list(enumerate(predictions))
  lines = ["\t".join(PREDICTION_HEADER)]
  for idx, pred in items:
    try:
      lines.append(f"{idx}\t{format_prediction(task, pred)}")
    except ValueError as e:
      raise ValueError(f"prediction for index {idx}: {e}") from None
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_predictions(task: str, path: PathLike) -> dict[int, int | float]:
  """Reads a leaderboard-format prediction file back as {index: label index or float}; errors name file:line."""
  t = get_task(task)
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"prediction file {path} does not exist")
  out: dict[int, int | float] = {}
  lines: dict[int, int] = {}
  rows = iter(_tsv_rows(path))
  first = next(rows, None)
  if first is None or [c.strip().lower() for c in first[1]] != list(PREDICTION_HEADER):
    raise GlueFormatError(f"{path}:1: expected the header 'index<TAB>prediction', found {first and first[1]}")
  for line, row in rows:
    if not row:
      continue
    if len(row) != 2:
      raise GlueFormatError(f"{path}:{line}: expected 2 tab-separated columns, found {len(row)}")
    try:
      idx = int(row[0])
    except ValueError:
      raise GlueFormatError(f"{path}:{line}: index {row[0]!r} is not an integer") from None
    if idx in out:
      raise GlueFormatError(f"{path}:{line}: index {idx} already appears on line {lines[idx]}")
    try:
      if t.labels is None:
        value = float(row[1])
        if not math.isfinite(value):
          raise ValueError(f"prediction {row[1]!r} is not finite")
        out[idx] = value
      else:
        out[idx] = parse_label(t, row[1])
    except ValueError as e:
      raise GlueFormatError(f"{path}:{line}: {e}") from None
    lines[idx] = line
  return out
