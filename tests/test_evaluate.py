"""The binaries as users run them: finetune (runlocal) then evaluate on its checkpoint; bad input exits 1."""

import json
import os
import subprocess
import sys

import pytest

from electra_jax import paths
from tests.conftest import shared_data

REPO = os.fspath(paths.REPO_ROOT)


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # compiles faster; these runs are about plumbing
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


@pytest.mark.slow
def test_finetune_then_evaluate_binaries(tmp_path):
  data = shared_data()
  common = [f"--config.data_dir={data / 'glue_data'}",
            f"--config.vocab_file={data / 'vocab/bert-base-uncased-vocab.txt'}",
            "--config.max_train_examples=16", "--config.max_eval_examples=16", "--config.num_train_steps=4",
            "--config.model.max_position_embeddings=64", "--config.max_seq_length=64"]
  work = tmp_path / "rte"
  proc = _run("electra_jax.train.finetune", "--config=configs/glue.py:task=rte,runlocal", f"--workdir={work}", *common)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "*dev/accuracy" in proc.stdout  # the summary table, paper metric marked
  results = json.loads((work / "results.json").read_text())
  assert results["num_train_steps"] == 4 and results["trials"][0]["steps"] == 4
  out = tmp_path / "eval"
  proc = _run("electra_jax.eval.evaluate", "--config=configs/glue.py:task=rte,runlocal", f"--checkpoint={work}/seed_0",
              f"--workdir={out}", *common)
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads((out / "results.json").read_text())
  assert evaluated["metrics"]["dev"]["accuracy"] == pytest.approx(results["trials"][0]["metrics"]["dev"]["accuracy"])
  assert sorted(os.listdir(out / "predictions")) == ["RTE.tsv", "RTE_dev.tsv"]
  assert (out / "predictions" / "RTE.tsv").read_text().splitlines()[1].split("\t")[1] in (
      "entailment", "not_entailment")


@pytest.mark.slow
def test_binaries_exit_1_with_a_message_on_bad_input(tmp_path):
  proc = _run("electra_jax.eval.evaluate", "--config=configs/glue.py:task=rte,runlocal",
              f"--checkpoint={tmp_path / 'missing'}", f"--workdir={tmp_path / 'out'}")
  assert proc.returncode == 1
  assert f"error: checkpoint {tmp_path / 'missing'} does not exist" in proc.stderr
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text("{}")
  (tmp_path / "hf" / "model.safetensors").write_bytes(b"")   # an HF folder = config.json + weights
  proc = _run("electra_jax.eval.evaluate", "--config=configs/glue.py:task=rte,runlocal,head=original",
              f"--checkpoint={tmp_path / 'hf'}", f"--workdir={tmp_path / 'out'}")
  assert proc.returncode == 1
  assert "is an HF folder: only HF heads load from it; evaluate it with head=hf" in proc.stderr


@pytest.mark.slow
def test_evaluate_mnli_scores_both_halves_and_writes_mnli_and_ax_files(tmp_path):
  """MNLI is too large for the shared data: a small folder in its format (RTE sentences, MNLI labels) stands in."""
  import numpy as np
  from flax import nnx
  from configs import glue as glue_config
  from electra_jax.data import glue
  from electra_jax.modeling import ElectraConfig
  from electra_jax import checkpointing
  from electra_jax.eval import evaluation
  pairs = glue.read_split("rte", shared_data("glue_data"), "dev")[:12]
  labels = ("contradiction", "entailment", "neutral")
  mnli = tmp_path / "glue_data" / "MNLI"
  mnli.mkdir(parents=True)
  for split in ("dev_matched", "dev_mismatched"):
    rows = [f"{i}\t{ex.text_a}\t{ex.text_b}\t{labels[i % 3]}" for i, ex in enumerate(pairs)]
    (mnli / f"{split}.tsv").write_text("\n".join(["index\tsentence1\tsentence2\tgold_label", *rows]) + "\n")
  for split in ("test_matched", "test_mismatched"):
    rows = [f"{i}\t{ex.text_a}\t{ex.text_b}" for i, ex in enumerate(pairs)]
    (mnli / f"{split}.tsv").write_text("\n".join(["index\tsentence1\tsentence2", *rows]) + "\n")
  (tmp_path / "glue_data" / "diagnostic").mkdir()
  ax_file = shared_data("glue_data/diagnostic/diagnostic.tsv")
  (tmp_path / "glue_data" / "diagnostic" / "diagnostic.tsv").symlink_to(ax_file)

  config = glue_config.get_config("task=mnli,size=tiny")
  config.data_dir = os.fspath(tmp_path / "glue_data")
  config.vocab_file = os.fspath(shared_data("vocab/bert-base-uncased-vocab.txt"))
  config.max_eval_examples = 12
  config.max_seq_length = 64
  config.eval_batch_size = 16
  arch = ElectraConfig(**glue_config.MODEL_SIZES["tiny"], vocab_size=30522, max_position_embeddings=64)
  spec = checkpointing.ModelSpec("OriginalElectraForSequenceClassification", arch.replace(num_labels=3))
  params = nnx.to_pure_dict(nnx.state(spec.build(0), nnx.Param))
  checkpointing.save_params(os.fspath(tmp_path / "ckpt" / "checkpoints"), spec.meta(),
                            {k: v for k, v in params.items()}, step=5)
  out = tmp_path / "out"
  results = evaluation.evaluate_checkpoint(config, os.fspath(tmp_path / "ckpt"), os.fspath(out))
  assert set(results["metrics"]) == {"dev_matched", "dev_mismatched"}
  assert results["metrics"]["dev_matched"] == results["metrics"]["dev_mismatched"]  # same rows in both files
  assert sorted(os.listdir(out / "predictions")) == ["AX.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "MNLI_dev_matched.tsv",
                                                     "MNLI_dev_mismatched.tsv"]
  ax = (out / "predictions" / "AX.tsv").read_text().splitlines()
  assert ax[0] == "index\tprediction" and len(ax) == 13
  assert {line.split("\t")[1] for line in ax[1:]} <= set(labels)
  preds = glue.read_predictions("mnli", out / "predictions" / "MNLI_dev_matched.tsv")
  gold = np.asarray([i % 3 for i in range(12)])
  assert results["metrics"]["dev_matched"]["accuracy"] == pytest.approx(
      np.mean(np.asarray([preds[i] for i in range(12)]) == gold))
