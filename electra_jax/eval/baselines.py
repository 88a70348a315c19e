"""Trivial baselines: what a model that ignores its input scores on the same rows, by the task's own metric.

    from electra_jax.eval import baselines
    base = baselines.of_sets(adapter, eval_sets)   # {"dev": {"what": "always '1' ...", "metrics": {...}}}
    baselines.compare(dev_scores, base, main_metric)   # {"dev": {"beats": False, "metric": "accuracy", ...}}

A score means something only beside these. Per task:
  * GLUE classification: the majority class of the rows scored (ties: the lowest label id), scored by the task's
    metrics: accuracy is the majority rate, MCC is 0, F1 is the all-positive F1 when the majority is positive (MRPC).
  * STS-B: a constant prediction (the mean gold score of the rows). Pearson and Spearman correlations of a constant
    are undefined (0 / 0); a constant carries no information about the order of the pairs, so its baseline is taken
    as 0 for both and for their average.
  * SQuAD v2.0: "no answer" for every question (exact / F1 = the unanswerable share; HasAns 0, NoAns 100).
  * SQuAD v1.1: the empty answer for every question (exact and F1 0).
Only scores are compared; counts (`*total`) and thresholds (`*thresh`) are not scores. A set "beats" its baseline
when its main metric (the paper's metric of the task; F1 for SQuAD) is strictly higher.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from electra_jax.data import glue
from electra_jax.eval import glue as glue_eval
from electra_jax.eval import squad as squad_eval


def is_score(key: str) -> bool:
  """Whether a metric key is a score (higher is better), not a count or a threshold."""
  return not (key.endswith("total") or key.endswith("thresh"))


def _glue(eval_set) -> dict[str, Any] | None:
  task, _, examples = eval_set.payload
  t = glue.get_task(task)
  labels = [ex.label for ex in examples]
  if not examples or any(label is None for label in labels):
    return None
  if t.is_regression:
    const = float(np.mean(np.asarray(labels, np.float64)))
    scores = dict.fromkeys(t.metrics, 0.0)   # every STS-B metric is a correlation: undefined for a constant, so 0
    what = f"always {const:.3f} (the mean gold score of these {len(examples)} rows; correlations of a constant: 0)"
  else:
    counts = collections.Counter(labels)
    label = min(counts, key=lambda c: (-counts[c], c))
    scores = glue_eval.score(task, examples, {ex.idx: label for ex in examples})
    name = t.label_names[label] if t.label_names else label
    what = f"always {name!r}, the majority class ({counts[label]} of these {len(examples)} rows)"
  return {"what": what, "metrics": {k: float(v) for k, v in scores.items() if isinstance(v, float)}}


def _squad(adapter, eval_set) -> dict[str, Any]:
  data, examples, _, source = eval_set.payload
  predictions = {ex.qid: "" for ex in examples}
  if adapter.v2:
    scores = squad_eval.evaluate(data, predictions, na_probs={q: 1.0 for q in predictions}, na_prob_thresh=0.5,
                                 version="2.0", source=source)
    what = f"no answer to any of the {len(examples)} questions"
  else:
    scores = squad_eval.evaluate(data, predictions, version="1.1", source=source)
    what = f"the empty answer to each of the {len(examples)} questions"
  return {"what": what, "metrics": {k: float(v) for k, v in scores.items()}}


def of_set(adapter, eval_set) -> dict[str, Any] | None:
  """{"what": description, "metrics": {metric: value}} of a labelled eval set; None for an unlabelled one."""
  if not eval_set.labelled:
    return None
  if adapter.family == "glue":
    return _glue(eval_set)
  if adapter.family == "squad":
    return _squad(adapter, eval_set)
  return None


def of_sets(adapter, eval_sets: Sequence[Any]) -> dict[str, dict[str, Any]]:
  """{set name: baseline} of every labelled eval set."""
  out = {}
  for es in eval_sets:
    b = of_set(adapter, es)
    if b is not None:
      out[es.name] = b
  return out


def compare(scores: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, Any]],
            main_metric: str) -> dict[str, dict[str, Any]]:
  """{set: {"metric", "score", "baseline", "beats", "what"}} on the main metric of every set with a baseline."""
  out = {}
  for name, b in base.items():
    if name not in scores or main_metric not in scores[name] or main_metric not in b["metrics"]:
      continue
    score, floor = float(scores[name][main_metric]), float(b["metrics"][main_metric])
    out[name] = {"metric": main_metric, "score": score, "baseline": floor, "beats": score > floor, "what": b["what"]}
  return out


def verdict_lines(comparison: Mapping[str, Mapping[str, Any]]) -> list[str]:
  """One line per set: whether its main metric beats the trivial baseline."""
  lines = []
  for name, c in comparison.items():
    verb = "beats" if c["beats"] else "DOES NOT BEAT"
    lines.append(f"{name}: {c['metric']} {c['score']:.4f} {verb} the trivial baseline {c['baseline']:.4f} "
                 f"({c['what']})")
  return lines
