"""Gradient-Disentangled Embedding Sharing (generator.weight_sharing="gdes"): the discriminator's embeddings are
stop_gradient(E_G) + E_delta; the MLM loss alone reaches E_G, the discriminator's loss alone E_delta; export and
fine-tuning read E_G + E_delta."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from electra_jax import modeling, sharding
from electra_jax.modeling import ElectraConfig, ElectraPretrainingModel, generator_config
from electra_jax.train import objectives, pretrain_lib
from tests.test_pretrain_sharding import IDS, _config

VOCAB = 200


def _small_config(**overrides):
  c = _config("electra")
  c.batch_size, c.max_seq_length = 4, 16
  c.model.hidden_size, c.model.embedding_size, c.model.intermediate_size = 32, 16, 64
  c.generator.weight_sharing = "gdes"
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


def _batch(b=4, length=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(104, VOCAB, size=(b, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 101, 102
  ones = np.ones((b, length), np.int32)
  return {"input_ids": ids, "input_mask": ones, "segment_ids": 0 * ones}


@pytest.mark.slow
def test_gdes_model_starts_with_zero_delta_and_exports_the_sum():
  disc = ElectraConfig(vocab_size=60, embedding_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=32)
  model = ElectraPretrainingModel(disc, generator_config(disc, 0.5), rngs=nnx.Rngs(0), weight_sharing="gdes")
  assert model.generator.electra.embeddings is not model.discriminator.electra.embeddings
  delta = nnx.to_pure_dict(nnx.state(model.discriminator.electra.embeddings, nnx.Param))
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(delta))
  gen_word = np.asarray(model.generator.electra.embeddings.word_embeddings[...])
  assert np.any(gen_word)
  model.discriminator.electra.embeddings.word_embeddings[...] = jnp.ones_like(gen_word)   # a non-zero E_delta
  exported = model.hf_parts()["discriminator"]
  np.testing.assert_allclose(np.asarray(exported.electra.embeddings.word_embeddings[...]), gen_word + 1.0)
  # the model itself keeps E_delta (what training resumes from)
  np.testing.assert_array_equal(np.asarray(model.discriminator.electra.embeddings.word_embeddings[...]), 1.0)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  folded = modeling.effective_params(params, model.options)
  np.testing.assert_allclose(np.asarray(folded["discriminator"]["electra"]["embeddings"]["word_embeddings"]),
                             gen_word + 1.0)
  assert modeling.effective_params(params, {"weight_sharing": "embeddings"}) is params


@pytest.mark.slow
def test_gdes_gradients_are_disentangled_exactly():
  """grad of the discriminator's loss wrt E_G is exactly 0, grad of the MLM loss wrt E_delta is exactly 0; each
  loss does reach its own table."""
  config = _small_config()
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=VOCAB, ids=IDS)
  state = pretrain_lib.init_state(setup)
  params = jax.device_get(state["params"])
  # a non-zero E_delta, so the discriminator's forward depends on both tables
  params["discriminator"]["electra"]["embeddings"] = jax.tree.map(
      lambda x: x + 0.01, params["discriminator"]["electra"]["embeddings"])
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}

  def grads(gen_weight, disc_weight):
    cfg = setup.step_config.__class__(**{**setup.step_config.__dict__, "gen_weight": gen_weight,
                                         "disc_weight": disc_weight})
    loss_fn = objectives.make_loss_fn(setup.graphdef, setup.rest, cfg)
    with jax.set_mesh(mesh):
      return jax.device_get(jax.jit(jax.grad(lambda p: loss_fn(p, batch, jax.random.key(3))[0]))(params))

  disc_only, mlm_only = grads(0.0, 1.0), grads(1.0, 0.0)
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    e_g = ("generator", "electra", "embeddings", name)
    e_delta = ("discriminator", "electra", "embeddings", name)
    get = lambda tree, path: np.asarray(tree[path[0]][path[1]][path[2]][path[3]])  # noqa: E731
    assert not np.any(get(disc_only, e_g)), name          # the discriminator's loss never reaches E_G
    assert not np.any(get(mlm_only, e_delta)), name       # the MLM loss never reaches E_delta
    assert np.any(get(disc_only, e_delta)), name
  assert np.any(np.asarray(mlm_only["generator"]["electra"]["embeddings"]["word_embeddings"]))
  for part in ("scale", "bias"):
    assert not np.any(np.asarray(disc_only["generator"]["electra"]["embeddings"]["layer_norm"][part]))
    assert not np.any(np.asarray(mlm_only["discriminator"]["electra"]["embeddings"]["layer_norm"][part]))


def test_gdes_refused_with_electric_and_two_stage():
  with pytest.raises(ValueError, match="electric"):
    pretrain_lib.generator_options(_small_config(objective="electric"))
  with pytest.raises(ValueError, match="two_stage"):
    pretrain_lib.generator_options(_small_config(two_stage=2, num_train_steps=10))


@pytest.mark.slow
def test_a_gdes_checkpoint_exports_and_fine_tunes_from_the_sum(tmp_path):
  """orbax_to_hf and fine-tuning's initialisation read the discriminator of a gdes checkpoint as E_G + E_delta."""
  from electra_jax import checkpointing, convert  # pylint: disable=import-outside-toplevel
  from electra_jax.convert import __main__ as cli  # pylint: disable=import-outside-toplevel
  from electra_jax.train import finetune_lib  # pylint: disable=import-outside-toplevel
  disc = ElectraConfig(vocab_size=60, embedding_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=32)
  model = ElectraPretrainingModel(disc, generator_config(disc, 0.5), rngs=nnx.Rngs(0), weight_sharing="gdes")
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  params["discriminator"]["electra"]["embeddings"] = jax.tree.map(lambda x: x + 0.5,
                                                                  params["discriminator"]["electra"]["embeddings"])
  e_g = np.asarray(params["generator"]["electra"]["embeddings"]["word_embeddings"])
  meta = checkpointing.pretraining_meta(model.discriminator.config, model.generator.config, options=model.options)
  checkpointing.save_params(str(tmp_path / "ckpt"), meta, params)
  cli.orbax_to_hf(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
  exported = convert.read_hf_weights(tmp_path / "hf")["electra.embeddings.word_embeddings.weight"]
  np.testing.assert_allclose(exported, e_g + 0.5, rtol=1e-6)
  spec = checkpointing.ModelSpec("ElectraForSequenceClassification", disc.replace(num_labels=2))
  shapes = {k: tuple(v.shape) for k, v in convert.flatten(
      nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: spec.build(0)), nnx.Param))).items()}
  import ml_collections  # pylint: disable=import-outside-toplevel
  values = finetune_lib.init_values(spec, ml_collections.ConfigDict({"init_checkpoint": str(tmp_path / "ckpt")}),
                                    "orbax", meta, shapes)
  np.testing.assert_allclose(values["electra/embeddings/word_embeddings"], e_g + 0.5, rtol=1e-6)
