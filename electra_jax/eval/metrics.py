"""Classification and regression metrics (numpy) and the per-task GLUE metric set.

    from electra_jax.eval import metrics
    metrics.matthews_corrcoef(preds, labels)          # CoLA
    metrics.glue_metrics("mrpc", preds, labels)       # {"accuracy": .., "f1": .., "accuracy_f1_avg": ..}
    metrics.glue_metrics("stsb", scores, gold)        # {"pearson": .., "spearman": .., "pearson_spearman_avg": ..}

All values are fractions (accuracy 0.875, not 87.5), as scikit-learn and SciPy return them; multiply by 100 for the
GLUE leaderboard's convention. They agree with sklearn.metrics / scipy.stats on the same inputs (tests check this):
degenerate cases follow them too (MCC and F1 are 0.0 where their denominators vanish; correlations of a constant
input are NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats

from electra_jax.data.glue import get_task

ArrayLike = Sequence | np.ndarray


def _pair(preds: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  p, y = np.asarray(preds), np.asarray(labels)
  if p.ndim != 1 or y.ndim != 1:
    raise ValueError(f"predictions and labels must be 1-D, got shapes {p.shape} and {y.shape}")
  if p.shape != y.shape:
    raise ValueError(f"{p.shape[0]} predictions but {y.shape[0]} labels")
  if p.size == 0:
    raise ValueError("no predictions to score")
  return p, y


def accuracy(preds: ArrayLike, labels: ArrayLike) -> float:
  """Fraction of predictions equal to the label."""
  p, y = _pair(preds, labels)
  return float(np.mean(p == y))


def f1(preds: ArrayLike, labels: ArrayLike, positive: int = 1) -> float:
  """Binary F1 of the `positive` class: 2·TP / (2·TP + FP + FN); 0.0 when there are no positives at all."""
  p, y = _pair(preds, labels)
  tp = int(np.sum((p == positive) & (y == positive)))
  fp = int(np.sum((p == positive) & (y != positive)))
  fn = int(np.sum((p != positive) & (y == positive)))
  denom = 2 * tp + fp + fn
  return 0.0 if denom == 0 else 2 * tp / denom


def matthews_corrcoef(preds: ArrayLike, labels: ArrayLike) -> float:
  """Matthews correlation (multiclass form, Gorodkin's R_K); 0.0 when either side has a single class."""
  p, y = _pair(preds, labels)
  classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
  k = len(classes)
  conf = np.zeros((k, k), np.int64)
  np.add.at(conf, (codes[:len(y)], codes[len(y):]), 1)
  t_sum = conf.sum(axis=1).astype(np.float64)
  p_sum = conf.sum(axis=0).astype(np.float64)
  n = float(conf.sum())
  correct = float(np.trace(conf))
  cov_tp = correct * n - t_sum @ p_sum
  cov_pp = n * n - p_sum @ p_sum
  cov_tt = n * n - t_sum @ t_sum
  if cov_pp * cov_tt == 0:
    return 0.0
  return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(preds: ArrayLike, labels: ArrayLike) -> float:
  """Pearson correlation coefficient; NaN when either input is constant."""
  p, y = _pair(preds, labels)
  if p.size < 2:
    raise ValueError("correlation needs at least 2 points")
  x = p.astype(np.float64) - np.mean(p, dtype=np.float64)
  z = y.astype(np.float64) - np.mean(y, dtype=np.float64)
  nx, nz = np.linalg.norm(x), np.linalg.norm(z)
  if nx == 0 or nz == 0:
    return float("nan")
  r = float(np.dot(x / nx, z / nz))
  return max(-1.0, min(1.0, r))


def spearman(preds: ArrayLike, labels: ArrayLike) -> float:
  """Spearman rank correlation: Pearson of the ranks, ties given their average rank."""
  p, y = _pair(preds, labels)
  return pearson(scipy.stats.rankdata(p), scipy.stats.rankdata(y))


def _as_class_ids(preds: ArrayLike) -> np.ndarray:
  p = np.asarray(preds)
  if p.ndim == 2:  # logits or probabilities
    return np.argmax(p, axis=-1)
  return p


def glue_metrics(task: str, preds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
  """The metrics GLUE reports for `task` (fractions, see the module docstring).

  CoLA and AX: mcc. MRPC and QQP: accuracy, f1, accuracy_f1_avg. STS-B: pearson, spearman, pearson_spearman_avg.
  SST-2, MNLI, QNLI, RTE, WNLI: accuracy. `TASKS[task].main_metric` names the one the ELECTRA paper reports.

  Args:
    task: a GLUE task name (see `electra_jax.data.glue.TASKS`).
    preds: class ids [N] (or logits [N, C], arg-maxed) for classification; scores [N] (or [N, 1]) for STS-B.
    labels: gold class ids or scores [N].
  """
  t = get_task(task)
  if t.is_regression:
    p = np.asarray(preds, np.float64)
    p = p.reshape(-1) if p.ndim == 2 and p.shape[1] == 1 else p
    r, s = pearson(p, labels), spearman(p, labels)
    return {"pearson": r, "spearman": s, "pearson_spearman_avg": (r + s) / 2}
  p = _as_class_ids(preds)
  out: dict[str, float] = {}
  for name in t.metrics:
    if name == "accuracy":
      out[name] = accuracy(p, labels)
    elif name == "f1":
      out[name] = f1(p, labels)
    elif name == "mcc":
      out[name] = matthews_corrcoef(p, labels)
    elif name == "accuracy_f1_avg":
      out[name] = (out["accuracy"] + out["f1"]) / 2
    else:
      raise AssertionError(f"no implementation for metric {name}")
  return out
