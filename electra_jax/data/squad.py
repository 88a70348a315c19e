"""SQuAD v1.1 / v2.0: readers (official JSON, TFDS), sliding-window featurization, span decoding.

    from electra_jax.data import squad
    from electra_jax.data.tokenization import load_tokenizer

    version, examples = squad.load_squad("dev-v2.0.json")          # "1.1" or "2.0"; or squad.read_squad(path)
    feats = squad.featurize_squad(examples, load_tokenizer("vocab.txt"), max_seq_length=384, doc_stride=128,
                                  max_query_length=64, is_training=False)
    batch = feats.arrays()          # input_ids, attention_mask, token_type_ids [F, L] (+ positions when training)
    ...                             # run the model: start_logits, end_logits [F, L]
    preds, null_odds, nbest = squad.postprocess(examples, feats, start_logits, end_logits, version_2=True)
    # preds {qid: text}; null_odds {qid: null score - best span score} (v2 only); nbest {qid: [{text, probability,..}]}

Features are built BERT-style from the tokenizer's character offsets: [CLS] question [SEP] context window [SEP], windows
`doc_stride` tokens apart, each context token flagged where its window gives it the most context. Answer text is cut
from the original context by character offsets. A head that scores spans some other way (e.g. ELECTRA's beam-search
head with an answerability logit) passes its per-feature candidates to `decode_candidates`, which shares the span
checks, the text extraction and the aggregation over windows with `postprocess`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

PathLike = str | os.PathLike


class SquadFormatError(ValueError):
  """A SQuAD record that cannot be used; the message names the file and the question id."""


class Answer(NamedTuple):
  text: str
  start: int  # character offset of the answer in the context


@dataclasses.dataclass(frozen=True)
class SquadExample:
  """One question. `answers` is empty for unanswerable (v2.0) questions, which may carry `plausible_answers`."""
  qid: str
  question: str
  context: str
  answers: tuple[Answer, ...]
  is_impossible: bool = False
  plausible_answers: tuple[Answer, ...] = ()
  title: str = ""


# ----------------------------------------------------------------------------------------------------------------------
# Reading


def detect_version(dataset_json: Mapping[str, Any]) -> str:
  """"1.1" or "2.0": from the `version` field ("1.1", "v2.0"), else "2.0" if any question has `is_impossible`."""
  version = str(dataset_json.get("version", "")).lower().lstrip("v")
  if version.startswith("2"):
    return "2.0"
  if version.startswith("1"):
    return "1.1"
  for article in dataset_json.get("data", []):
    for paragraph in article.get("paragraphs", []):
      if any("is_impossible" in qa for qa in paragraph.get("qas", [])):
        return "2.0"
  return "1.1"


def _answers(raw: Any, context: str, where: str, field: str) -> tuple[Answer, ...]:
  if not isinstance(raw, list):
    raise SquadFormatError(f"{where}: '{field}' is not a list")
  out = []
  for k, ans in enumerate(raw):
    if not isinstance(ans, Mapping) or "text" not in ans or "answer_start" not in ans:
      raise SquadFormatError(f"{where}: {field}[{k}] lacks 'text' or 'answer_start'")
    text, start = ans["text"], ans["answer_start"]
    if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
      raise SquadFormatError(f"{where}: {field}[{k}] has a non-string text or a non-integer answer_start")
    if start < 0 or context[start:start + len(text)] != text:
      found = context[max(start, 0):max(start, 0) + len(text)]
      raise SquadFormatError(f"{where}: {field}[{k}] text {text!r} does not match the context at answer_start "
                             f"{start} (context has {found!r} there)")
    out.append(Answer(text, start))
  return tuple(out)


def example_from_qa(qa: Mapping[str, Any], context: str, title: str, version: str, source: str) -> SquadExample:
  """Validates one official-format question record (`qas` entry) and returns it as a SquadExample."""
  qid = qa.get("id")
  if not isinstance(qid, str) or not qid:
    raise SquadFormatError(f"{source}: a question in article {title!r} has no 'id'")
  where = f"{source}: question {qid}"
  question = qa.get("question")
  if not isinstance(question, str):
    raise SquadFormatError(f"{where}: no 'question' text")
  if "answers" not in qa:
    raise SquadFormatError(f"{where}: no 'answers' field")
  answers = _answers(qa["answers"], context, where, "answers")
  impossible = qa.get("is_impossible", False)
  if not isinstance(impossible, bool):
    raise SquadFormatError(f"{where}: 'is_impossible' is not a boolean")
  plausible = _answers(qa.get("plausible_answers", []), context, where, "plausible_answers")
  if version == "1.1" and impossible:
    raise SquadFormatError(f"{where}: 'is_impossible' in a v1.1 file")
  if impossible and answers:
    raise SquadFormatError(f"{where}: is_impossible is true but 'answers' is not empty")
  if not impossible and not answers:
    raise SquadFormatError(f"{where}: no answers (and not marked is_impossible)")
  return SquadExample(qid, question, context, answers, impossible, plausible, title)


def parse_squad(dataset_json: Mapping[str, Any], source: str = "<json>") -> tuple[str, list[SquadExample]]:
  """Validates an official SQuAD JSON object; returns (version, examples). Errors name `source` and question id."""
  if not isinstance(dataset_json, Mapping) or not isinstance(dataset_json.get("data"), list):
    raise SquadFormatError(f"{source}: not a SQuAD file (no top-level 'data' list)")
  version = detect_version(dataset_json)
  examples: list[SquadExample] = []
  seen: set[str] = set()
  for i, article in enumerate(dataset_json["data"]):
    title = str(article.get("title", f"#{i}")) if isinstance(article, Mapping) else f"#{i}"
    paragraphs = article.get("paragraphs") if isinstance(article, Mapping) else None
    if not isinstance(paragraphs, list):
      raise SquadFormatError(f"{source}: article {i} ({title!r}) has no 'paragraphs' list")
    for j, paragraph in enumerate(paragraphs):
      qas = paragraph.get("qas") if isinstance(paragraph, Mapping) else None
      if not isinstance(qas, list):
        raise SquadFormatError(f"{source}: paragraph {j} of article {title!r} has no 'qas' list")
      context = paragraph.get("context")
      if not isinstance(context, str) or not context.strip():
        ids = [qa.get("id") for qa in qas if isinstance(qa, Mapping)]
        raise SquadFormatError(f"{source}: paragraph {j} of article {title!r} (questions {ids[:3]}) has no "
                               f"'context' text")
      for qa in qas:
        if not isinstance(qa, Mapping):
          raise SquadFormatError(f"{source}: paragraph {j} of article {title!r} has a question that is not an object")
        ex = example_from_qa(qa, context, title, version, source)
        if ex.qid in seen:
          raise SquadFormatError(f"{source}: question {ex.qid}: id appears twice")
        seen.add(ex.qid)
        examples.append(ex)
  return version, examples


def load_squad(path: PathLike) -> tuple[str, list[SquadExample]]:
  """Reads an official SQuAD v1.1 or v2.0 JSON file; returns (version, examples)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"SQuAD file {path} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise SquadFormatError(f"{path}: not valid JSON ({e})") from None
  return parse_squad(data, str(path))


