"""SQuAD featurization: [CLS] question [SEP] context window [SEP], windows doc_stride tokens apart (BERT-style)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

PathLike = str | os.PathLike

from electra_jax.data.squad.parsing import SquadExample, SquadFormatError
from electra_jax.data.tokenization import special_ids


# ----------------------------------------------------------------------------------------------------------------------
# Featurization


@dataclasses.dataclass
class FeaturizeSummary:
  """Counts from `featurize_squad`.

  `answerable`, `unrecoverable` and `dropped` are filled when featurizing for training: `unrecoverable` lists the
  answerable questions whose first answer, cut back out of the context at the token boundaries of its start/end
  positions, differs from the gold text (whitespace aside), e.g. "gold" inside the token "golden". BERT skips such
  training questions, Hugging Face keeps them (with the wider span): see `drop_unrecoverable`.
  """
  examples: int = 0
  features: int = 0
  truncated_questions: int = 0
  answerable: int = 0
  unrecoverable: list[str] = dataclasses.field(default_factory=list)
  dropped: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SquadFeatures:
  """Model inputs and bookkeeping for F features (windows) of L tokens.

  offsets[f, t] is the (start, end) character span in the example's context of context token t, (-1, -1) for
  [CLS], question, [SEP] and padding. start/end positions (training only) index tokens; 0 ([CLS]) where the question is
  unanswerable or its answer is not inside the window. is_impossible is the example's flag (ELECTRA's answerability
  label).
  """
  input_ids: np.ndarray
  attention_mask: np.ndarray
  token_type_ids: np.ndarray
  offsets: np.ndarray
  token_is_max_context: np.ndarray
  example_index: np.ndarray
  is_impossible: np.ndarray
  start_positions: np.ndarray | None
  end_positions: np.ndarray | None
  summary: FeaturizeSummary

  def __len__(self) -> int:
    return int(self.input_ids.shape[0])

  def arrays(self) -> dict[str, np.ndarray]:
    """The per-feature arrays a model or trainer batches: inputs, example_index, and labels when training."""
    out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "token_type_ids": self.token_type_ids,
           "example_index": self.example_index, "is_impossible": self.is_impossible}
    if self.start_positions is not None:
      out["start_positions"] = self.start_positions
      out["end_positions"] = self.end_positions
    return out


def doc_spans(num_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
  """BERT's sliding windows over `num_tokens` context tokens: (start, length) pairs; one empty window if none."""
  spans: list[tuple[int, int]] = []
  start = 0
  while start < num_tokens:
    length = min(num_tokens - start, max_tokens)
    spans.append((start, length))
    if start + length == num_tokens:
      break
    start += min(length, doc_stride)
  return spans or [(0, 0)]


def max_context_owner(spans: Sequence[tuple[int, int]], num_tokens: int) -> np.ndarray:
  """For each context token, the window that gives it the most context (BERT's `_check_is_max_context`).

  Score of token p in window (s, n): min(p - s, s + n - 1 - p) + 0.01 * n; the first window with the best score wins.
  """
  pos = np.arange(num_tokens)
  scores = np.full((len(spans), num_tokens), -np.inf)
  for k, (s, n) in enumerate(spans):
    inside = (pos >= s) & (pos < s + n)
    scores[k, inside] = np.minimum(pos[inside] - s, s + n - 1 - pos[inside]) + 0.01 * n
  return np.argmax(scores, axis=0) if num_tokens else np.zeros((0,), np.int64)


def answer_token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
  """First and last context token overlapping characters [start_char, end_char); start > end if none does."""
  first = int(np.searchsorted(offsets[:, 1], start_char, side="right"))
  last = int(np.searchsorted(offsets[:, 0], end_char, side="left")) - 1
  return first, last


def _squash(text: str) -> str:
  return " ".join(text.split())


