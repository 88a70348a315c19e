"""GLUE fine-tuning end to end on the real glue_data files (tiny model, short runs on small slices).

The GLUE train.tsv files of MRPC, STS-B and RTE are on disk, so these runs train on the first rows of train.tsv and
score the first rows of dev.tsv; test.tsv rows get leaderboard-format predictions.
"""

import json
import os

import jax
import numpy as np
import pytest

from configs import glue as glue_config
from electra_jax.data import glue
from electra_jax.eval import glue as glue_eval
from electra_jax import checkpointing
from electra_jax import sharding
from electra_jax.eval import evaluation, tasks
from electra_jax.train import finetune_lib, metrics
from tests.conftest import shared_data


def tiny_glue_config(task: str, **overrides):
  c = glue_config.get_config(f"task={task},size=tiny")
  c.data_dir = os.fspath(shared_data("glue_data"))
  c.vocab_file = os.fspath(shared_data("vocab/bert-base-uncased-vocab.txt"))
  c.max_seq_length = 64
  c.max_train_examples = 32
  c.max_eval_examples = 24
  c.batch_size = 8
  c.eval_batch_size = 16
  c.log_every_steps = 1
  c.checkpoint_every_steps = 0
  c.mesh = {"data": 4, "fsdp": 2, "tensor": 1}
  for k, v in overrides.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def mrpc_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mrpc")
  config = tiny_glue_config("mrpc", head="original", num_train_steps=40, double_unordered=True)
  return config, os.fspath(workdir), finetune_lib.train_and_evaluate(config, os.fspath(workdir))


@pytest.mark.slow
def test_mrpc_run_writes_official_files_and_scores_them(mrpc_run):
  config, workdir, results = mrpc_run
  assert results["num_train_steps"] == 40
  assert results["train_examples"] == 32 and results["train_rows"] == 64  # double_unordered: both orders
  trial = results["trials"][0]
  pred_dir = os.path.join(workdir, "seed_0", "predictions")
  assert sorted(os.listdir(pred_dir)) == ["MRPC.tsv", "MRPC_dev.tsv"]
  # The dev predictions, read back in leaderboard format, score exactly as the run reported.
  dev_examples = glue.read_split("mrpc", config.data_dir, "dev")[:24]
  preds = glue.read_predictions("mrpc", os.path.join(pred_dir, "MRPC_dev.tsv"))
  scored = glue_eval.score("mrpc", dev_examples, preds)
  for k in ("accuracy", "f1", "accuracy_f1_avg"):
    assert trial["metrics"]["dev"][k] == pytest.approx(scored[k])
    assert results["summary"][f"dev/{k}"]["median"] == pytest.approx(scored[k])
  # The test-set file is what the GLUE leaderboard takes: header, then index<TAB>label for every test row.
  lines = open(os.path.join(pred_dir, "MRPC.tsv"), encoding="utf-8").read().splitlines()
  assert lines[0] == "index\tprediction"
  test_idx = [ex.idx for ex in glue.read_split("mrpc", config.data_dir, "test")[:24]]
  assert [int(line.split("\t")[0]) for line in lines[1:]] == test_idx
  assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert json.load(f)["summary"].keys() == results["summary"].keys()
  assert checkpointing.load_params(os.path.join(workdir, "seed_0"))[0]["kind"] == \
      "OriginalElectraForSequenceClassification"


@pytest.mark.slow
def test_loss_decreases(mrpc_run):
  _, workdir, _ = mrpc_run
  records = [r for r in metrics.read_metrics(os.path.join(workdir, "seed_0")) if "loss" in r]
  losses = [r["loss"] for r in records]
  assert [r["step"] for r in records] == list(range(1, 41))
  assert all(np.isfinite(losses))
  assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.1
  assert records[-1]["learning_rate"] < records[5]["learning_rate"]  # linear decay
  assert "eta_seconds" in records[-1]


