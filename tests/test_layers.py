"""Hand-written gradients (layers.layer_norm, layers.matmul) against autodiff of the textbook formula, and torch's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from electra_jax.modeling import layers


def _reference(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


@pytest.mark.parametrize("eps", [1e-12, 1e-3])
def test_layer_norm_value_and_gradient_equal_autodiff(eps):
  k = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k[0], (4, 7, 48)) * 3 + 1
  scale, bias = jax.random.normal(k[1], (48,)), jax.random.normal(k[2], (48,))
  cot = jax.random.normal(k[3], x.shape)
  np.testing.assert_allclose(layers.layer_norm(x, scale, bias, eps), _reference(x, scale, bias, eps), atol=2e-6)

  def grads(fn):
    return jax.grad(lambda *a: jnp.sum(fn(*a) * cot), (0, 1, 2))(x, scale, bias)

  for got, want in zip(grads(lambda *a: layers.layer_norm(*a, eps)), grads(lambda *a: _reference(*a, eps))):
    np.testing.assert_allclose(got, want, atol=2e-5 * float(jnp.abs(want).max()))
  # torch's LayerNorm, value and input gradient
  tx = torch.tensor(np.asarray(x), requires_grad=True)
  ty = torch.nn.functional.layer_norm(tx, (48,), torch.tensor(np.asarray(scale)), torch.tensor(np.asarray(bias)), eps)
  (ty * torch.tensor(np.asarray(cot))).sum().backward()
  np.testing.assert_allclose(layers.layer_norm(x, scale, bias, eps), ty.detach().numpy(), atol=2e-6)
  np.testing.assert_allclose(grads(lambda *a: layers.layer_norm(*a, eps))[0], tx.grad.numpy(), atol=2e-5)


def test_layer_norm_gradient_keeps_nan_where_autodiff_has_it():
  # The written-out backward (with its no-op select) hides nothing: a NaN row's gradient is NaN as autodiff's is, and
  # the other rows' gradients are unaffected by it.
  x = jnp.arange(3 * 8, dtype=jnp.float32).reshape(3, 8) / 7
  x = x.at[1, 2].set(jnp.nan)
  scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.zeros(8)
  got = jax.grad(lambda v: jnp.sum(layers.layer_norm(v, scale, bias, 1e-12) ** 2))(x)
  want = jax.grad(lambda v: jnp.sum(_reference(v, scale, bias, 1e-12) ** 2))(x)
  assert np.isnan(got[1]).all() and np.isnan(want[1]).all()
  np.testing.assert_allclose(np.asarray(got)[[0, 2]], np.asarray(want)[[0, 2]], atol=1e-4)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (24, 24)])
def test_matmul_gradients_equal_autodiff_in_either_orientation(shape):
  # On CPU a kernel with more rows than columns takes its gradient as (g^T x)^T (layers.matmul): the same values.
  k = jax.random.split(jax.random.key(1), 3)
  x, w = jax.random.normal(k[0], (40, shape[0])), jax.random.normal(k[1], shape)
  cot = jax.random.normal(k[2], (40, shape[1]))
  np.testing.assert_allclose(layers.matmul(x, w), x @ w, rtol=1e-6)

  def grads(fn):
    return jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b) * cot), (0, 1)))(x, w)

  for got, want in zip(grads(layers.matmul), grads(jnp.dot)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  def swapped():
    return "optimization_barrier" in str(jax.make_jaxpr(jax.grad(lambda a: jnp.sum(layers.matmul(x, a))))(w))

  assert swapped() == (shape[0] > shape[1] and jax.default_backend() == "cpu")
  # The platform of the mesh in context decides (launch/tpu_aot.py traces for TPU devices on a CPU host).
  from jax._src.mesh import AbstractDevice  # pylint: disable=import-outside-toplevel
  tpu = jax.sharding.AbstractMesh((1,), ("data",), abstract_device=AbstractDevice("TPU v5 lite", None, "tpu"))
  with jax.sharding.use_abstract_mesh(tpu):
    assert not swapped()


@pytest.mark.parametrize("queries,causal", [(9, False), (9, True), (2, False)])
def test_attention_heads_major_equals_dot_product_attention(queries, causal):
  # The CPU inference attention (operands copied into heads-major order) against jax.nn.dot_product_attention:
  # padding, causal masks, and fewer queries than keys (the pruned last layer).
  k = jax.random.split(jax.random.key(0), 3)
  q = jax.random.normal(k[0], (3, queries, 2, 8))
  kk, v = jax.random.normal(k[1], (3, 9, 2, 8)), jax.random.normal(k[2], (3, 9, 2, 8))
  pad = jnp.asarray([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
  mask = layers.attention_mask_bias(pad, causal=causal)[:, :, :queries]
  want = jax.nn.dot_product_attention(q, kk, v, mask=mask)
  got = jax.jit(layers._attention_heads_major, static_argnums=4)(q, kk, v, mask, jnp.float32)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=2e-6)
