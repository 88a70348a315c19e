"""GLUE featurization (pairs truncated longest-first, as BERT/ELECTRA) and leaderboard prediction files."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


log = logging.getLogger(__name__)

PathLike = str | os.PathLike

from electra_jax.data.glue.reading import _tsv_rows
from electra_jax.data.glue.tasks import Example, GlueFormatError, get_task, parse_label
from electra_jax.data.tokenization import special_ids


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
  if max_seq_length < 3:
    raise GlueFormatError(f"max_seq_length must be at least 3, got {max_seq_length}")
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
    raise GlueFormatError(f"GLUE {t.name} has no leaderboard file for split {split!r}; test splits: "
                          f"{list(t.submissions)}")
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
