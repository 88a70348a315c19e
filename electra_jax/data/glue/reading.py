"""GLUE readers: the TSV files of the original glue_data layout, and prepared TFDS glue/<task> datasets."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from electra_jax import errors

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

from electra_jax.data.glue.tasks import (_BINARY, _TFDS_SPLITS, Example, GlueFormatError, Layout, ReadSummary,
                                        _check_split, get_task, parse_label, split_file)


def _tsv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
  # utf-8-sig drops the BOM that starts the MRPC headers; QUOTE_NONE because GLUE texts contain bare quotes.
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
      for row in reader:
        yield reader.line_num, row
    except UnicodeDecodeError as e:
      raise GlueFormatError(errors.utf8_location(path, e)) from None


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
  if not examples:   # refused when read: an empty dev set would otherwise fail only after training
    why = f"all {summary.rows} rows malformed (e.g. {summary.skipped[0]})" if summary.skipped else (
        "only a header" if header is not None else "empty")
    raise GlueFormatError(f"{path}: no examples ({why}); expected {layout.num_columns} tab-separated columns a row")
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
      raise GlueFormatError(
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


