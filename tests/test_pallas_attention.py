"""electra_jax.ops.pallas_attention: the flash-attention kernels equal plain attention in values and gradients.

Runs the kernels through Pallas' interpreter on CPU (small shapes and blocks, so several blocks, padding and causal
skipping are exercised); checks that lowering for TPU emits the Mosaic kernels rather than a fallback, and, where
libtpu is installed, that they compile for a compile-only TPU topology.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax.ops.pallas_attention import flash_attention

F32_TOL = dict(rtol=1e-5, atol=1e-5)
# The interpreted kernels are large CPU programs; these halve their compile time (run time is a few milliseconds).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
BF16_TOL = dict(rtol=2e-2, atol=2e-2)


def reference(q, k, v, key_mask=None, causal=False):
  """The plain form: float32 scores / sqrt(D), masked scores at float32 lowest, softmax, times v."""
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  scores = jnp.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(q.shape[-1])
  keep = jnp.ones(scores.shape, bool)
  if key_mask is not None:
    keep = keep & key_mask.astype(bool)[:, None, None, :]
  if causal:
    keep = keep & (jnp.arange(k.shape[1])[None, :] <= jnp.arange(q.shape[1])[:, None])
  scores = jnp.where(keep, scores, jnp.finfo(jnp.float32).min)
  return jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(scores, axis=-1), v)


def _inputs(batch, q_len, length, heads=2, dim=16, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v, w = (jnp.asarray(rng.normal(size=s), jnp.float32)
                for s in [(batch, q_len, heads, dim), (batch, length, heads, dim), (batch, length, heads, dim),
                          (batch, q_len, heads, dim)])
  return q.astype(dtype), k.astype(dtype), v.astype(dtype), w


def _ragged_mask(length, lengths):
  """[B, L] padding mask: example b attends to its first lengths[b] keys (0 = an empty example)."""
  return jnp.asarray(np.arange(length)[None, :] < np.asarray(lengths)[:, None])


def _value_and_grads(fn, q, k, v, w):
  """Jitted (output, (dq, dk, dv)) of sum(fn(q, k, v) * w)."""
  def loss(q, k, v):
    out = fn(q, k, v)
    return jnp.sum(out.astype(jnp.float32) * w), out
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), compiler_options=FAST_COMPILE)
  (_, out), grads = step(q, k, v)
  return out, grads


def _check(q, k, v, w, key_mask=None, causal=False, tol=F32_TOL, **kw):
  kw.setdefault("interpret", True)
  out, grads = _value_and_grads(lambda q, k, v: flash_attention(q, k, v, key_mask, causal=causal, **kw), q, k, v, w)
  ref_out, ref_grads = _value_and_grads(lambda q, k, v: reference(q, k, v, key_mask, causal), q, k, v, w)
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, **tol, err_msg="output")
  for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
    assert g.dtype == q.dtype
    assert np.all(np.isfinite(np.asarray(g, np.float32))), name
    np.testing.assert_allclose(np.asarray(g, np.float32), ref_g, **tol, err_msg=name)
  return out, grads


def test_no_mask_whole_blocks():
  _check(*_inputs(2, 32, 32), block_q=16, block_k=16)


def test_ragged_padding_mask_lengths_not_multiple_of_block():
  """Ragged key padding, L = 37 over blocks of 16 (key padding inside), Lq = 29 over blocks of 8, and an empty
  example whose rows have no key: those average v uniformly over all keys, as the plain form does."""
  q, k, v, w = _inputs(3, 29, 37)
  mask = _ragged_mask(37, [37, 20, 0])
  out, (dq, dk, dv) = _check(q, k, v, w, mask, block_q=8, block_k=16)
  np.testing.assert_allclose(out[2], jnp.broadcast_to(v[2].mean(axis=0), out[2].shape), **F32_TOL)
  np.testing.assert_array_equal(dq[2], 0.0)
  np.testing.assert_array_equal(dk[2], 0.0)
  np.testing.assert_allclose(dv[2], jnp.broadcast_to(w[2].sum(axis=0) / 37, dv[2].shape), **F32_TOL)


def test_causal_no_mask_with_padding():
  _check(*_inputs(2, 37, 37), causal=True, block_q=8, block_k=16)


def test_causal_with_mask_and_rows_without_keys():
  """Causal with a key mask that hides the first keys of example 1 (its first 20 queries see no key, so the kernel
  must visit key blocks above the diagonal for them) and an empty example 2; Lq < L."""
  q, k, v, w = _inputs(3, 30, 37)
  mask = np.array(_ragged_mask(37, [33, 37, 0]))
  mask[1, :20] = False
  _check(q, k, v, w, jnp.asarray(mask), causal=True, block_q=8, block_k=16)


def test_fewer_queries_than_keys():
  """ELECTRA's last layer: queries at the first n positions against all keys (n = 1 for [CLS], and n = 9)."""
  mask = _ragged_mask(40, [40, 23])
  for q_len in (1, 9):
    _check(*_inputs(2, q_len, 40, seed=q_len), key_mask=mask, block_q=8, block_k=16)


