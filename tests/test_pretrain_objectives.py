"""The BERT-style `mlm` objective (a discriminator-size ElectraForMaskedLM) trains and exports; the electra objective
exports both networks."""

import json
import os

import jax
import numpy as np
import pytest

from electra_jax import sharding
from electra_jax.train import pretrain_lib
from tests.test_pretrain_sharding import IDS, _batch, _config


@pytest.fixture
def fast_compile():
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)


@pytest.mark.slow
@pytest.mark.parametrize("objective, parts", [("mlm", ["mlm"]), ("electra", ["discriminator", "generator"])])
def test_objective_trains_and_exports(objective, parts, tmp_path, fast_compile):
  del fast_compile
  config = _config(objective)
  config.learning_rate = 2e-3
  setup = pretrain_lib.build_setup(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]), vocab_size=30522,
                                   ids=IDS)
  assert (setup.gen_config is None) == (objective == "mlm")
  assert setup.model_meta["kind"] == ("ElectraForMaskedLM" if objective == "mlm" else "pretraining")
  state = pretrain_lib.init_state(setup)
  batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in _batch(8, 32).items()}
  seen = []
  for step in range(6):   # the same batch, so the loss must fall
    state, out = pretrain_lib.run_step(setup, state, batch, jax.random.key(step))
    seen.append(jax.device_get(out))
  assert seen[-1]["loss"] < seen[0]["loss"]
  assert ("rtd_loss" in seen[0]) == (objective == "electra")
  assert all(np.isfinite(o["grad_norm"]) for o in seen)
  dirs = pretrain_lib.export_hf(setup, state["params"], str(tmp_path / "export"),
                                {"vocab_file": _vocab(tmp_path), "lowercase": True,
                                 "strip_accents": None})
  assert sorted(dirs) == sorted(parts)
  for part in parts:
    with open(os.path.join(dirs[part], "config.json"), encoding="utf-8") as f:
      arch = json.load(f)["architectures"]
    assert arch == ["ElectraForPreTraining" if part == "discriminator" else "ElectraForMaskedLM"]
    assert os.path.isfile(os.path.join(dirs[part], "model.safetensors"))


def _vocab(tmp_path) -> str:
  """A vocab file with the special tokens at the BERT ids (only copied into the export)."""
  tokens = [f"[unused{i}]" for i in range(30522)]
  for name, i in (("[PAD]", 0), ("[UNK]", 100), ("[CLS]", 101), ("[SEP]", 102), ("[MASK]", 103)):
    tokens[i] = name
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(tokens) + "\n")
  return str(path)
