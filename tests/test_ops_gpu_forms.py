"""The GPU forms that launch fewer kernels (electra_jax/ops/gpu.py: LayerNorm, grouped Dense products) against the
reference forms, values and gradients, and where they are chosen. They are plain jax.numpy, so they run here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax import ops
from electra_jax.modeling import ElectraConfig
from electra_jax.modeling import layers
from flax import nnx
from electra_jax.ops import gpu, reference


def _gpu_mesh():
  """An abstract mesh of GPU devices, as launch/gpu_aot.py's compile-only device sets while it compiles here."""
  device = jax.sharding.AbstractDevice("NVIDIA H200", None, "gpu")
  return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("data",), abstract_device=device))


def _grads(fn, args, cot):
  out, vjp = jax.vjp(fn, *args)
  return out, vjp(cot)


def _close(got, want, tol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=tol, rtol=tol)


@pytest.mark.parametrize("eps", [1e-12, 1e-3])
def test_layer_norm_equals_reference(eps):
  k = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k[0], (4, 7, 48)) * 3 + 1
  scale, bias = jax.random.normal(k[1], (48,)), jax.random.normal(k[2], (48,))
  cot = jax.random.normal(k[3], x.shape)
  got = _grads(lambda *a: gpu.layer_norm(*a, eps), (x, scale, bias), cot)
  want = _grads(lambda *a: reference.layer_norm(*a, eps), (x, scale, bias), cot)
  _close(got, want, 2e-5)


def test_layer_norm_nan_row_stays_in_its_row():
  x = (jnp.arange(3 * 8, dtype=jnp.float32).reshape(3, 8) / 7).at[1, 2].set(jnp.nan)
  scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.zeros(8)
  got = jax.grad(lambda v: jnp.sum(gpu.layer_norm(v, scale, bias, 1e-12) ** 2))(x)
  want = jax.grad(lambda v: jnp.sum(reference.layer_norm(v, scale, bias, 1e-12) ** 2))(x)
  assert np.isnan(got[1]).all() and np.isnan(want[1]).all()
  np.testing.assert_allclose(np.asarray(got)[[0, 2]], np.asarray(want)[[0, 2]], atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), pytest.param(jnp.bfloat16, 3e-2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("widths", [(16, 16, 16), (8, 24)])
def test_dense_group_equals_separate_dense_layers(dtype, tol, widths):
  k = jax.random.split(jax.random.key(1), 3 + 2 * len(widths))
  x = jax.random.normal(k[0], (2, 5, 12)).astype(dtype)
  weights = tuple((jax.random.normal(k[3 + i], (12, w)) * 0.3).astype(dtype) for i, w in enumerate(widths))
  biases = tuple(jax.random.normal(k[3 + len(widths) + i], (w,)).astype(dtype) for i, w in enumerate(widths))
  cot = tuple(jax.random.normal(k[1], (2, 5, w)).astype(dtype) for w in widths)

  def grouped(x, weights, biases):
    ys = gpu.dense_group(x.reshape(-1, 12), weights, biases)
    return tuple(y.reshape(2, 5, -1) for y in ys)

  def separate(x, weights, biases):
    return tuple(reference.dense(x.reshape(-1, 12), w).reshape(2, 5, -1) + b for w, b in zip(weights, biases))

  _close(_grads(grouped, (x, weights, biases), cot), _grads(separate, (x, weights, biases), cot), tol)


def test_dense_group_output_left_unused_gets_no_gradient():
  x, w = jnp.ones((3, 4)), (jnp.ones((4, 2)), jnp.ones((4, 2)))
  b = (jnp.zeros(2), jnp.zeros(2))
  dx, dw, db = jax.grad(lambda *a: jnp.sum(gpu.dense_group(*a)[0]), argnums=(0, 1, 2))(x, w, b)
  np.testing.assert_array_equal(dw[1], 0.0)
  np.testing.assert_array_equal(db[1], 0.0)
  np.testing.assert_array_equal(db[0], 3.0)
  np.testing.assert_array_equal(dx, 2.0)


def test_gpu_forms_chosen_only_when_compiling_for_a_gpu():
  x, scale, bias = jnp.ones((2, 8)), jnp.ones(8), jnp.zeros(8)

  def ln_jaxpr(kernels):
    return str(jax.make_jaxpr(lambda v: ops.layer_norm(v, scale, bias, 1e-12, kernels=kernels))(x))

  assert "custom_vjp" not in ln_jaxpr("reference")
  with _gpu_mesh():
    assert "custom_vjp" in ln_jaxpr("auto") and "custom_vjp" not in ln_jaxpr("reference")
    grouped = str(jax.make_jaxpr(lambda v: ops.dense_group(v, [jnp.ones((8, 4))] * 2, [jnp.zeros(4)] * 2))(x))
    assert "name=dense_group" in grouped
  # on this CPU: the CPU products, one per weight
  separate = str(jax.make_jaxpr(lambda v: ops.dense_group(v, [jnp.ones((8, 4))] * 2, [jnp.zeros(4)] * 2))(x))
  assert "name=dense_group" not in separate and separate.count("name=dense") == 2


def test_compiler_options_only_for_gpu_forms_on_a_gpu():
  assert ops.compiler_options("auto", "gpu") == ops.GPU_COMPILER_OPTIONS != {}
  assert ops.compiler_options("cudnn", "cuda") == ops.GPU_COMPILER_OPTIONS
  for kernels, platform in [("auto", "cpu"), ("auto", "tpu"), ("reference", "gpu"), ("xla_cpu", "cpu")]:
    assert ops.compiler_options(kernels, platform) == {}


@pytest.mark.slow
def test_layer_attention_with_grouped_products_equals_reference_forms(monkeypatch):
  # The layer hands q, k, v to ops.dense_group when they read one input; under a GPU mesh that is the GPU form.
  # (float32: cuDNN's attention does not take it, so "auto" under a GPU mesh runs the reference attention here.)
  cfg = ElectraConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, kernels="auto")
  layer = layers.ElectraLayer(cfg, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(2), (2, 6, 32))
  mask = jnp.ones((2, 6), bool).at[1, 4:].set(False)   # the key mask
  graphdef, state = nnx.split(layer)

  def loss(state, x):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x, mask)))

  want = jax.value_and_grad(loss, argnums=(0, 1))(state, x)
  monkeypatch.setattr(ops, "platform", lambda: "gpu")   # trace as for a GPU, run here
  jaxpr = str(jax.make_jaxpr(loss)(state, x))
  got = jax.value_and_grad(loss, argnums=(0, 1))(state, x)
  # the grouped products and the two add-and-LayerNorms took their GPU forms
  assert jaxpr.count("name=dense_group") == 1 and jaxpr.count("name=_add_layer_norm") == 2
  _close(got, want, 2e-5)


