"""The replication harness (electra_jax/experiments): the FLOPs-matched plan, overrides, the report's arithmetic from
known scores, and (slow) a smoke run end to end that resumes."""

import json
import os
import statistics

import numpy as np
import pytest

from electra_jax.experiments import harness, report, run_configs, suites
from tests.conftest import shared_data


@pytest.fixture
def hc():
  shared_data("vocab")
  return run_configs.config_module("replicate").get_config("size=smoke")


def test_plan_matches_pretraining_flops_and_shares_variants_between_suites(hc, tmp_path):
  hc.budget.electra_steps = 400
  variants, stages, budget = harness.plan(["efficiency", "mlm_vs_electra", "generator_size"], hc, str(tmp_path))
  assert budget["flops"] == pytest.approx(variants["electra"].flops_per_step * 400)
  control = variants.pop("no_pretraining")   # fine-tuned from a random initialisation: no pretraining stage
  assert control.steps == 0 and control.eval_steps == (0,)
  assert not any(s.kind == "pretrain" and s.variant == "no_pretraining" for s in stages)
  for key, pv in variants.items():   # every variant within one checkpoint unit of the budget
    unit = pv.config.checkpoint_every_steps
    assert pv.steps % unit == 0
    assert abs(pv.steps * pv.flops_per_step - budget["flops"]) <= unit * pv.flops_per_step, key
    assert pv.config.num_train_steps == pv.steps
  fps = {k: v.flops_per_step for k, v in variants.items()}
  assert fps["mlm"] < fps["electra"] == fps["electra_15"] < fps["replace_mlm"] < fps["all_tokens_mlm"]
  assert variants["all_tokens_mlm"].steps < variants["electra"].steps < variants["mlm"].steps
  assert fps["gen_0.125"] < fps["electra"] < fps["gen_0.5"] < fps["share_embeddings"]
  # one run per variant however many suites use it; the curve suite's variants are scored at 50% and 100%
  assert sorted(variants) == sorted((set(suites.SUITES["efficiency"].variants) |
                                     set(suites.SUITES["generator_size"].variants)) - {"no_pretraining"})
  assert variants["electra"].eval_steps == (variants["electra"].steps // 2, variants["electra"].steps)
  assert variants["electra_15"].eval_steps == (variants["electra_15"].steps,)
  assert sum(s.kind == "pretrain" for s in stages) == len(variants)
  assert sum(s.kind == "finetune" for s in stages) == sum(len(v.eval_steps) for v in variants.values()) + 1
  # the variants' configs say what they are
  assert variants["uniform"].config.generator.sampling == "uniform"
  assert variants["share_embeddings"].config.generator.hidden_fraction == 1.0
  # the same run whichever suites are planned (its checkpoints at every curve fraction are kept either way)
  alone, _, _ = harness.plan(["efficiency"], hc, str(tmp_path))
  assert alone["electra"].steps == variants["electra"].steps
  assert alone["electra"].kept_steps == variants["electra"].kept_steps == variants["electra"].eval_steps
  assert alone["electra"].eval_steps == (variants["electra"].steps,)
  hc.budget.match = "steps"
  variants, _, _ = harness.plan(["efficiency"], hc, str(tmp_path / "b"))
  assert {v.steps for v in variants.values() if v.variant.pretrain} == {400}


def test_a_preempted_fine_tuning_stage_stops_the_suite_and_is_not_done(hc, tmp_path, monkeypatch):
  """SIGTERM during a fine-tuning trial: the trial checkpoints and stops, its task's results.json holds the trials so
  far. The suite used to count that task as done (fewer seeds, silently) and go on to the next stage."""
  from electra_jax.train import finetune_lib  # pylint: disable=import-outside-toplevel
  variants, stages, _ = harness.plan(["attention_dropout"], hc, str(tmp_path))
  stage = next(s for s in stages if s.kind == "finetune" and s.variant == "electra")
  pv = variants["electra"]
  workdir = harness.finetune_dir(pv, stage.step, stage.task)
  partial = {"trials": [{"seed": 0, "workdir": os.path.join(workdir, "seed_0"), "steps": 3, "preempted": True}]}

  def preempted(config, wd):
    os.makedirs(wd, exist_ok=True)
    with open(os.path.join(wd, "results.json"), "w", encoding="utf-8") as f:
      json.dump(partial, f)
    return partial

  monkeypatch.setattr(finetune_lib, "train_and_evaluate", preempted)
  with pytest.raises(KeyboardInterrupt, match="stopped in seed 0 at step 3"):
    harness.run_finetune(hc, pv, stage.step, stage.task)
  assert not harness.stage_done(stage, variants)
  partial["trials"][0].pop("preempted")
  preempted(None, workdir)
  assert harness.stage_done(stage, variants)


def test_overrides_are_typed_and_unknown_fields_refused(hc):
  assert run_configs.parse_override("finetune.seeds=5", hc) == ("finetune.seeds", 5)
  assert run_configs.parse_override("budget.match=steps", hc) == ("budget.match", "steps")
  assert run_configs.parse_override("finetune.tasks=cola,rte", hc) == ("finetune.tasks", ("cola", "rte"))
  assert run_configs.parse_override("estimate.finetune_seconds_per_step=2", hc)[1] == 2.0
  with pytest.raises(ValueError, match="unknown field"):
    run_configs.parse_override("finetune.seed=5", hc)
  with pytest.raises(ValueError, match="suite"):
    suites.suite_names("efficiency,tabel5")
  assert suites.suite_names("all") == list(suites.SUITES)


def _fake_finetune(pv, step, task, scores, metric):
  d = harness.finetune_dir(pv, step, task)
  os.makedirs(d, exist_ok=True)
  trials = [{"seed": i, "metrics": {"dev": {metric: s / 100}}} for i, s in enumerate(scores)]
  with open(os.path.join(d, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"main_metric": metric, "trials": trials, "seconds": 1.0}, f)


def test_report_averages_per_seed_and_writes_table_and_plots(hc, tmp_path):
  hc.finetune.tasks = ("cola", "sst2", "stsb")
  hc.finetune.seeds = 3
  variants, _, budget = harness.plan(["generator_size"], hc, str(tmp_path))
  rng = np.random.default_rng(0)
  expected = {}
  for key, pv in variants.items():
    os.makedirs(pv.workdir, exist_ok=True)
    with open(os.path.join(pv.workdir, "done.json"), "w", encoding="utf-8") as f:
      json.dump({"seconds": 60.0}, f)
    with open(os.path.join(pv.workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
      f.write(json.dumps({"step": 1, "loss": 9.0, "replaced_fraction": 0.13, "sampled_equals_original": 0.02}) + "\n")
    table = {t: rng.uniform(0, 90, 3) for t in hc.finetune.tasks}
    for t, m in zip(hc.finetune.tasks, ("mcc", "accuracy", "spearman")):
      _fake_finetune(pv, pv.steps, t, table[t], m)
    expected[key] = [statistics.fmean(table[t][s] for t in table) for s in range(3)]
  results = report.write(str(tmp_path), ["generator_size"], hc, variants, budget, command="cmd")
  for key, per_seed in expected.items():
    avg = results["variants"][key]["checkpoints"][-1]["average"]
    assert avg["values"] == pytest.approx(per_seed)
    assert avg["std"] == pytest.approx(statistics.stdev(per_seed))
    assert results["variants"][key]["pretrain"]["metrics_at_end"]["replaced_fraction"] == 0.13
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["variants"]["electra"]["checkpoints"][-1]["tasks"]["cola"]["metric"] == "mcc"
  md = (tmp_path / "results.md").read_text()
  assert "| Generator 1/4 (ELECTRA) |" in md and "Command: `cmd`" in md
  row = next(line for line in md.splitlines() if line.startswith("| Uniform generator |"))
  assert f"{statistics.fmean(expected['uniform']):.1f} ± {statistics.stdev(expected['uniform']):.1f}" in row
  pytest.importorskip("matplotlib")
  for png in ("generator_size_glue_vs_flops.png", "generator_size.png"):
    assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # an incomplete row (a seed missing) gets no average
  _fake_finetune(variants["uniform"], variants["uniform"].steps, "cola", [1.0, 2.0], "mcc")
  results = report.write(str(tmp_path), ["generator_size"], hc, variants, budget)
  assert "average" not in results["variants"]["uniform"]["checkpoints"][-1]


@pytest.mark.slow
def test_smoke_run_end_to_end_then_resumes(hc, tmp_path):
  shared_data("glue_data/SST-2")
  shared_data("corpus/wikitext-2-raw")
  hc.compilation_cache = False    # JAX's cache directory is process-wide: keep it out of the test process
  lines = []
  results = harness.run(["attention_dropout"], hc, str(tmp_path), out=lines.append, command="smoke")
  for name in ("results.json", "results.md", "attention_dropout_glue_vs_flops.png", "stages.jsonl"):
    assert (tmp_path / name).is_file(), name
  for key in ("electra", "no_attention_dropout"):
    v = results["variants"][key]
    assert v["pretrain"]["finished"] and v["checkpoints"][-1]["average"]["n"] == 1
    m = v["pretrain"]["metrics_at_end"]
    assert 0 < m["replaced_fraction"] < 0.2 and 0 <= m["sampled_equals_original"] <= 1
  assert any("ETA" in line for line in lines)
  cfg = json.loads((tmp_path / "variants/no_attention_dropout/pretrain/config.json").read_text())
  assert cfg["model"]["attention_probs_dropout_prob"] == 0.0
  stages = (tmp_path / "stages.jsonl").read_text().splitlines()
  assert len(stages) == 4
  # run again: nothing to do; lose one fine-tuning result: only that stage runs
  harness.run(["attention_dropout"], hc, str(tmp_path), out=lines.append)
  assert len((tmp_path / "stages.jsonl").read_text().splitlines()) == 4
  steps = results["variants"]["electra"]["pretrain"]["steps"]
  os.remove(tmp_path / "variants/electra" / f"glue_{steps}/sst2/results.json")
  harness.run(["attention_dropout"], hc, str(tmp_path), out=lines.append)
  again = [json.loads(s) for s in (tmp_path / "stages.jsonl").read_text().splitlines()]
  assert len(again) == 5 and again[-1]["stage"].startswith("finetune electra@")
  # another harness config in the same workdir is refused
  hc.finetune.seeds = 2
  with pytest.raises(ValueError, match="another harness config"):
    harness.run(["attention_dropout"], hc, str(tmp_path), out=lines.append)