@pytest.mark.slow
def test_evaluate_checkpoint_reproduces_the_dev_scores(mrpc_run, tmp_path):
  config, workdir, results = mrpc_run
  evaluated = evaluation.evaluate_checkpoint(config, os.path.join(workdir, "seed_0"), os.fspath(tmp_path))
  for k, v in results["trials"][0]["metrics"]["dev"].items():
    assert evaluated["metrics"]["dev"][k] == pytest.approx(v, abs=1e-6)
  assert open(tmp_path / "predictions" / "MRPC_dev.tsv").read() == \
      open(os.path.join(workdir, "seed_0", "predictions", "MRPC_dev.tsv")).read()


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, monkeypatch):
  """Preempted at step 4, then resumed from its checkpoint == 8 steps straight (same data order and dropout rngs)."""
  config = tiny_glue_config("rte", max_train_examples=16, max_eval_examples=8, predict_test=False,
                            eval_every_steps=4)
  _, adapter, mesh, rules = finetune_lib.setup(config)
  spec, init_kind, meta = finetune_lib.model_spec(config, adapter)
  train, _ = adapter.train_arrays()
  eval_sets = adapter.eval_sets(include_test=False)
  steps = finetune_lib.Steps(spec, adapter, mesh, rules, config=config, num_train_steps=8)
  init = lambda: finetune_lib.init_values(spec, config, init_kind, meta, steps.shapes)  # noqa: E731
  straight = finetune_lib.run_trial(config, os.fspath(tmp_path / "a"), 3, steps, train, eval_sets, 8, init)
  with monkeypatch.context() as m:  # as if SIGTERM arrived during step 4
    m.setattr(checkpointing.Checkpointer, "preemption_requested", lambda self, step: step == 4)
    first = finetune_lib.run_trial(config, os.fspath(tmp_path / "b"), 3, steps, train, eval_sets, 8, init)
  assert first == {"seed": 3, "workdir": os.fspath(tmp_path / "b"), "steps": 4, "preempted": True}
  with checkpointing.Checkpointer(tmp_path / "b" / "checkpoints", handle_sigterm=False) as probe:
    assert probe.all_steps() == [4]
  resumed = finetune_lib.run_trial(config, os.fspath(tmp_path / "b"), 3, steps, train, eval_sets, 8, init)
  assert resumed["steps"] == 8
  a = checkpointing.load_params(os.fspath(tmp_path / "a"))[1]
  b = checkpointing.load_params(os.fspath(tmp_path / "b"))[1]
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
  assert resumed["metrics"]["dev"]["accuracy"] == pytest.approx(straight["metrics"]["dev"]["accuracy"])
  steps_logged = [r["step"] for r in metrics.read_metrics(tmp_path / "b") if "loss" in r]
  assert steps_logged == list(range(1, 9))
  # eval_every_steps=4: dev scores at step 4 (mid-run) and at the end.
  assert [r["step"] for r in metrics.read_metrics(tmp_path / "a") if "dev/accuracy" in r] == [4, 8]


def _tiny_hf_folder(path):
  """A tiny ELECTRA discriminator written as an HF folder (config.json + model.safetensors + vocab.txt)."""
  from flax import nnx
  from electra_jax.convert import to_hf
  from electra_jax.modeling import ElectraConfig, ElectraForPreTraining
  cfg = ElectraConfig(**glue_config.MODEL_SIZES["tiny"], vocab_size=30522)
  to_hf(ElectraForPreTraining(cfg, rngs=nnx.Rngs(7)), path)
  with open(shared_data("vocab/bert-base-uncased-vocab.txt"), encoding="utf-8") as src:
    (path / "vocab.txt").write_text(src.read(), encoding="utf-8")
  return path


