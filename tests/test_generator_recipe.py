"""generator.source (a frozen external generator), generator.temperature (a schedule) and generator.learning_rate
(the generator's own optimizer)."""

import jax
import numpy as np
import pytest
from flax import nnx

from electra_jax import convert, sharding
from electra_jax.modeling import ElectraConfig, ElectraForMaskedLM
from electra_jax.train import generator, pretrain_lib
from tests.test_gdes import VOCAB, _batch, _small_config
from tests.test_pretrain_sharding import IDS


def _mesh():
  return sharding.make_mesh({"data": 1}, jax.devices()[:1])


def _steps(setup, n, state=None):
  state = state if state is not None else pretrain_lib.init_state(setup)
  first = jax.device_get(state["params"])
  outs = []
  for i in range(n):
    batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in _batch(seed=i).items()}
    state, out = pretrain_lib.run_step(setup, state, batch, jax.random.key(0))
    outs.append(jax.device_get(out))
  return first, jax.device_get(state["params"]), outs


def test_temperature_schedules():
  assert generator.temperature_schedule(2.0, 100) == 2.0
  assert generator.temperature_schedule("1.5", 100) == 1.5
  lin = generator.temperature_schedule("linear:2->1", 100)
  np.testing.assert_allclose([float(lin(s)) for s in (0, 50, 100, 200)], [2.0, 1.5, 1.0, 1.0], rtol=1e-6)
  exp = generator.temperature_schedule("exp:4.0->1.0@10", 100)
  np.testing.assert_allclose([float(exp(s)) for s in (0, 5, 10, 99)], [4.0, 2.0, 1.0, 1.0], rtol=1e-6)
  cos = generator.temperature_schedule("cosine: 3 -> 1", 10)
  np.testing.assert_allclose([float(cos(s)) for s in (0, 5, 10)], [3.0, 2.0, 1.0], rtol=1e-6)
  for bad in ("0", -1.0, "linear:2->0", "step:2->1", "linear:2", "fast"):
    with pytest.raises(generator.GeneratorConfigError, match="generator.temperature"):
      generator.temperature_schedule(bad, 100)


def test_source_options_are_checked():
  for overrides, match in (({"objective": "mlm"}, "objective"), ({"objective": "electric"}, "objective"),
                           ({"generator.weight_sharing": "gdes"}, "shares nothing"),
                           ({"generator.learning_rate": 1e-4}, "not trained"),
                           ({"generator.sampling": "uniform"}, "sampling")):
    with pytest.raises(generator.GeneratorConfigError, match=match):
      generator.options(_small_config(**{"generator.source": "/some/folder", "generator.weight_sharing": "none",
                                         **overrides}))


def _source_folder(tmp_path):
  config = ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=1, intermediate_size=32, max_position_embeddings=32)
  model = ElectraForMaskedLM(config, rngs=nnx.Rngs(7))
  return model, convert.to_hf(model, tmp_path / "gen")


@pytest.mark.slow
def test_frozen_generator_never_changes_and_has_no_mlm_loss(tmp_path):
  model, folder = _source_folder(tmp_path)
  config = _small_config(**{"generator.weight_sharing": "embeddings", "generator.source": str(folder),
                            "generator.temperature": "linear:3->1@4"})
  config.learning_rate = 1e-2
  setup = pretrain_lib.build_setup(config, _mesh(), vocab_size=VOCAB, ids=IDS)
  assert setup.model_options["weight_sharing"] == "none" and setup.gen_config.hidden_size == 16
  expected = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  first, last, outs = _steps(setup, 3)
  # loaded as it is, and unchanged by training; the discriminator does train
  jax.tree.map(np.testing.assert_array_equal, first["generator"], expected)
  jax.tree.map(np.testing.assert_array_equal, last["generator"], expected)
  assert not np.array_equal(first["discriminator"]["electra"]["embeddings"]["word_embeddings"],
                            last["discriminator"]["electra"]["embeddings"]["word_embeddings"])
  for step, out in enumerate(outs):
    np.testing.assert_allclose(out["loss"], config.disc_weight * out["rtd_loss"], rtol=1e-6)   # no MLM term
    assert out["mlm_loss"] > 0                                                                 # reported
    np.testing.assert_allclose(out["temperature"], 3.0 - 0.5 * step, rtol=1e-6)
  # not in the optimizer state: only the discriminator's parameters have Adam moments
  state = pretrain_lib.init_state(setup)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  n_gen = sum(x.size for x in jax.tree.leaves(state["params"]["generator"]))
  n_moments = sum(x.size for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0)
  assert n_moments == 2 * (n_params - n_gen)


