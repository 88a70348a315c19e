"""SQuAD v1.1 and v2.0 scoring, equivalent to the official evaluation scripts (our own code).

    python -m electra_jax.eval.squad dev-v1.1.json predictions.json
    {"exact_match": 86.8, "f1": 92.5}
    python -m electra_jax.eval.squad dev-v2.0.json predictions.json --na-prob-file null_odds.json --na-prob-thresh -2.75
    {"exact": .., "f1": .., "total": .., "HasAns_exact": .., ..., "best_exact": .., "best_exact_thresh": .., ...}

    from electra_jax.eval import squad
    squad.evaluate(json.load(open(path)), predictions, na_probs=null_odds)   # dispatches on the file's version

What the official scripts do, and so what this module does:
  * normalize_answer: lower case, drop punctuation (string.punctuation), drop the words a/an/the, squash whitespace.
  * v1.1 (evaluate-v1.1.py): exact match and token F1, max over the gold answers, as percentages of ALL questions
    (keys exact_match, f1). F1 is 0 when no normalized token is shared, even if both sides are empty. A question
    without a prediction prints "Unanswered question <id> will receive score 0." to stderr and scores 0.
  * v2.0 (evaluate-v2.0.py): gold answers whose normalized text is empty are dropped and an unanswerable question's
    only gold answer is ""; F1 is 1 when both normalized token lists are empty, 0 when only one is. With na_probs,
    a question whose na_prob > na_prob_thresh (default 1.0) counts as predicted unanswerable. Keys: exact, f1, total,
    HasAns_*/NoAns_* (where the data has such questions) and, only when na_probs is given (--na-prob-file), best_exact,
    best_exact_thresh, best_f1, best_f1_thresh from the official threshold sweep (na_probs sorted stably ascending, in
    the file's order on ties).
  * Missing predictions in v2.0: the official script prints "Missing prediction for <id>" and then stops with a
    KeyError when it splits the scores into HasAns/NoAns, so it never reports numbers for an incomplete file. We
    raise MissingPredictionsError, which names how many and which ids are missing (the CLI exits 1), instead.
  * Predictions for ids not in the data are ignored by both scripts, and here (the CLI notes them on stderr).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import string
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from electra_jax import errors
from electra_jax.data.squad import SquadFormatError, detect_version

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


class SquadFileError(errors.Error, ValueError):
  """A predictions, no-answer-probability or dataset file the scorer cannot use; the message names it."""


class MissingPredictionsError(errors.Error, ValueError):
  """Questions of a v2.0 file without a prediction (the official v2.0 script cannot score such a file)."""


def normalize_answer(s: str) -> str:
  """Lower case, remove punctuation, remove articles (a, an, the), squash whitespace: the official normalization."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in _PUNCT)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def exact_match(prediction: str, ground_truth: str) -> bool:
  """True when the normalized strings are equal."""
  return normalize_answer(prediction) == normalize_answer(ground_truth)


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision = num_same / len(pred_tokens)
  recall = num_same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def f1_v1(prediction: str, ground_truth: str) -> float:
  """v1.1 token F1 over normalized tokens (0 when nothing is shared, also when both are empty)."""
  return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def f1_v2(prediction: str, ground_truth: str) -> float:
  """v2.0 token F1: when either normalized side has no tokens, 1.0 if both have none, else 0.0."""
  pred_tokens = normalize_answer(prediction).split() if prediction else []
  gold_tokens = normalize_answer(ground_truth).split() if ground_truth else []
  if not pred_tokens or not gold_tokens:
    return float(pred_tokens == gold_tokens)
  return _token_f1(pred_tokens, gold_tokens)


def _questions(dataset: Sequence[Mapping[str, Any]], source: str):
  """(qid, answer texts) for each question of the official `data` list, in file order."""
  for article in dataset:
    for paragraph in article.get("paragraphs", []):
      for qa in paragraph.get("qas", []):
        qid = qa.get("id")
        if qid is None:
          raise SquadFormatError(f"{source}: a question has no 'id'")
        if not isinstance(qa.get("answers"), list):
          raise SquadFormatError(f"{source}: question {qid}: no 'answers' list")
        texts = []
        for ans in qa["answers"]:
          if not isinstance(ans, Mapping) or not isinstance(ans.get("text"), str):
            raise SquadFormatError(f"{source}: question {qid}: an answer has no 'text'")
          texts.append(ans["text"])
        yield qid, texts


