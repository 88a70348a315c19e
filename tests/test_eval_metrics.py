"""Metrics agree with scikit-learn / SciPy; glue_metrics per task; the GLUE scorer CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics as skm

from electra_jax.data import glue
from electra_jax.eval import glue as glue_eval
from electra_jax.eval import metrics
from tests.conftest import shared_data


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 300))
  y, p = rng.integers(0, 2, n), rng.integers(0, 2, n)
  assert metrics.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
  assert metrics.f1(p, y) == pytest.approx(skm.f1_score(y, p), abs=1e-12)
  assert metrics.matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)
  y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)  # MNLI / AX: multiclass MCC
  assert metrics.matthews_corrcoef(p3, y3) == pytest.approx(skm.matthews_corrcoef(y3, p3), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(3, 300))
  y = rng.uniform(0, 5, n)
  p = y + rng.normal(0, 1.5, n)
  assert metrics.pearson(p, y) == pytest.approx(scipy.stats.pearsonr(p, y)[0], abs=1e-12)
  assert metrics.spearman(p, y) == pytest.approx(scipy.stats.spearmanr(p, y)[0], abs=1e-12)
  yt, pt = np.round(y), np.round(p * 2) / 2  # ties get average ranks
  assert metrics.spearman(pt, yt) == pytest.approx(scipy.stats.spearmanr(pt, yt)[0], abs=1e-12)


def test_degenerate_cases_follow_sklearn_and_scipy():
  zeros = np.zeros(6, int)
  assert metrics.f1(zeros, zeros) == skm.f1_score(zeros, zeros, zero_division=0.0) == 0.0
  assert metrics.matthews_corrcoef(zeros, [0, 1, 0, 1, 0, 1]) == 0.0
  assert metrics.matthews_corrcoef([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
  assert metrics.matthews_corrcoef([1, 0, 1], [0, 1, 0]) == pytest.approx(-1.0)
  assert np.isnan(metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
  with pytest.raises(ValueError, match="3 predictions but 2 labels"):
    metrics.accuracy([1, 0, 1], [1, 0])
  with pytest.raises(ValueError, match="no predictions"):
    metrics.accuracy([], [])


def test_glue_metrics_per_task():
  labels = np.array([1, 0, 1, 1, 0, 1])
  preds = np.array([1, 0, 0, 1, 1, 1])
  mrpc = metrics.glue_metrics("mrpc", preds, labels)
  assert set(mrpc) == {"accuracy", "f1", "accuracy_f1_avg"}
  assert mrpc["accuracy"] == pytest.approx(4 / 6) and mrpc["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
  assert mrpc["accuracy_f1_avg"] == pytest.approx((4 / 6 + 0.75) / 2)
  assert set(metrics.glue_metrics("cola", preds, labels)) == {"mcc"}
  assert set(metrics.glue_metrics("ax", preds, labels)) == {"mcc"}
  for task in ("sst2", "mnli", "qnli", "rte", "wnli"):
    assert set(metrics.glue_metrics(task, preds, labels)) == {"accuracy"}
  logits = np.eye(2)[preds] * 3.0  # [N, C] logits are arg-maxed
  assert metrics.glue_metrics("qqp", logits, labels) == metrics.glue_metrics("qqp", preds, labels)
  gold = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
  sts = metrics.glue_metrics("stsb", (gold * 0.5)[:, None], gold)
  assert sts == pytest.approx({"pearson": 1.0, "spearman": 1.0, "pearson_spearman_avg": 1.0})
  assert {t: glue.TASKS[t].main_metric for t in ("cola", "stsb", "mrpc", "qqp", "mnli")} == {
      "cola": "mcc", "stsb": "spearman", "mrpc": "accuracy", "qqp": "accuracy", "mnli": "accuracy"}


def test_glue_scorer_against_real_dev_file(tmp_path, capsys):
  gold = shared_data("glue_data/MRPC/dev.tsv")
  examples = glue.read_split("mrpc", shared_data("glue_data"), "dev")
  perfect = tmp_path / "MRPC.tsv"
  glue.write_predictions("mrpc", {ex.idx: ex.label for ex in examples}, perfect)
  assert glue_eval.main(["mrpc", str(gold), str(perfect)]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out == {"task": "mrpc", "examples": 408, "accuracy": 1.0, "f1": 1.0, "accuracy_f1_avg": 1.0,
                 "main_metric": "accuracy"}
  # Always "1": accuracy = share of positives, F1 = 2p / (1 + p).
  ones = tmp_path / "ones.tsv"
  glue.write_predictions("mrpc", [1] * len(examples), ones)
  result = glue_eval.score_files("mrpc", str(gold), str(ones))
  positives = sum(ex.label for ex in examples) / len(examples)
  assert result["accuracy"] == pytest.approx(positives)
  assert result["f1"] == pytest.approx(2 * positives / (1 + positives))

  short = tmp_path / "short.tsv"
  glue.write_predictions("mrpc", {i: 1 for i in range(1, 409)}, short)
  assert glue_eval.main(["mrpc", str(gold), str(short)]) == 1
  err = capsys.readouterr().err
  assert "no prediction for indices 0" in err and "predictions for indices not in" in err and "408" in err


def test_glue_scorer_cli_subprocess(tmp_path):
  gold = shared_data("glue_data/STS-B/dev.tsv")
  examples = glue.read_split("stsb", shared_data("glue_data"), "dev")
  preds = tmp_path / "STS-B.tsv"
  glue.write_predictions("stsb", {ex.idx: 5.0 - ex.label for ex in examples}, preds)
  run = subprocess.run([sys.executable, "-m", "electra_jax.eval.glue", "STS-B", str(gold), str(preds)],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr
  out = json.loads(run.stdout)
  assert out["examples"] == 1500 and out["pearson"] == pytest.approx(-1.0, abs=1e-6)
  assert out["spearman"] == pytest.approx(-1.0, abs=1e-6)
  bad = subprocess.run([sys.executable, "-m", "electra_jax.eval.glue", "ax", str(gold), str(preds)],
                       capture_output=True, text=True, check=False)
  assert bad.returncode == 1 and "no labelled dev split" in bad.stderr
