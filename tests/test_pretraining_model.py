"""The joint generator + discriminator shares the embedding module, and both losses train it."""

import pytest
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from electra_jax.convert import to_hf
from electra_jax.modeling import ElectraConfig, ElectraPretrainingModel, count_params, generator_config
from electra_jax.modeling.models import binary_cross_entropy, cross_entropy


def _model(**kw):
  disc = ElectraConfig(vocab_size=60, embedding_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=32, **kw)
  return ElectraPretrainingModel(disc, generator_config(disc, 0.5), rngs=nnx.Rngs(0))


def test_generator_shape_and_shared_embeddings():
  model = _model()
  g = model.generator.config
  assert (g.hidden_size, g.num_attention_heads, g.intermediate_size, g.num_hidden_layers) == (16, 1, 64, 2)
  assert model.generator.electra.embeddings is model.discriminator.electra.embeddings
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert "embeddings" not in state["generator"]["electra"]        # stored once, under the discriminator
  assert "embeddings_project" in state["generator"]["electra"]    # the generator keeps its own projection
  separate = count_params(model.discriminator) + count_params(model.generator)
  shared = 60 * 12 + 32 * 12 + 2 * 12 + 2 * 12                     # word, position, token-type tables + LayerNorm
  assert count_params(model) == separate - shared


@pytest.mark.slow
def test_both_losses_reach_the_shared_embeddings():
  model = _model()
  graphdef, params = nnx.split(model, nnx.Param)
  ids = jnp.array([[1, 5, 7, 9, 2, 0]])
  mask = (ids > 0).astype(jnp.int32)

  def loss(params, which):
    m = nnx.merge(graphdef, params)
    if which == "gen":
      logits = m.generator(ids, mask, masked_positions=jnp.array([[1, 2]])).logits
      return cross_entropy(logits, jnp.array([[5, 7]]))
    return binary_cross_entropy(m.discriminator(ids, mask).logits, jnp.zeros_like(ids), mask)

  for which in ("gen", "disc"):
    grads = nnx.to_pure_dict(jax.grad(loss)(params, which))
    emb_grad = grads["discriminator"]["electra"]["embeddings"]["word_embeddings"]
    assert float(jnp.abs(emb_grad).sum()) > 0, which


def test_generator_and_discriminator_export(tmp_path):
  import transformers  # pylint: disable=import-outside-toplevel
  model = _model()
  to_hf(model.generator, tmp_path / "gen")
  to_hf(model.discriminator, tmp_path / "disc")
  gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "gen")
  np.testing.assert_array_equal(gen.electra.embeddings.word_embeddings.weight.detach().numpy(),
                                np.asarray(model.discriminator.electra.embeddings.word_embeddings[...]))
  assert gen.config.hidden_size == 16
