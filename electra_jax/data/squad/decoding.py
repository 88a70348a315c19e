"""SQuAD span decoding: best spans per question from start/end logits or a head's own candidates, n-best lists."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

PathLike = str | os.PathLike

from electra_jax.data.squad.features import SquadFeatures
from electra_jax.data.squad.parsing import SquadExample


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