@pytest.mark.parametrize("rate", [0.0, 0.25])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 3e-5), pytest.param(jnp.bfloat16, 3e-2, marks=pytest.mark.slow)])
def test_add_layer_norm_equals_reference(rate, dtype, tol):
  k = jax.random.split(jax.random.key(3), 7)
  y, residual = (jax.random.normal(k[i], (3, 5, 16)).astype(dtype) for i in (0, 1))
  bias = jax.random.normal(k[2], (16,)).astype(dtype)
  scale, ln_bias = jax.random.normal(k[3], (16,)), jax.random.normal(k[4], (16,))
  rng = k[5] if rate else None
  cot = jax.random.normal(k[6], y.shape).astype(dtype)

  def ref(y, bias, residual, scale, ln_bias):
    x = reference.dropout(y + bias, rate, rng) + residual
    return reference.layer_norm(x.astype(jnp.float32), scale, ln_bias, 1e-12).astype(y.dtype)

  got = _grads(lambda *a: gpu.add_layer_norm(*a, 1e-12, rate, rng), (y, bias, residual, scale, ln_bias), cot)
  _close(got, _grads(ref, (y, bias, residual, scale, ln_bias), cot), tol)
  # the same mask as the reference dropout: an element dropped there has no gradient to y here
  if rate:
    dropped = reference.dropout(jnp.ones(y.shape), rate, rng) == 0
    assert dropped.any() and (np.asarray(got[1][0], np.float32)[np.asarray(dropped)] == 0).all()