def test_bfloat16_inputs():
  q, k, v, w = _inputs(2, 24, 40, dtype=jnp.bfloat16)
  _check(q, k, v, w, _ragged_mask(40, [40, 17]), tol=BF16_TOL, block_q=8, block_k=16)


def test_default_blocks_pick_the_interpreter_on_cpu():
  """interpret=None with the default blocks: one block per sequence, run by the interpreter when lowering for CPU;
  a float 0/1 mask works like a boolean one."""
  q, k, v, w = _inputs(2, 20, 20)
  _check(q, k, v, w, _ragged_mask(20, [20, 11]).astype(jnp.float32), interpret=None)


@pytest.mark.slow
def test_tpu_semantics_interpreter():
  """Pallas' TPU-semantics interpreter, whose scratch and output buffers start as NaN: every accumulator is
  initialised before it is read."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=import-outside-toplevel
  q, k, v, w = _inputs(2, 21, 37, heads=1)
  params = pltpu.InterpretParams(uninitialized_memory="nan")
  _check(q, k, v, w, _ragged_mask(37, [30, 0]), causal=True, block_q=8, block_k=16, interpret=params)


def test_bad_input_is_a_clear_error():
  q, k, v, _ = _inputs(1, 8, 8)
  with pytest.raises(ValueError, match="key_mask must be"):
    flash_attention(q, k, v, jnp.ones((1, 9), bool))
  with pytest.raises(ValueError, match="k and v must be"):
    flash_attention(q, k[:, :, :1], v)
  with pytest.raises(ValueError, match="share a dtype"):
    flash_attention(q, k.astype(jnp.bfloat16), v)
  with pytest.raises(ValueError, match="multiple of 8"):
    flash_attention(q, k, v, block_q=12, interpret=True)
  long_q = jnp.zeros((1, 300, 2, 16))
  with pytest.raises(ValueError, match="multiple of 128"):
    flash_attention(long_q, long_q, long_q, block_q=64)


def _loss_for_tpu(q, k, v, mask):
  return jnp.sum(flash_attention(q, k, v, mask, causal=True).astype(jnp.float32))


def _tpu_args(batch=2, length=256, heads=2, dim=64):
  x = jax.ShapeDtypeStruct((batch, length, heads, dim), jnp.bfloat16)
  return x, x, x, jax.ShapeDtypeStruct((batch, length), jnp.bool_)


def test_lowering_for_tpu_emits_the_mosaic_kernels():
  """interpret=None on a CPU host still lowers the real kernels for TPU (ahead-of-time compilation): forward, dk/dv
  and dq are Mosaic custom calls, and no interpreter loop is left in the program."""
  lowered = jax.jit(jax.grad(_loss_for_tpu, argnums=(0, 1, 2))).trace(*_tpu_args()).lower(
      lowering_platforms=("tpu",))
  text = lowered.as_text()
  assert text.count("stablehlo.custom_call @tpu_custom_call") == 3
  for name in ("flash_attention_fwd", "flash_attention_dkv", "flash_attention_dq"):
    assert name in text
  assert "stablehlo.while" not in text
  cpu_text = jax.jit(_loss_for_tpu).trace(*_tpu_args()).lower(lowering_platforms=("cpu",)).as_text()
  assert "tpu_custom_call" not in cpu_text and "stablehlo.while" in cpu_text


@pytest.mark.slow
def test_compiles_for_a_tpu_topology():
  """With libtpu installed (the tpu-aot extra): Mosaic compiles forward + backward for a compile-only v5e chip."""
  pytest.importorskip("libtpu")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  device = topologies.get_topology_desc("v5e:2x2", platform="tpu").devices[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in _tpu_args()]
  compiled = jax.jit(jax.grad(_loss_for_tpu, argnums=(0, 1, 2))).trace(*args).lower().compile()
  assert compiled.as_text().count("custom_call_target=\"tpu_custom_call\"") == 3
