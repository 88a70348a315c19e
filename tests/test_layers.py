"""The modules through the kernel seam: each passes its config's `kernels` to electra_jax.ops, a model's values and
gradients are the same in every form, Dense stays one 2-D product (the op-level tests are in tests/test_ops.py)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from electra_jax.modeling import HEADS, ORIGINAL_HEADS, ElectraConfig, head_class
from electra_jax import ops
from electra_jax.modeling.layers import Dense
from electra_jax.ops import xla_cpu

SMALL = dict(vocab_size=61, embedding_size=16, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=40, max_position_embeddings=16, num_labels=3)
OPS = ("dropout", "dense", "tied_logits", "layer_norm", "gelu", "attention")


def _inputs(head, b=2, length=8):
  ids = (jnp.arange(b * length).reshape(b, length) % 50 + 5).astype(jnp.int32)
  mask = jnp.ones((b, length), jnp.int32).at[1, 5:].set(0)
  if head == "ElectraForMultipleChoice":
    ids, mask = jnp.stack([ids, ids[::-1]], 1), jnp.stack([mask, mask[::-1]], 1)
  return ids, mask


@pytest.mark.parametrize("head", sorted(HEADS) + sorted(ORIGINAL_HEADS))
def test_every_module_runs_the_forms_its_config_names(head, monkeypatch):
  calls = collections.Counter()
  for name in OPS:
    def counted(*args, _op=getattr(xla_cpu, name), _name=name, **kw):
      calls[_name] += 1
      return _op(*args, **kw)
    monkeypatch.setattr(xla_cpu, name, counted)
  ids, mask = _inputs(head)
  for kernels in ("reference", "xla_cpu", "auto"):
    calls.clear()
    cfg = ElectraConfig(**SMALL, kernels=kernels, is_decoder=head == "ElectraForCausalLM")
    graphdef, state = nnx.split(head_class(head)(cfg, rngs=nnx.Rngs(0)))
    jax.eval_shape(lambda s: nnx.merge(graphdef, s)(ids, mask, dropout_rng=jax.random.key(0)), state)   # training
    jax.eval_shape(lambda s: nnx.merge(graphdef, s)(ids, mask), state)                                  # inference
    if kernels == "reference":
      assert not calls, f"{head} with kernels='reference' ran CPU forms: {dict(calls)}"
    else:   # on CPU, "auto" is "xla_cpu"
      lm = head in ("ElectraForMaskedLM", "ElectraForCausalLM")
      assert {op for op in OPS if calls[op]} == set(OPS) - ({"tied_logits"} - ({"tied_logits"} if lm else set()))


@pytest.mark.parametrize("head", ["ElectraForCausalLM", "ElectraForSequenceClassification"])
def test_model_values_and_gradients_are_the_same_in_every_form(head):
  # A causal LM (causal masks, the tied LM head) and a [CLS] head (its last layer at [CLS] alone), without dropout.
  ids, mask = _inputs(head)
  cfg = ElectraConfig(**SMALL, is_decoder=head == "ElectraForCausalLM", hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
  _, params = nnx.split(head_class(head)(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  cot = jax.random.normal(jax.random.key(2), (2, 8, SMALL["vocab_size"]) if "LM" in head else (2, SMALL["num_labels"]))

  def value_and_grads(kernels):
    graphdef, _, rest = nnx.split(head_class(head)(cfg.replace(kernels=kernels), rngs=nnx.Rngs(1)), nnx.Param, ...)
    f = lambda p: nnx.merge(graphdef, p, rest)(ids, mask, dropout_rng=jax.random.key(0)).logits  # noqa: E731
    y, grads = jax.jit(lambda p: (f(p), jax.grad(lambda q: jnp.sum(f(q) * cot))(p)))(params)
    return y, jax.tree.leaves(grads)

  (want, want_grads), (got, got_grads) = value_and_grads("reference"), value_and_grads("xla_cpu")
  assert got.shape == cot.shape
  np.testing.assert_allclose(got, want, atol=1e-5 * float(jnp.abs(want).max()))
  for g, w in zip(got_grads, want_grads, strict=True):
    np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.abs(w).max()) + 1e-9)


def test_dense_is_one_2d_product():
  # [B, L, in] x [in, out] runs as one [B * L, in] x [in, out] product, forward and backward (benchmarks/README.md,
  # change 1); the kernel [in, out] is the transpose of torch's Linear weight.
  cfg = ElectraConfig(**SMALL)
  layer = Dense(24, 40, ("embed", "mlp"), cfg, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 7, 24))
  dots = [e for e in _eqns(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(layer(v))))(x).jaxpr)
          if e.primitive.name == "dot_general"]
  assert len(dots) >= 2 and all(v.aval.ndim == 2 for e in dots for v in e.invars)
  np.testing.assert_allclose(layer(x), x @ layer.kernel[...] + layer.bias[...], atol=1e-6)


def _eqns(jaxpr):
  """Every equation of a jaxpr and of the jaxprs inside it."""
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      for inner in p if isinstance(p, (tuple, list)) else (p,):
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):
          yield from _eqns(inner)


@pytest.mark.parametrize("head", ["ElectraForCausalLM", "ElectraForSequenceClassification"])
def test_layers_hand_attention_the_key_mask_and_the_causal_flag(head, monkeypatch):
  # The seam gets the [B, L] padding mask and the config's is_decoder as the causal flag, never a (query, key) mask:
  # each fused kernel builds its masks in its own terms.
  seen = []
  attention = ops.attention

  def spy(q, k, v, key_mask, **kw):
    seen.append((q.shape[1], key_mask.shape, key_mask.dtype, kw["causal"]))
    return attention(q, k, v, key_mask, **kw)

  monkeypatch.setattr(ops, "attention", spy)
  ids, mask = _inputs(head)
  causal = head == "ElectraForCausalLM"
  graphdef, state = nnx.split(head_class(head)(ElectraConfig(**SMALL, is_decoder=causal), rngs=nnx.Rngs(0)))
  jax.eval_shape(lambda s: nnx.merge(graphdef, s)(ids, mask), state)
  assert seen == [(8 if causal else q, (2, 8), jnp.bool_, causal) for q in (8, 1)]   # [CLS] heads: the last layer
