"""Gradient accumulation (config.gradient_accumulation_steps = K): the same update as the whole batch at dropout 0.

The global batch is split into K micro-batches inside the compiled step; pretraining's masking and sampling are drawn
for the whole batch first, so K = 1, 2, 4 train the same model: losses within 1e-6 (relative) and parameters within
1e-6 after several steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import pretrain as pretrain_config
from electra_jax import sharding
from electra_jax.train import pretrain_lib, trainer
from tests.test_pretrain_sharding import IDS, _batch


def _config(objective: str, k: int):
  c = pretrain_config.get_config(f"size=tiny,objective={objective}")
  c.batch_size = 16
  c.max_seq_length = 32
  c.model.hidden_size = 32
  c.model.embedding_size = 16
  c.model.intermediate_size = 64
  c.model.num_attention_heads = 2
  c.model.hidden_dropout_prob = 0.0
  c.model.attention_probs_dropout_prob = 0.0
  c.optimizer.warmup_steps = 1
  c.gradient_accumulation_steps = k
  return c


def _train(objective: str, k: int, steps: int):
  config = _two_device_mesh(_config(objective, k))
  mesh = pretrain_lib.build_mesh(config, jax.devices()[:2])
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=30522, ids=IDS)
  state = pretrain_lib.init_state(setup)
  abstract_batch = {k_: jax.ShapeDtypeStruct((16, 32), jnp.int32, sharding=setup.batch_sharding)
                    for k_ in ("input_ids", "input_mask", "segment_ids")}
  with jax.set_mesh(mesh), sharding.use_rules(setup.rules):
    hlo = setup.train_step.lower(setup.abstract_state, abstract_batch, jax.random.key(0)).as_text()
  # K > 1: the step holds the batch as K micro-batches [K, B / K, L] (which one lax.scan runs)
  assert (f"tensor<{k}x{16 // k}x32xi32>" in hlo) == (k > 1)
  losses = []
  for step in range(steps):
    batch = {k_: jax.device_put(v, setup.batch_sharding) for k_, v in _batch(16, 32, step).items()}
    state, out = pretrain_lib.run_step(setup, state, batch, jax.random.key(0))
    losses.append(jax.device_get(out))
  return losses, jax.device_get(state["params"])


def _two_device_mesh(config):
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 1, 1
  return config


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["electra"])
def test_accumulated_steps_train_the_same_model_as_the_whole_batch(objective):
  steps = 5
  base_losses, base_params = _train(objective, 1, steps)
  for k in (2, 4):
    losses, params = _train(objective, k, steps)
    for name in ("loss", "mlm_loss", "rtd_loss", "mlm_accuracy", "real_tokens", "masked_per_seq"):
      if name in base_losses[0]:
        np.testing.assert_allclose([float(m[name]) for m in losses], [float(m[name]) for m in base_losses],
                                   rtol=1e-6, err_msg=f"{name}, K={k}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), params, base_params)


def test_mean_losses_accumulate_to_the_full_batch_gradient():
  """Without a prepare step (fine-tuning's mean-over-examples losses), K micro-batches average to the full batch."""
  mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])
  x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
  y = np.random.default_rng(1).normal(size=(8,)).astype(np.float32)

  def loss_fn(params, batch, rng):
    loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    return loss, {"loss": loss}

  results = []
  for k in (1, 2, 4):
    tx = optax.sgd(0.1)
    params = {"w": jnp.ones((3,), jnp.float32)}
    step = jax.jit(trainer.make_train_step(loss_fn, tx, optax.constant_schedule(0.1), accumulation_steps=k))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    with jax.set_mesh(mesh):
      for _ in range(3):
        state, out = step(state, {"x": x, "y": y}, jax.random.key(0))
    results.append((float(out["loss"]), np.asarray(state["params"]["w"])))
  for loss, w in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-6)
    np.testing.assert_allclose(w, results[0][1], atol=1e-6)


def test_a_batch_that_does_not_split_is_refused_in_one_line():
  config = _two_device_mesh(_config("electra", 3))
  mesh = pretrain_lib.build_mesh(config, jax.devices()[:2])
  with pytest.raises(trainer.TrainerError, match=r"batch_size=16 is not divisible by .*gradient_accumulation_steps=3"):
    pretrain_lib.build_setup(config, mesh, vocab_size=30522, ids=IDS)