def evaluate_v1(dataset: Sequence[Mapping[str, Any]], predictions: Mapping[str, str], source: str = "data",
                stderr=None) -> dict[str, float]:
  """The official v1.1 scores of {qid: text} on the `data` list of a SQuAD JSON: {"exact_match", "f1"} in 0..100."""
  stderr = sys.stderr if stderr is None else stderr
  em_total = f1_total = 0.0
  total = 0
  for qid, golds in _questions(dataset, source):
    total += 1
    if qid not in predictions:
      print(f"Unanswered question {qid} will receive score 0.", file=stderr)
      continue
    pred = predictions[qid]
    em_total += max(exact_match(pred, g) for g in golds) if golds else 0
    f1_total += max(f1_v1(pred, g) for g in golds) if golds else 0.0
  if total == 0:
    raise SquadFormatError(f"{source}: no questions")
  return {"exact_match": 100.0 * em_total / total, "f1": 100.0 * f1_total / total}


def _score_map(scores: Mapping[str, float], qids: Sequence[str]) -> dict[str, Any]:
  total = len(qids)
  return {"exact": 100.0 * sum(scores["exact"][k] for k in qids) / total,
          "f1": 100.0 * sum(scores["f1"][k] for k in qids) / total, "total": total}


def _apply_threshold(raw: Mapping[str, float], na_probs: Mapping[str, float], has_ans: Mapping[str, bool],
                     thresh: float) -> dict[str, float]:
  return {qid: (float(not has_ans[qid]) if na_probs[qid] > thresh else s) for qid, s in raw.items()}


def best_threshold(predictions: Mapping[str, str], raw: Mapping[str, float], na_probs: Mapping[str, float],
                   has_ans: Mapping[str, bool]) -> tuple[float, float]:
  """The official sweep: (best score in 0..100, the na_prob threshold reaching it).

  Starts from "every question answered empty" (score = number of unanswerable questions) and, in ascending na_prob
  order (stable), switches one question at a time to its prediction: + its score if answerable, -1 if unanswerable and
  the prediction is non-empty. The threshold is the na_prob where the running score last improved (0.0 if never).
  """
  score = best = float(sum(1 for v in has_ans.values() if not v))
  thresh = 0.0
  for qid in sorted(na_probs, key=lambda k: na_probs[k]):
    if qid not in raw:
      continue
    if has_ans[qid]:
      score += raw[qid]
    elif predictions[qid]:
      score -= 1
    if score > best:
      best, thresh = score, na_probs[qid]
  return 100.0 * best / len(raw), thresh


def evaluate_v2(dataset: Sequence[Mapping[str, Any]], predictions: Mapping[str, str],
                na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0,
                source: str = "data") -> dict[str, Any]:
  """The official v2.0 scores (see the module docstring for keys and rules); values in 0..100."""
  has_ans: dict[str, bool] = {}
  raw: dict[str, dict[str, float]] = {"exact": {}, "f1": {}}
  missing = []
  for qid, golds in _questions(dataset, source):
    has_ans[qid] = bool(golds)
    golds = [g for g in golds if normalize_answer(g)] or [""]
    if qid not in predictions:
      missing.append(qid)
      continue
    pred = predictions[qid]
    raw["exact"][qid] = float(max(int(exact_match(pred, g)) for g in golds))
    raw["f1"][qid] = max(f1_v2(pred, g) for g in golds)
  if not has_ans:
    raise SquadFormatError(f"{source}: no questions")
  if missing:
    raise MissingPredictionsError(
        f"{len(missing)} of {len(has_ans)} questions in {source} have no prediction (e.g. {', '.join(missing[:5])}); "
        f"the official v2.0 script cannot score an incomplete prediction file either")
  given_na = na_probs is not None
  if na_probs is None:
    na_probs = {k: 0.0 for k in predictions}
  lacking = [qid for qid in raw["exact"] if qid not in na_probs]
  if lacking:
    raise SquadFileError(f"no-answer probabilities lack {len(lacking)} questions (e.g. {', '.join(lacking[:5])})")
  thresholded = {key: _apply_threshold(raw[key], na_probs, has_ans, na_prob_thresh) for key in raw}
  out: dict[str, Any] = _score_map(thresholded, list(thresholded["exact"]))
  for prefix, want in (("HasAns", True), ("NoAns", False)):
    qids = [k for k, v in has_ans.items() if v == want]
    if qids:
      out.update({f"{prefix}_{k}": v for k, v in _score_map(thresholded, qids).items()})
  if given_na:
    out["best_exact"], out["best_exact_thresh"] = best_threshold(predictions, raw["exact"], na_probs, has_ans)
    out["best_f1"], out["best_f1_thresh"] = best_threshold(predictions, raw["f1"], na_probs, has_ans)
  return out