def read_squad(path: PathLike) -> list[SquadExample]:
  """The examples of an official SQuAD v1.1 or v2.0 JSON file (see `load_squad` for the version too)."""
  return load_squad(path)[1]


def _text(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_answers(rec: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
  if key not in rec:
    return []
  texts, starts = rec[key]["text"], rec[key]["answer_start"]
  return [{"text": _text(t), "answer_start": int(s)} for t, s in zip(texts, starts)]


def read_squad_tfds(version: str = "v1.1", split: str = "validation", data_dir: PathLike | None = None
                    ) -> list[SquadExample]:
  """Examples of a prepared TFDS `squad/v1.1` or `squad/v2.0`, validated like the JSON reader.

  Random access through `tfds.data_source` works without TensorFlow when the data was prepared as array_record;
  tfrecord data needs TensorFlow (the error says so).
  """
  from electra_jax.data.glue import tfds_records  # pylint: disable=import-outside-toplevel
  v = version.lower().lstrip("v")
  if v not in ("1.1", "2.0"):
    raise ValueError(f"SQuAD version must be v1.1 or v2.0, got {version!r}")
  split = {"dev": "validation"}.get(split, split)
  name = f"squad/v{v}"
  source = f"TFDS {name} {split}"
  examples, seen = [], set()
  for n, rec in enumerate(tfds_records(name, split, data_dir)):
    try:
      qa = {"id": _text(rec["id"]), "question": _text(rec["question"]), "answers": _tfds_answers(rec, "answers")}
      context, title = _text(rec["context"]), _text(rec.get("title", ""))
    except KeyError as e:
      raise SquadFormatError(f"{source}: record {n} lacks feature {e}") from None
    if "is_impossible" in rec:
      qa["is_impossible"] = bool(rec["is_impossible"])
      qa["plausible_answers"] = _tfds_answers(rec, "plausible_answers")
    if not context.strip():
      raise SquadFormatError(f"{source}: question {qa['id']}: no 'context' text")
    ex = example_from_qa(qa, context, title, v, source)
    if ex.qid in seen:
      raise SquadFormatError(f"{source}: question {ex.qid}: id appears twice")
    seen.add(ex.qid)
    examples.append(ex)
  return examples


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
                    drop_unrecoverable: bool = False) -> SquadFeatures:
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
  """
  from electra_jax.data.tokenization import special_ids  # pylint: disable=import-outside-toplevel
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
      raise ValueError(f"max_seq_length {max_seq_length} leaves no room for context after a {len(q_ids)}-token "
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
    raise ValueError("no SQuAD features: no examples (or all were dropped)")
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


# ----------------------------------------------------------------------------------------------------------------------
# Span decoding


def _softmax(scores: Sequence[float]) -> list[float]:
  if not scores:
    return []
  top = max(scores)
  exp = [math.exp(s - top) for s in scores]
  total = sum(exp)
  return [e / total for e in exp]


def _features_by_example(features: SquadFeatures, num_examples: int) -> list[list[int]]:
  groups: list[list[int]] = [[] for _ in range(num_examples)]
  for f, i in enumerate(features.example_index.tolist()):
    if not 0 <= i < num_examples:
      raise ValueError(f"feature {f} points at example {i}, but there are {num_examples} examples")
    groups[i].append(f)
  return groups


def valid_span(features: SquadFeatures, f: int, start: int, end: int, max_answer_length: int) -> bool:
  """BERT's span checks: both ends on context tokens, start where its window has max context, end >= start,
  at most `max_answer_length` tokens."""
  length = features.offsets.shape[1]
  if not (0 <= start < length and 0 <= end < length) or end < start or end - start + 1 > max_answer_length:
    return False
  offs = features.offsets[f]
  return bool(offs[start, 0] >= 0 and offs[end, 0] >= 0 and features.token_is_max_context[f, start])


def decode_candidates(examples: Sequence[SquadExample], features: SquadFeatures,
                      candidates: Sequence[Iterable[tuple[int, int, float]]], *,
                      null_scores: Sequence[float] | np.ndarray | None = None, null_odds_relative: bool = True,
                      n_best_size: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0,
                      ) -> tuple[dict[str, str], dict[str, float], dict[str, list[dict[str, Any]]]]:
  """Turns per-feature scored spans into per-question answers (text cut from the context by character offsets).

  Args:
    examples, features: as given to / returned by `featurize_squad`.
    candidates: for each feature, (start token, end token, score) triples, best first or in any order; invalid spans
      (see `valid_span`) are dropped here.
    null_scores: for SQuAD 2.0, one "no answer" score per feature; a question's null score is the minimum over its
      features. None: v1.1 decoding (always the best span).
    null_odds_relative: null odds = null score - best span score (BERT/HF, span scores and null score on the same
      scale, and the null entry joins the n-best list); False: null odds = the null score itself (e.g. ELECTRA's
      answerability logit).
    n_best_size: n-best list length (distinct texts).
    max_answer_length: longest span in tokens.
    null_threshold: with null_scores, predict "" when the null odds exceed it (math.inf: always the best span).

  Returns:
    predictions {qid: text}; null_odds {qid: float} (empty without null_scores; +inf where no span is valid);
    nbest {qid: [{"text", "probability", "score", "start_char", "end_char"}, ...]} best first.
  """
  groups = _features_by_example(features, len(examples))
  if len(candidates) != len(features):
    raise ValueError(f"{len(candidates)} candidate lists for {len(features)} features")
  if null_scores is not None and len(null_scores) != len(features):
    raise ValueError(f"{len(null_scores)} null scores for {len(features)} features")
  predictions: dict[str, str] = {}
  null_odds: dict[str, float] = {}
  all_nbest: dict[str, list[dict[str, Any]]] = {}
  for i, ex in enumerate(examples):
    if not groups[i]:
      raise ValueError(f"question {ex.qid} has no features")
    prelim: list[tuple[float, int, int, int]] = []
    for f in groups[i]:
      for start, end, score in candidates[f]:
        start, end = int(start), int(end)
        if valid_span(features, f, start, end, max_answer_length):
          prelim.append((float(score), f, start, end))
    score_null = math.inf
    if null_scores is not None:
      score_null = min(float(null_scores[f]) for f in groups[i])
      if null_odds_relative:
        prelim.append((score_null, -1, -1, -1))
    prelim.sort(key=lambda c: -c[0])  # stable: ties keep feature/candidate order, the null entry last

    nbest: list[dict[str, Any]] = []
    seen: set[str] = set()
    for score, f, start, end in prelim:
      if len(nbest) >= n_best_size:
        break
      if f < 0:
        text, start_char, end_char = "", -1, -1
      else:
        start_char, end_char = int(features.offsets[f, start, 0]), int(features.offsets[f, end, 1])
        text = ex.context[start_char:end_char]
      if text in seen:
        continue
      seen.add(text)
      nbest.append({"text": text, "score": score, "start_char": start_char, "end_char": end_char})
    if null_scores is not None and null_odds_relative and "" not in seen:
      nbest.append({"text": "", "score": score_null, "start_char": -1, "end_char": -1})
    for entry, p in zip(nbest, _softmax([e["score"] for e in nbest])):
      entry["probability"] = p
    best = next((e for e in nbest if e["text"]), None)
    if null_scores is None:
      predictions[ex.qid] = best["text"] if best else ""
    else:
      if null_odds_relative:
        odds = score_null - best["score"] if best else math.inf
      else:
        odds = score_null
      null_odds[ex.qid] = odds
      predictions[ex.qid] = "" if best is None or odds > null_threshold else best["text"]
    all_nbest[ex.qid] = nbest
  return predictions, null_odds, all_nbest


def top_span_candidates(features: SquadFeatures, start_logits: np.ndarray, end_logits: np.ndarray,
                        n_best_size: int = 20, max_answer_length: int = 30) -> list[list[tuple[int, int, float]]]:
  """BERT's candidates: the top-n start x top-n end positions per feature, scored start + end logit, kept if valid."""
  start_logits = np.asarray(start_logits, np.float64)
  end_logits = np.asarray(end_logits, np.float64)
  if start_logits.shape != features.input_ids.shape or end_logits.shape != features.input_ids.shape:
    raise ValueError(f"logits of shape {start_logits.shape} / {end_logits.shape} for features of shape "
                     f"{features.input_ids.shape}")
  is_context = features.offsets[..., 0] >= 0
  can_start = is_context & features.token_is_max_context
  out = []
  for f in range(len(features)):
    starts = np.argsort(-start_logits[f], kind="stable")[:n_best_size]
    ends = np.argsort(-end_logits[f], kind="stable")[:n_best_size]
    ss, ee = starts[:, None], ends[None, :]
    ok = can_start[f, ss] & is_context[f, ee] & (ee >= ss) & (ee - ss + 1 <= max_answer_length)
    rows, cols = np.nonzero(ok)  # row-major: start rank, then end rank, as BERT enumerates them
    out.append([(int(starts[r]), int(ends[c]), float(start_logits[f, starts[r]] + end_logits[f, ends[c]]))
                for r, c in zip(rows, cols)])
  return out


def postprocess(examples: Sequence[SquadExample], features: SquadFeatures, start_logits: np.ndarray,
                end_logits: np.ndarray, n_best_size: int = 20, max_answer_length: int = 30, version_2: bool = False,
                null_threshold: float = 0.0
                ) -> tuple[dict[str, str], dict[str, float], dict[str, list[dict[str, Any]]]]:
  """BERT/HF decoding of start/end logits [F, L] into answers (see `decode_candidates` for the outputs).

  v2: a feature's null score is start_logits[f, 0] + end_logits[f, 0] ([CLS]); the question's is the minimum over its
  features; the prediction is "" when null score - best span score > null_threshold; null_odds holds that difference
  (write it as the official script's --na-prob-file).
  """
  candidates = top_span_candidates(features, start_logits, end_logits, n_best_size, max_answer_length)
  null_scores = None
  if version_2:
    null_scores = np.asarray(start_logits, np.float64)[:, 0] + np.asarray(end_logits, np.float64)[:, 0]
  return decode_candidates(examples, features, candidates, null_scores=null_scores, n_best_size=n_best_size,
                           max_answer_length=max_answer_length, null_threshold=null_threshold)