@pytest.mark.slow
def test_stsb_regression_from_hf_folder_with_two_seeds(tmp_path):
  from electra_jax.convert import read_hf_weights
  hf = _tiny_hf_folder(tmp_path / "hf")
  config = tiny_glue_config("stsb", head="hf", init_checkpoint=os.fspath(hf), num_train_steps=6, num_trials=2,
                            vocab_file="")
  assert config.double_unordered and config.num_train_epochs == 10.0
  workdir = tmp_path / "run"
  results = finetune_lib.train_and_evaluate(config, os.fspath(workdir))
  assert results["init_kind"] == "hf" and results["head"] == "ElectraForSequenceClassification"
  assert [t["seed"] for t in results["trials"]] == [0, 1]
  s = results["summary"]["dev/spearman"]
  assert s["n"] == 2 and s["min"] <= s["median"] <= s["max"]
  assert s["median"] == pytest.approx(np.median(s["values"])) and s["std"] == pytest.approx(np.std(s["values"], ddof=1))
  for key in ("dev/pearson", "dev/spearman", "dev/pearson_spearman_avg"):
    assert key in results["summary"]
  # STS-B leaderboard file: float scores.
  lines = (workdir / "seed_1" / "predictions" / "STS-B.tsv").read_text().splitlines()
  assert lines[0] == "index\tprediction" and len(lines) == 25
  [float(line.split("\t")[1]) for line in lines[1:]]
  # The encoder came from the HF folder: its values are what init_values loads.
  _, adapter, _, _ = finetune_lib.setup(config)
  spec, kind, meta = finetune_lib.model_spec(config, adapter)
  steps = finetune_lib.Steps(spec, adapter, sharding.make_mesh({"data": -1}), None)
  values = finetune_lib.init_values(spec, config, kind, meta, steps.shapes)
  tensors = read_hf_weights(hf)
  np.testing.assert_array_equal(values["electra/embeddings/word_embeddings"],
                                tensors["electra.embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(values["electra/encoder/layers/query/kernel"][1],
                                tensors["electra.encoder.layer.1.attention.self.query.weight"].T)
  assert not any(k.startswith("classifier/") for k in values)  # a pretraining folder has no classifier: fresh head
  # The original head takes the same encoder from the folder.
  config.head = "original"
  spec, kind, meta = finetune_lib.model_spec(config, adapter)
  assert spec.kind == "OriginalElectraForSequenceClassification"
  shapes = finetune_lib.Steps(spec, adapter, steps.mesh, None).shapes
  original = finetune_lib.init_values(spec, config, kind, meta, shapes)
  assert set(original) == {k for k in values if k.startswith("electra/")}
  np.testing.assert_array_equal(original["electra/encoder/layers/query/kernel"],
                                values["electra/encoder/layers/query/kernel"])


@pytest.mark.slow
def test_init_from_a_finetuned_checkpoint_takes_its_encoder(mrpc_run):
  _, workdir, _ = mrpc_run
  config = tiny_glue_config("rte", init_checkpoint=os.path.join(workdir, "seed_0"))
  _, adapter, mesh, rules = finetune_lib.setup(config)
  spec, kind, meta = finetune_lib.model_spec(config, adapter)
  assert kind == "orbax" and meta["kind"] == "OriginalElectraForSequenceClassification"
  values = finetune_lib.init_values(spec, config, kind, meta, finetune_lib.Steps(spec, adapter, mesh, rules).shapes)
  mrpc = checkpointing.load_params(os.path.join(workdir, "seed_0"))[1]
  assert not any(k.startswith("classifier/") for k in values)  # the MRPC classifier is not carried over
  np.testing.assert_array_equal(values["electra/encoder/layers/value/kernel"],
                                mrpc["electra"]["encoder"]["layers"]["value"]["kernel"])


@pytest.mark.slow
def test_init_from_orbax_pretraining_checkpoint(tmp_path):
  from flax import nnx
  from electra_jax.modeling import ElectraConfig, ElectraPretrainingModel, generator_config
  disc = ElectraConfig(**glue_config.MODEL_SIZES["tiny"], vocab_size=30522)
  model = ElectraPretrainingModel(disc, generator_config(disc, 0.5), rngs=nnx.Rngs(3))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  ckpt = tmp_path / "pretrain"
  meta = checkpointing.pretraining_meta(disc, model.generator.config)
  checkpointing.save_params(os.fspath(ckpt / "checkpoints"), meta, params, step=100)
  config = tiny_glue_config("rte", init_checkpoint=os.fspath(ckpt))
  _, adapter, mesh, rules = finetune_lib.setup(config)
  spec, kind, meta = finetune_lib.model_spec(config, adapter)
  assert kind == "orbax" and spec.config.hidden_size == disc.hidden_size and spec.config.num_labels == 2
  steps = finetune_lib.Steps(spec, adapter, mesh, rules)
  values = finetune_lib.init_values(spec, config, kind, meta, steps.shapes)
  assert set(values) == {k for k in steps.shapes if k.startswith("electra/")}
  np.testing.assert_array_equal(values["electra/encoder/layers/output/kernel"],
                                params["discriminator"]["electra"]["encoder"]["layers"]["output"]["kernel"])
  # Placed into the sharded model, the values are what the model holds.
  loaded = steps.overwrite(steps.init_params(0), values)
  np.testing.assert_array_equal(np.asarray(loaded["electra"]["embeddings"]["word_embeddings"]),
                                params["discriminator"]["electra"]["embeddings"]["word_embeddings"])


def test_malformed_training_row_names_file_and_line(tmp_path):
  task_dir = tmp_path / "glue_data" / "RTE"
  task_dir.mkdir(parents=True)
  src = shared_data("glue_data/RTE/train.tsv").read_text(encoding="utf-8").splitlines()
  src[3] = src[3].rsplit("\t", 1)[0]  # drop the label column of line 4
  (task_dir / "train.tsv").write_text("\n".join(src[:10]) + "\n", encoding="utf-8")
  config = tiny_glue_config("rte", data_dir=os.fspath(tmp_path / "glue_data"))
  with pytest.raises(glue.GlueFormatError, match=r"train\.tsv:4: expected 4 tab-separated columns, found 3"):
    finetune_lib.train_and_evaluate(config, os.fspath(tmp_path / "run"))
  # skip_malformed: the row is left out, counted, and reported in the run's data summary.
  config.skip_malformed = True
  _, adapter, _, _ = finetune_lib.setup(config)
  arrays, info = adapter.train_arrays()
  assert info["train_examples"] == 8 and arrays["input_ids"].shape[0] == 8
  assert "9 data rows, 8 examples, 1 malformed rows skipped (line 4: expected 4" in adapter.read_summaries[0]


def test_glue_from_tfds_feeds_the_same_arrays():
  import tensorflow_datasets as tfds
  from electra_jax.data.tokenization import load_tokenizer
  config = tiny_glue_config("rte", data_source="tfds", tfds_data_dir="/nonexistent", max_train_examples=-1,
                            max_eval_examples=-1)
  tok = load_tokenizer(config.vocab_file)
  rte = {split: glue.read_split("rte", config.data_dir, split)[:5] for split in ("train", "dev", "test")}
  names = glue.TASKS["rte"].tfds_labels

  def fake_source(builder, split, **_):
    ours = {"train": "train", "validation": "dev", "test": "test"}[split]
    return [{"sentence1": ex.text_a.encode(), "sentence2": ex.text_b.encode(), "idx": ex.idx,
             "label": -1 if ex.label is None else names.index(glue.TASKS["rte"].labels[ex.label])}
            for ex in rte[ours]]

  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    adapter = tasks.make_adapter(config, tok)
    train, info = adapter.train_arrays()
    eval_sets = adapter.eval_sets(include_test=True)
  expected = glue.featurize(rte["train"], tok, config.max_seq_length)
  assert info["train_examples"] == 5
  for k in ("input_ids", "token_type_ids", "labels"):
    np.testing.assert_array_equal(train[k], expected[k])
  assert [(es.name, es.labelled) for es in eval_sets] == [("dev", True), ("test", False)]
  assert [ex.label for ex in eval_sets[0].payload[2]] == [ex.label for ex in rte["dev"]]