@pytest.mark.slow
def test_generator_moves_by_its_own_learning_rate():
  """Adam with bias correction moves every parameter with a gradient by ~lr at the first step (weight decay 0,
  no warmup): generator parameters by generator.learning_rate, the discriminator's by config.learning_rate."""
  config = _small_config(**{"generator.weight_sharing": "none", "generator.learning_rate": 1e-4})
  config.learning_rate = 3e-3
  config.optimizer.weight_decay, config.optimizer.warmup_steps, config.optimizer.bias_correction = 0.0, 0, True
  config.optimizer.clip_norm = 1e9
  setup = pretrain_lib.build_setup(config, _mesh(), vocab_size=VOCAB, ids=IDS)
  first, last, _ = _steps(setup, 1)
  for part, lr in (("generator", 1e-4), ("discriminator", 3e-3)):
    moved = np.concatenate([np.abs(a - b).ravel() for a, b in zip(jax.tree.leaves(last[part]),
                                                                jax.tree.leaves(first[part]))])
    moved = moved[moved > 0]
    assert moved.size > 1000, part
    np.testing.assert_allclose(np.median(moved), lr, rtol=1e-2, err_msg=part)
    assert moved.max() <= lr * 1.001, part


def test_a_frozen_generator_counts_its_forward_only():
  from electra_jax.train import flops  # pylint: disable=import-outside-toplevel
  disc = ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64)
  gen = disc.replace(hidden_size=16, num_attention_heads=1, intermediate_size=32)
  kw = dict(batch_size=4, seq_len=16, num_predictions=3)
  alone = flops.train_flops_per_step(disc, None, **kw)
  trained = flops.train_flops_per_step(disc, gen, **kw)
  frozen = flops.train_flops_per_step(disc, gen, generator_trained=False, **kw)
  assert frozen - alone == pytest.approx((trained - alone) / 3)    # forward only: 1 of the 1 + 2 passes


def test_parameter_groups_get_their_own_rate_or_none():
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from electra_jax.train import optim  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict({"weight_decay": 0.0, "warmup_steps": 0, "bias_correction": True})
  params = {"generator": {"w": jnp.ones(3)}, "discriminator": {"w": jnp.ones(4)}, "frozen": {"w": jnp.ones(5)}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx, schedules = optim.create_groups(cfg, params, learning_rates={"generator": 0.1, "discriminator": 0.01,
                                                                   "frozen": None},
                                      label_of=lambda names: names[0], num_train_steps=10)
  assert sorted(schedules) == ["discriminator", "generator"]
  state = tx.init(params)
  assert sum(x.size for x in jax.tree.leaves(state) if x.ndim) == 2 * (3 + 4)   # nothing kept for the frozen group
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["generator"]["w"], -0.1, rtol=1e-4)
  np.testing.assert_allclose(updates["discriminator"]["w"], -0.01, rtol=1e-4)
  np.testing.assert_array_equal(updates["frozen"]["w"], 0.0)
  with pytest.raises(ValueError, match="no learning rate"):
    optim.create_groups(cfg, params, learning_rates={"generator": 0.1}, label_of=lambda names: names[0],
                        num_train_steps=10)