def featurize_squad(examples: Sequence[SquadExample], tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                    max_query_length: int = 64, is_training: bool = False, *,
                    drop_unrecoverable: bool = False, source: str = "SQuAD data") -> SquadFeatures:
  """Tokenizes questions and contexts into sliding-window features (see SquadFeatures).

  Args:
    examples: from `read_squad` / `read_squad_tfds`.
    tokenizer: a `tokenizers.Tokenizer` from `electra_jax.data.tokenization.load_tokenizer`.
    max_seq_length: tokens per feature, [CLS] and [SEP]s included.
    doc_stride: tokens between the starts of consecutive windows.
    max_query_length: questions are cut to this many tokens.
    is_training: compute start/end positions from the first gold answer.
    drop_unrecoverable: (training) leave out questions whose answer cannot be cut back out at token boundaries, as
      BERT does; they are always counted in `summary.unrecoverable`.
    source: the file the examples came from, named by the error when they give no feature.
  """
  ids = special_ids(tokenizer)
  cls_id, sep_id, pad_id = ids["cls"], ids["sep"], ids["pad"]
  summary = FeaturizeSummary(examples=len(examples))
  q_encs = tokenizer.encode_batch([ex.question for ex in examples], add_special_tokens=False)
  contexts = list(dict.fromkeys(ex.context for ex in examples))
  ctx_index = {c: k for k, c in enumerate(contexts)}
  ctx_tokens = []
  for enc in tokenizer.encode_batch(contexts, add_special_tokens=False):
    offs = np.asarray(enc.offsets, np.int32).reshape(-1, 2)
    ctx_tokens.append((np.asarray(enc.ids, np.int32), offs))

  rows: dict[str, list[Any]] = {
      k: [] for k in ("ids", "types", "offsets", "max_ctx", "example", "start", "end", "length")}
  for i, ex in enumerate(examples):
    q_ids = list(q_encs[i].ids)
    if len(q_ids) > max_query_length:
      q_ids = q_ids[:max_query_length]
      summary.truncated_questions += 1
    max_tokens = max_seq_length - len(q_ids) - 3
    if max_tokens <= 0:
      raise SquadFormatError(f"max_seq_length {max_seq_length} leaves no room for context after a {len(q_ids)}-token "
                             f"question (question {ex.qid}); raise max_seq_length or lower max_query_length")
    c_ids, c_offs = ctx_tokens[ctx_index[ex.context]]
    tok_start = tok_end = -1
    if is_training and not ex.is_impossible:
      summary.answerable += 1
      ans = ex.answers[0]
      tok_start, tok_end = answer_token_span(c_offs, ans.start, ans.start + len(ans.text))
      ok = tok_start <= tok_end and _squash(ex.context[c_offs[tok_start, 0]:c_offs[tok_end, 1]]) == _squash(ans.text)
      if not ok:
        summary.unrecoverable.append(ex.qid)
        if drop_unrecoverable:
          summary.dropped.append(ex.qid)
          continue
    spans = doc_spans(len(c_ids), max_tokens, doc_stride)
    owner = max_context_owner(spans, len(c_ids))
    prefix = len(q_ids) + 2
    for k, (s, n) in enumerate(spans):
      seq = np.full((max_seq_length,), pad_id, np.int32)
      seq[:prefix + n + 1] = [cls_id, *q_ids, sep_id, *c_ids[s:s + n], sep_id]
      types = np.zeros((max_seq_length,), np.int32)
      types[prefix:prefix + n + 1] = 1
      offsets = np.full((max_seq_length, 2), -1, np.int32)
      offsets[prefix:prefix + n] = c_offs[s:s + n]
      max_ctx = np.zeros((max_seq_length,), bool)
      max_ctx[prefix:prefix + n] = owner[s:s + n] == k
      start = end = 0
      if tok_start >= 0 and tok_start <= tok_end and s <= tok_start and tok_end < s + n:
        start, end = prefix + tok_start - s, prefix + tok_end - s
      for key, value in zip(rows, (seq, types, offsets, max_ctx, i, start, end, prefix + n + 1)):
        rows[key].append(value)
  summary.features = len(rows["ids"])
  if not rows["ids"]:
    dropped = f", {len(summary.dropped)} dropped as unrecoverable" if summary.dropped else ""
    raise SquadFormatError(f"{source}: no SQuAD features ({len(examples)} questions{dropped}); it needs questions "
                           f"whose answers lie in their contexts")
  input_ids = np.stack(rows["ids"])
  example_index = np.asarray(rows["example"], np.int32)
  return SquadFeatures(
      input_ids=input_ids,
      attention_mask=(np.arange(max_seq_length)[None, :] < np.asarray(rows["length"])[:, None]).astype(np.int32),
      token_type_ids=np.stack(rows["types"]),
      offsets=np.stack(rows["offsets"]),
      token_is_max_context=np.stack(rows["max_ctx"]),
      example_index=example_index,
      is_impossible=np.asarray([examples[i].is_impossible for i in example_index], np.int32),
      start_positions=np.asarray(rows["start"], np.int32) if is_training else None,
      end_positions=np.asarray(rows["end"], np.int32) if is_training else None,
      summary=summary)


