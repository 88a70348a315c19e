"""Scores a GLUE leaderboard-format prediction file against a labelled GLUE dev file.

    python -m electra_jax.eval.glue mrpc glue_data/MRPC/dev.tsv out/MRPC.tsv
    {"task": "mrpc", "examples": 408, "accuracy": 0.87, "f1": 0.90, "accuracy_f1_avg": 0.89, "main_metric": "accuracy"}

    from electra_jax.eval import glue as glue_eval
    result = glue_eval.score_files("mrpc", gold_tsv, pred_tsv)

Rows are matched by GLUE index (the gold file's `index` column, or its 0-based data-row number where it has none;
the prediction file's `index` column, as `electra_jax.data.glue.write_predictions` writes it). Every gold row needs
exactly one prediction and vice versa; otherwise the error lists the missing and unexpected indices. Values are
fractions (see `electra_jax.eval.metrics`). Exit status 0 on success, 1 with a message on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from electra_jax import errors
from electra_jax.data import glue
from electra_jax.eval.metrics import glue_metrics


class ScoringError(errors.Error, ValueError):
  """Gold and predictions that cannot be matched up."""


def _show(indices: Sequence[int], limit: int = 10) -> str:
  shown = ", ".join(str(i) for i in indices[:limit])
  return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def score(task: str, examples: Sequence[glue.Example], predictions: Mapping[int, Any],
          gold_name: str = "gold", pred_name: str = "predictions") -> dict[str, Any]:
  """Metrics of {idx: prediction} against labelled examples, matched by `Example.idx`."""
  t = glue.get_task(task)
  unlabelled = [ex.idx for ex in examples if ex.label is None]
  if unlabelled:
    raise ScoringError(f"{gold_name} has unlabelled rows (indices {_show(unlabelled)}); score against a dev file")
  gold_idx = {ex.idx for ex in examples}
  missing = sorted(gold_idx - set(predictions))
  extra = sorted(set(predictions) - gold_idx)
  if missing or extra:
    parts = [f"{gold_name} has {len(examples)} rows, {pred_name} has {len(predictions)}"]
    if missing:
      parts.append(f"no prediction for indices {_show(missing)}")
    if extra:
      parts.append(f"predictions for indices not in {gold_name}: {_show(extra)}")
    raise ScoringError("; ".join(parts))
  labels = np.asarray([ex.label for ex in examples])
  preds = np.asarray([predictions[ex.idx] for ex in examples])
  result: dict[str, Any] = {"task": t.name, "examples": len(examples)}
  result.update(glue_metrics(t.name, preds, labels))
  result["main_metric"] = t.main_metric
  return result


def score_files(task: str, gold_tsv: str, pred_tsv: str) -> dict[str, Any]:
  """Reads a labelled GLUE dev TSV and a leaderboard prediction TSV and scores them."""
  t = glue.get_task(task)
  labelled = [s for s in t.splits if not t.is_test(s) and s != "train"]
  if not labelled:
    raise ScoringError(f"GLUE {t.name} has no labelled dev split to score against")
  examples, _ = glue.read_file(t.name, gold_tsv, labelled[0])
  predictions = glue.read_predictions(t.name, pred_tsv)
  return score(t.name, examples, predictions, gold_name=str(gold_tsv), pred_name=str(pred_tsv))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m electra_jax.eval.glue",
      description="Score a GLUE leaderboard-format prediction TSV against a labelled GLUE dev TSV; prints JSON.")
  parser.add_argument("task", help=f"one of {', '.join(sorted(glue.TASKS))}")
  parser.add_argument("gold_tsv", help="labelled dev file, e.g. glue_data/MRPC/dev.tsv")
  parser.add_argument("pred_tsv", help="predictions with header 'index<TAB>prediction'")
  args = parser.parse_args(argv)
  try:
    result = score_files(args.task, args.gold_tsv, args.pred_tsv)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