def evaluate(dataset_json: Mapping[str, Any], predictions: Mapping[str, str],
             na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0, version: str | None = None,
             source: str = "data", stderr=None) -> dict[str, Any]:
  """Scores with the v1.1 or v2.0 rules, chosen by `version` or else by the file (`detect_version`)."""
  if not isinstance(dataset_json, Mapping) or not isinstance(dataset_json.get("data"), list):
    raise SquadFormatError(f"{source}: not a SQuAD file (no top-level 'data' list)")
  version = version or detect_version(dataset_json)
  if version.lstrip("v") == "1.1":
    if na_probs is not None:
      raise SquadFileError("no-answer probabilities only apply to SQuAD v2.0 data")
    return evaluate_v1(dataset_json["data"], predictions, source, stderr=stderr)
  return evaluate_v2(dataset_json["data"], predictions, na_probs, na_prob_thresh, source)


def _load_json(path: str, what: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} file {path} does not exist") from None
  except json.JSONDecodeError as e:
    raise SquadFileError(f"{path}: {what} file is not valid JSON ({e})") from None
  except UnicodeDecodeError as e:
    raise SquadFileError(errors.utf8_location(path, e)) from None


def _check_mapping(obj: Any, path: str, what: str, value_type: type | tuple[type, ...], type_name: str
                   ) -> dict[str, Any]:
  if not isinstance(obj, dict):
    raise SquadFileError(f"{path}: {what} must be a JSON object {{question id: value}}")
  for qid, value in obj.items():
    if not isinstance(value, value_type) or isinstance(value, bool):
      raise SquadFileError(f"{path}: {what} for question {qid} is {value!r}, not a {type_name}")
  return obj


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m electra_jax.eval.squad",
      description="Score SQuAD v1.1 or v2.0 predictions like the official scripts; prints JSON.")
  parser.add_argument("data_json", help="official SQuAD data file (dev-v1.1.json, dev-v2.0.json)")
  parser.add_argument("pred_json", help="predictions: {question id: answer text}")
  parser.add_argument("--na-prob-file", help="v2.0: {question id: no-answer probability or null odds}")
  parser.add_argument("--na-prob-thresh", type=float, default=1.0,
                      help="v2.0: predict no-answer where the na_prob exceeds this (default 1.0)")
  parser.add_argument("--version", choices=["1.1", "2.0"], help="scoring rules (default: from the data file)")
  parser.add_argument("--out-file", help="also write the JSON result here")
  args = parser.parse_args(argv)
  try:
    data = _load_json(args.data_json, "SQuAD data")
    predictions = _check_mapping(_load_json(args.pred_json, "prediction"), args.pred_json, "prediction", str, "str")
    na_probs = None
    if args.na_prob_file:
      na_probs = _check_mapping(_load_json(args.na_prob_file, "na-prob"), args.na_prob_file, "na-prob",
                                (int, float), "number")
    result = evaluate(data, predictions, na_probs, args.na_prob_thresh, args.version, source=args.data_json)
    known = {qid for qid, _ in _questions(data["data"], args.data_json)}
    extra = [qid for qid in predictions if qid not in known]
    if extra:
      print(f"note: {len(extra)} predictions for ids not in {args.data_json} were ignored", file=sys.stderr)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  is_v1 = "exact_match" in result
  text = json.dumps(result) if is_v1 else json.dumps(result, indent=2)
  print(text)
  if args.out_file:
    with open(args.out_file, "w", encoding="utf-8") as f:
      json.dump(result, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
