"""Scores beside their trivial baselines (eval/baselines.py): the majority class of a GLUE task scored by its own
metric, a constant for STS-B, "no answer" for SQuAD v2.0; the summary table and results say when a score does not
beat it. The pretraining summary puts the discriminator's accuracy beside the "always original" rate."""

import json
import types

import pytest

from electra_jax.data import glue, squad
from electra_jax.eval import baselines, evaluation
from electra_jax.eval.tasks import EvalSet, subset_squad
from electra_jax.train import metrics
from tests.conftest import shared_data

GLUE = types.SimpleNamespace(family="glue")


def _glue_set(task: str, split: str = "dev") -> EvalSet:
  examples = glue.read_split(task, shared_data("glue_data"), split)
  return EvalSet(split, {}, True, (task, split, examples))


def _results(scores, base, main):
  summary = evaluation.summarize([{"metrics": scores}], base)
  results = {"task": "t", "head": "h", "main_metric": main, "summary": summary}
  return evaluation.with_baselines(results, base)


def test_mrpc_majority_baseline_by_the_tasks_own_metrics_and_a_score_that_does_not_beat_it():
  base = baselines.of_sets(GLUE, [_glue_set("mrpc")])
  m = base["dev"]["metrics"]
  assert m["accuracy"] == pytest.approx(279 / 408)              # 0.6838: every prediction "1"
  assert m["f1"] == pytest.approx(2 * (279 / 408) / (279 / 408 + 1))   # all-positive F1: precision 0.68, recall 1
  assert "'equivalent'" in base["dev"]["what"] and "majority" in base["dev"]["what"]
  # the run: every prediction "1" scores exactly the baseline, which the results and the table say
  results = _results({"dev": dict(m)}, base, "accuracy")
  assert results["beats_baseline"]["dev"]["beats"] is False
  assert results["summary"]["dev/accuracy"]["baseline"] == pytest.approx(m["accuracy"])
  assert results["summary"]["dev/accuracy"]["beats_baseline"] is False
  table = evaluation.format_summary(results)
  assert "DOES NOT BEAT the trivial baseline 0.6838" in table and "(not above the baseline)" in table
  better = _results({"dev": {**m, "accuracy": 0.80}}, base, "accuracy")
  assert better["beats_baseline"]["dev"]["beats"] is True and "dev: accuracy 0.8000 beats" in \
      evaluation.format_summary(better)
  json.dumps(results, allow_nan=False)   # results.json stays strict JSON


def test_cola_majority_scores_mcc_zero():
  m = baselines.of_sets(GLUE, [_glue_set("cola")])["dev"]["metrics"]
  assert m == {"mcc": 0.0}


def test_stsb_constant_baseline_is_zero_correlation():
  base = baselines.of_sets(GLUE, [_glue_set("stsb")])["dev"]
  assert base["metrics"] == {"pearson": 0.0, "spearman": 0.0, "pearson_spearman_avg": 0.0}
  assert base["what"].startswith("always ") and "constant: 0" in base["what"]
  results = _results({"dev": {"pearson": 0.1, "spearman": -0.05, "pearson_spearman_avg": 0.025}}, base and
                     {"dev": base}, "spearman")
  assert results["beats_baseline"]["dev"] == {"metric": "spearman", "score": -0.05, "baseline": 0.0,
                                              "beats": False, "what": base["what"]}


def test_squad_v2_no_answer_baseline_and_v1_empty_answers():
  path = shared_data("squad/dev-v2.0.cs224n-dev-half.json")
  data = json.loads(path.read_text(encoding="utf-8"))
  _, examples = squad.parse_squad(data, str(path))
  examples = examples[:300]
  data = subset_squad(data, {ex.qid for ex in examples})
  v2 = types.SimpleNamespace(family="squad", v2=True)
  base = baselines.of_set(v2, EvalSet("dev", {}, True, (data, examples, None, str(path))))
  m = base["metrics"]
  no_answer = 100.0 * sum(ex.is_impossible for ex in examples) / len(examples)
  assert m["exact"] == pytest.approx(no_answer) and m["f1"] == pytest.approx(no_answer)
  assert m["HasAns_f1"] == 0.0 and m["NoAns_f1"] == 100.0
  results = _results({"dev": {**m}}, {"dev": base}, "f1")
  assert results["beats_baseline"]["dev"]["beats"] is False   # F1 52 with HasAns 0 is the baseline, not a result
  assert "dev/HasAns_total" in results["summary"] and "baseline" not in results["summary"]["dev/HasAns_total"]
  v1_path = shared_data("squad/dev-v1.1.json")
  v1_data = json.loads(v1_path.read_text(encoding="utf-8"))
  _, v1 = squad.parse_squad(v1_data, str(v1_path))
  v1_data = subset_squad(v1_data, {ex.qid for ex in v1[:50]})
  base1 = baselines.of_set(types.SimpleNamespace(family="squad", v2=False),
                           EvalSet("dev", {}, True, (v1_data, v1[:50], None, str(v1_path))))
  assert base1["metrics"] == {"exact_match": 0.0, "f1": 0.0}


def test_pretraining_summary_shows_the_base_rate_auc_and_warns_on_collapsed_recall():
  scalars = {"disc_accuracy": 0.854, "disc_replaced_fraction": 0.147, "disc_auc": 0.61, "disc_recall": 0.004,
             "disc_precision": 0.3}
  line, warning = metrics.discriminator_summary(scalars)
  assert "accuracy 0.854" in line and '"always original" scores 0.853 at the 14.7% replacement rate' in line
  assert "AUC 0.610" in line and "recall 0.004" in line
  assert warning and "recall collapsed" in warning
  assert metrics.discriminator_summary({**scalars, "disc_recall": 0.4})[1] is None
  step = metrics.format_step_line(5, 10, scalars)
  assert "disc acc 0.854 (base 0.853) auc 0.610" in step
  assert metrics.discriminator_summary({"loss": 1.0}) == ("", None)   # mlm: no discriminator
