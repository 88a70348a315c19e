"""electra_jax.ops: every tuned form against the reference form, values and gradients; the choice of forms.

The CPU runs the "xla_cpu" forms (what `auto` picks here), the reference, and splash attention in Pallas' interpret
mode; the cuDNN test runs where a GPU is. Each test of a tuned form also asserts that the tuned form ran (its kernel in
the traced program), so that a silent fallback to the reference cannot pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from electra_jax import ops
from electra_jax.modeling import ConfigError, ElectraConfig
from electra_jax.ops import gpu, reference, xla_cpu

TUNED_ON_CPU = ["xla_cpu"]   # the tuned forms this platform can run, each held to the reference
# What each fused attention puts in the traced program (forward; backward): splash's Pallas kernels, cuDNN's primitives
KERNEL_MARKS = {"splash": (("splash_mha_fwd",), ("splash_mha_dq", "splash_mha_dkv")),
                "cudnn": (("dot_product_attention_fwd",), ("dot_product_attention_bwd",))}


def _tpu_mesh():
  """An abstract mesh of TPU devices, as launch/tpu_aot.py sets while it compiles for a TPU on a CPU host."""
  device = jax.sharding.AbstractDevice("TPU v5 lite", None, "tpu")
  return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("data",), abstract_device=device))


def _grads(fn, args, cot, argnums):
  return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cot), argnums))(*args)


def _assert_close(got, want, rel=2e-5):
  assert got.shape == want.shape and got.dtype == want.dtype
  scale = float(jnp.max(jnp.abs(want))) or 1.0
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=rel * scale, rtol=0)


# ------------------------------------------------------------------------------------------------ choice of forms
def test_auto_resolves_by_the_platform_being_compiled_for():
  default = jax.default_backend()   # the CPU (tests/conftest.py), unless JAX_PLATFORMS names a GPU first
  assert ops.resolve("auto") == {"cpu": "xla_cpu", "gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}[default]
  with _tpu_mesh():   # a TPU compile on a CPU host must not get the CPU forms
    assert ops.resolve("auto") == "splash"
  for name in ("reference", "xla_cpu", "cudnn", "splash"):
    assert ops.resolve(name) == name
  with pytest.raises(ValueError, match="kernels='fast'"):
    ops.resolve("fast")


def _jaxpr(fn, *args) -> str:
  return str(jax.make_jaxpr(fn)(*args))


def _has_barrier(fn, *args) -> bool:
  return "optimization_barrier" in _jaxpr(fn, *args)


def _ran(kernels: str, fn, *args, backward: bool = False) -> bool:
  """Whether the traced program of fn(*args) holds every forward (or backward) kernel of the fused attention."""
  text = _jaxpr(fn, *args)
  return all(mark in text for mark in KERNEL_MARKS[kernels][backward])


def test_cpu_forms_only_where_compiling_for_cpu():
  x, w = jnp.ones((40, 48)), jnp.ones((48, 16))   # in > out: the CPU form swaps the kernel gradient's orientation
  dense_grad = lambda kernels: jax.grad(lambda a: jnp.sum(ops.dense(x, a, kernels=kernels)))  # noqa: E731
  q = jnp.ones((2, 5, 2, 8))
  key_mask = jnp.ones((2, 5), bool)
  attend = lambda kernels: lambda a: ops.attention(a, a, a, key_mask, kernels=kernels)  # noqa: E731
  assert _has_barrier(dense_grad("auto"), w) and _has_barrier(attend("auto"), q)
  assert not _has_barrier(dense_grad("reference"), w) and not _has_barrier(attend("reference"), q)
  assert not _ran("splash", attend("auto"), q)
  with _tpu_mesh():
    assert not _has_barrier(dense_grad("auto"), w) and not _has_barrier(attend("auto"), q)
    assert _ran("splash", attend("auto"), q)
    assert _has_barrier(dense_grad("xla_cpu"), w)   # named explicitly, the CPU forms run anywhere


def test_auto_on_tpu_takes_splash_only_without_attention_dropout():
  q = jnp.ones((2, 5, 2, 8), jnp.bfloat16)
  key_mask = jnp.ones((2, 5), bool).at[1, 3:].set(False)
  attend = lambda rate, rng: lambda a: ops.attention(a, a, a, key_mask, causal=True, dropout_rate=rate,  # noqa: E731
                                                     dropout_rng=rng)
  with _tpu_mesh():
    assert _ran("splash", attend(0.0, jax.random.key(0)), q)   # training without attention dropout
    assert _ran("splash", attend(0.1, None), q)                # inference
    assert _ran("splash", jax.grad(lambda a: jnp.sum(attend(0.0, None)(a))), q, backward=True)
    assert not _ran("splash", attend(0.1, jax.random.key(0)), q)   # attention dropout: the reference attention
    assert "splash" not in _jaxpr(attend(0.1, jax.random.key(0)), q)


def test_explicit_fused_attention_refuses_attention_dropout():
  q = jnp.ones((2, 5, 2, 8), jnp.bfloat16)
  key_mask = jnp.ones((2, 5), bool)
  for kernels in ("cudnn", "splash"):
    with pytest.raises(ValueError, match=f"attention_probs_dropout_prob must be 0 for kernels='{kernels}'"):
      ops.attention(q, q, q, key_mask, dropout_rate=0.1, dropout_rng=jax.random.key(0), kernels=kernels)
  with pytest.raises(ValueError, match="float32"):
    ops.attention(q.astype(jnp.float32), q, q, key_mask, kernels="cudnn")
  with pytest.raises(ValueError, match="kernels='pallas'"):   # the hand-written Pallas kernel is gone
    ops.attention(q, q, q, key_mask, kernels="pallas")


def test_config_refuses_fused_attention_with_attention_dropout():
  for kernels in ("cudnn", "splash"):
    with pytest.raises(ConfigError) as e:
      ElectraConfig(kernels=kernels, dtype="bfloat16", attention_probs_dropout_prob=0.1)
    assert (f"attention_probs_dropout_prob must be 0 for kernels='{kernels}'" in str(e.value)
            and "--config.model.attention_probs_dropout_prob=0 or kernels=auto" in str(e.value))
    ElectraConfig(kernels=kernels, dtype="bfloat16", attention_probs_dropout_prob=0.0)
  with pytest.raises(ConfigError, match="bfloat16 or float16"):
    ElectraConfig(kernels="cudnn", attention_probs_dropout_prob=0.0)   # float32
  with pytest.raises(ConfigError, match="kernels='fast'"):
    ElectraConfig(kernels="fast")
  cfg = ElectraConfig(kernels="reference")
  assert "kernels" not in cfg.to_hf_dict()   # runtime only
  assert ElectraConfig.from_hf_dict(cfg.to_hf_dict(), kernels="xla_cpu").kernels == "xla_cpu"


# ------------------------------------------------------------------------------------------------ dense, tied logits
@pytest.mark.parametrize("form", TUNED_ON_CPU)
@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (24, 24)])
def test_dense_equals_reference_in_either_orientation(form, shape):
  k = jax.random.split(jax.random.key(1), 3)
  x, w = jax.random.normal(k[0], (40, shape[0])), jax.random.normal(k[1], shape)
  cot = jax.random.normal(k[2], (40, shape[1]))
  tuned = lambda a, b: ops.dense(a, b, kernels=form)  # noqa: E731
  _assert_close(tuned(x, w), reference.dense(x, w), 1e-6)
  for got, want in zip(_grads(tuned, (x, w), cot, (0, 1)), _grads(reference.dense, (x, w), cot, (0, 1))):
    _assert_close(got, want)
  # the CPU form takes a kernel gradient with in > out as (g^T x)^T
  assert _has_barrier(jax.grad(lambda a: jnp.sum(tuned(x, a))), w) == (shape[0] > shape[1])


@pytest.mark.parametrize("form", TUNED_ON_CPU)
def test_tied_logits_equal_reference(form):
  k = jax.random.split(jax.random.key(2), 4)
  x, table, bias = jax.random.normal(k[0], (30, 12)), jax.random.normal(k[1], (70, 12)), jax.random.normal(k[2], (70,))
  cot = jax.random.normal(k[3], (30, 70))
  tuned = lambda *a: ops.tied_logits(*a, kernels=form)  # noqa: E731
  _assert_close(tuned(x, table, bias), reference.tied_logits(x, table, bias), 1e-6)
  for got, want in zip(_grads(tuned, (x, table, bias), cot, (0, 1, 2)),
                       _grads(reference.tied_logits, (x, table, bias), cot, (0, 1, 2))):
    _assert_close(got, want)


# ------------------------------------------------------------------------------------------------ layer norm, GELU
@pytest.mark.parametrize("form", TUNED_ON_CPU)
@pytest.mark.parametrize("eps", [1e-12, 1e-3])
def test_layer_norm_equals_reference_and_torch(form, eps):
  k = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k[0], (4, 7, 48)) * 3 + 1
  scale, bias = jax.random.normal(k[1], (48,)), jax.random.normal(k[2], (48,))
  cot = jax.random.normal(k[3], x.shape)
  tuned = lambda *a: ops.layer_norm(*a, eps, kernels=form)  # noqa: E731
  ref = lambda *a: reference.layer_norm(*a, eps)  # noqa: E731
  _assert_close(tuned(x, scale, bias), ref(x, scale, bias), 1e-6)
  got, want = _grads(tuned, (x, scale, bias), cot, (0, 1, 2)), _grads(ref, (x, scale, bias), cot, (0, 1, 2))
  for g, w in zip(got, want):
    _assert_close(g, w)
  # torch's LayerNorm, value and input gradient
  tx = torch.tensor(np.asarray(x), requires_grad=True)
  ty = torch.nn.functional.layer_norm(tx, (48,), torch.tensor(np.asarray(scale)), torch.tensor(np.asarray(bias)), eps)
  (ty * torch.tensor(np.asarray(cot))).sum().backward()
  np.testing.assert_allclose(tuned(x, scale, bias), ty.detach().numpy(), atol=2e-6)
  np.testing.assert_allclose(got[0], tx.grad.numpy(), atol=2e-5)


@pytest.mark.parametrize("form", TUNED_ON_CPU)
def test_layer_norm_gradient_keeps_nan_where_the_reference_has_it(form):
  # A written-out backward hides nothing: a NaN row's gradient is NaN as autodiff's is; the other rows are unaffected.
  x = jnp.arange(3 * 8, dtype=jnp.float32).reshape(3, 8) / 7
  x = x.at[1, 2].set(jnp.nan)
  scale, bias = jnp.linspace(0.5, 1.5, 8), jnp.zeros(8)
  got = jax.grad(lambda v: jnp.sum(ops.layer_norm(v, scale, bias, 1e-12, kernels=form) ** 2))(x)
  want = jax.grad(lambda v: jnp.sum(reference.layer_norm(v, scale, bias, 1e-12) ** 2))(x)
  assert np.isnan(got[1]).all() and np.isnan(want[1]).all()
  np.testing.assert_allclose(np.asarray(got)[[0, 2]], np.asarray(want)[[0, 2]], atol=1e-4)


@pytest.mark.parametrize("form", TUNED_ON_CPU)
def test_gelu_equals_reference(form):
  x = jnp.concatenate([jnp.linspace(-14, 14, 20001), jax.random.normal(jax.random.key(0), (5000,)) * 3])
  tuned = jax.jit(lambda v: ops.gelu(v, kernels=form))
  np.testing.assert_array_equal(tuned(x), jax.jit(reference.gelu)(x))   # the tail select changes no value
  # below -10 the select's gradient is 0 where the formula's is below 1e-21
  np.testing.assert_allclose(jax.jit(jax.grad(lambda v: tuned(v).sum()))(x),
                             jax.jit(jax.grad(lambda v: reference.gelu(v).sum()))(x), rtol=1e-6, atol=1e-20)
  assert tuned(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------------ cross-entropy rows
@pytest.mark.parametrize("form", TUNED_ON_CPU)
@pytest.mark.parametrize("given_lse", [False, True])
def test_cross_entropy_rows_equal_reference(form, given_lse):
  k = jax.random.split(jax.random.key(4), 3)
  x = jax.random.normal(k[0], (19, 301)) * 4
  t = jax.random.randint(k[1], (19,), 0, 301)
  cot = jax.random.normal(k[2], (19,))
  # the caller's logsumexp is a constant (stop_gradient), as pretrain_lib's from softmax_stats
  lse = (lambda v: jax.nn.logsumexp(jax.lax.stop_gradient(v), -1)) if given_lse else (lambda v: None)
  tuned = lambda v: ops.cross_entropy_rows(v, t, lse=lse(v), kernels=form)  # noqa: E731
  ref = lambda v: reference.cross_entropy_rows(v, t)  # noqa: E731
  _assert_close(tuned(x), ref(x), 1e-6)
  _assert_close(_grads(tuned, (x,), cot, 0), _grads(ref, (x,), cot, 0))
  # and torch's cross-entropy
  tx = torch.tensor(np.asarray(x), requires_grad=True)
  want = torch.nn.functional.cross_entropy(tx, torch.tensor(np.asarray(t)).long(), reduction="none")
  (want * torch.tensor(np.asarray(cot))).sum().backward()
  np.testing.assert_allclose(tuned(x), want.detach().numpy(), atol=2e-5)
  np.testing.assert_allclose(_grads(tuned, (x,), cot, 0), tx.grad.numpy(), atol=2e-6)


# ------------------------------------------------------------------------------------------------ attention
def _qkv(queries, keys, dtype=jnp.float32, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(k[0], (3, queries, 2, 8), dtype)
  kk, v = jax.random.normal(k[1], (3, keys, 2, 8), dtype), jax.random.normal(k[2], (3, keys, 2, 8), dtype)
  return q, kk, v, jax.random.normal(k[3], q.shape, dtype)


def _key_mask(keys):
  """Padding in every case: a full row, 5 tokens, 2 tokens (True: attended)."""
  return jnp.asarray([[1] * keys, [1] * 5 + [0] * (keys - 5), [1] * 2 + [0] * (keys - 2)], bool)


# (queries, causal, keys), padding in every case: full, causal, fewer queries than keys (the [CLS]-only last layer
# has 1), odd lengths
ATTENTION_CASES = [(12, False, 12), (12, True, 12), (2, False, 12), (2, True, 12), (1, False, 11), (11, True, 11)]
CASE_IDS = [f"q{q}-k{k}{'-causal' if c else ''}" for q, c, k in ATTENTION_CASES]


def test_attention_mask_of_key_mask_and_causal_flag():
  pad = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
  keep = reference.attention_mask(pad, False, 4, 4)
  assert keep.shape == (2, 1, 1, 4) and keep.dtype == jnp.bool_
  np.testing.assert_array_equal(keep[:, 0, 0], pad)
  causal = reference.attention_mask(pad, True, 2, 4)   # the first 2 queries of 4 positions
  assert causal.shape == (2, 1, 2, 4)
  np.testing.assert_array_equal(causal[1, 0], np.tril(np.ones((2, 4), bool)) & np.array([1, 1, 0, 0], bool))
  assert reference.attention_mask(None, False, 2, 4) is None
  assert reference.attention_mask(None, True, 3, 3).shape == (1, 1, 3, 3)


# two cases in the fast lane (padding; causal with fewer queries than keys), every case in the full suite
REFERENCE_CASES = [pytest.param(*c, id=i, marks=() if i in ("q12-k12", "q2-k12-causal") else pytest.mark.slow)
                   for c, i in zip(ATTENTION_CASES, CASE_IDS)]


@pytest.mark.parametrize("queries,causal,keys", REFERENCE_CASES)
def test_reference_attention_equals_jax_and_torch(queries, causal, keys):
  # The reference against two implementations that take the causal flag themselves (top-left aligned: query i attends
  # the keys j <= i) and the key mask as a broadcast boolean mask.
  q, k, v, _ = _qkv(queries, keys)
  key_mask = _key_mask(keys)
  want = reference.attention(q, k, v, key_mask, causal)
  _assert_close(jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :], is_causal=causal), want, 1e-6)
  t = lambda a: torch.tensor(np.asarray(a)).transpose(1, 2)  # noqa: E731  [B, L, N, D] -> [B, N, L, D]
  mask = torch.tensor(np.asarray(key_mask))[:, None, None, :]
  if causal:
    mask = mask & torch.ones(queries, keys, dtype=torch.bool).tril()
  got = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=mask).transpose(1, 2)
  np.testing.assert_allclose(got.numpy(), want, atol=2e-6)


@pytest.mark.parametrize("form", TUNED_ON_CPU)
@pytest.mark.parametrize("queries,causal,keys", ATTENTION_CASES, ids=CASE_IDS)
def test_attention_equals_reference(form, queries, causal, keys):
  q, k, v, cot = _qkv(queries, keys)
  key_mask = _key_mask(keys)
  tuned = lambda *a: ops.attention(*a, key_mask, causal=causal, kernels=form)  # noqa: E731
  ref = lambda *a: reference.attention(*a, key_mask, causal)  # noqa: E731
  assert _has_barrier(tuned, q, k, v) and not _has_barrier(ref, q, k, v)   # the heads-major form ran
  _assert_close(jax.jit(tuned)(q, k, v), ref(q, k, v), 1e-6)
  for got, want in zip(_grads(tuned, (q, k, v), cot, (0, 1, 2)), _grads(ref, (q, k, v), cot, (0, 1, 2))):
    _assert_close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["reference", *TUNED_ON_CPU])
def test_attention_dropout_is_unbiased_and_follows_the_key(form):
  # Dropout of the probabilities keeps their expectation: the mean over many keys approaches the attention without it.
  q, k, v, _ = _qkv(12, 12)
  mask = _key_mask(12)
  run = jax.jit(lambda rng: ops.attention(q, k, v, mask, dropout_rate=0.2, dropout_rng=rng, kernels=form))
  keys = jax.random.split(jax.random.key(7), 500)
  outs = jax.jit(jax.vmap(run))(keys)
  want = ops.attention(q, k, v, mask, kernels="reference")
  stderr = jnp.std(outs, axis=0) / np.sqrt(len(keys))
  assert float(jnp.max(jnp.abs(jnp.mean(outs, axis=0) - want) / (stderr + 1e-6))) < 6
  np.testing.assert_array_equal(run(keys[0]), run(keys[0]))
  assert not np.array_equal(run(keys[0]), run(keys[1]))
  np.testing.assert_array_equal(ops.attention(q, k, v, mask, dropout_rate=0.2, kernels=form),   # no key: no dropout
                                ops.attention(q, k, v, mask, kernels=form))


# ------------------------------------------------------------------------------------------------ dropout
@pytest.mark.parametrize("form", ["reference", *TUNED_ON_CPU])
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_keeps_at_the_rate_and_scales(form, rate):
  x = jnp.ones((512, 260), jnp.float32)
  y = np.asarray(ops.dropout(x, rate, jax.random.key(0), kernels=form))
  dropped = y == 0
  p = rate if form == "reference" else round(rate * 65536) / 65536   # the CPU form: 16-bit thresholds
  assert abs(dropped.mean() - p) < 5 * np.sqrt(p * (1 - p) / y.size)
  np.testing.assert_allclose(y[~dropped], 1.0 / (1.0 - rate), rtol=1e-6)


@pytest.mark.parametrize("form", ["reference", *TUNED_ON_CPU])
def test_dropout_per_key_identity_without_key_gradient_and_dtype(form):
  x = jax.random.normal(jax.random.key(1), (8, 16, 64))
  drop = lambda v, rate=0.1, rng=jax.random.key(3): ops.dropout(v, rate, rng, kernels=form)  # noqa: E731
  a = drop(x)
  np.testing.assert_array_equal(a, drop(x))
  np.testing.assert_array_equal(a, jax.jit(drop)(x))
  assert not np.array_equal(a, drop(x, rng=jax.random.key(4)))
  assert drop(x, rng=None) is x and drop(x, rate=0.0) is x
  g = jax.grad(lambda v: jnp.sum(drop(v) * 2.0))(x)
  np.testing.assert_allclose(g, np.where(np.asarray(a) != 0, 2.0 / 0.9, 0.0), rtol=1e-6)
  assert drop(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------------ fused attention
def _fused_against_reference(kernels, dtype, queries, causal, keys, rel):
  """Values and gradients of a fused attention against the reference (computed in float32), within `rel` of the
  largest reference value (bfloat16 rounds at 2^-8); the fused kernel must be in the traced program, forward and
  backward."""
  q, k, v, cot = _qkv(queries, keys, dtype)
  key_mask = _key_mask(keys)
  form = kernels.removesuffix("-stand-in")   # a stand-in for the kernel: the caller checks that it ran
  fused = lambda *a: ops.attention(*a, key_mask, causal=causal, kernels=form)  # noqa: E731

  def ref(*a):
    return reference.attention(*(t.astype(jnp.float32) for t in a), key_mask, causal).astype(dtype)

  if kernels in KERNEL_MARKS:
    assert _ran(kernels, fused, q, k, v)
    assert _ran(kernels, lambda *a: _grads(fused, a, cot, (0, 1, 2)), q, k, v, backward=True)
  for got, want in zip((jax.jit(fused)(q, k, v), *_grads(fused, (q, k, v), cot, (0, 1, 2))),
                       (ref(q, k, v), *_grads(ref, (q, k, v), cot, (0, 1, 2)))):
    assert got.dtype == dtype
    want = np.asarray(want, np.float32)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=rel * np.abs(want).max())


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN's fused attention needs a CUDA GPU")
@pytest.mark.parametrize("queries,causal,keys", ATTENTION_CASES, ids=CASE_IDS)
def test_cudnn_attention_equals_reference(queries, causal, keys):
  assert ops.resolve("auto") == "cudnn"
  _fused_against_reference("cudnn", jnp.bfloat16, queries, causal, keys, rel=3e-2)
  q = jnp.ones((1, 1, 1, 64), jnp.bfloat16)
  assert gpu.supports(q) and not gpu.supports(q.astype(jnp.float32)) and not gpu.supports(q[..., :60])


@pytest.mark.slow
@pytest.mark.parametrize("queries,causal,keys", ATTENTION_CASES, ids=CASE_IDS)
def test_cudnn_form_hands_cudnn_what_it_takes(queries, causal, keys, monkeypatch):
  # Everywhere: gpu.attention's own part (the causal flag as cuDNN's own, the key mask as a full [B, 1, Lq, L] array,
  # odd lengths padded to even, the padding sliced off), with XLA's attention standing in for cuDNN's.
  xla_attention = jax.nn.dot_product_attention
  calls = []

  def stand_in(q, k, v, *, mask, is_causal, implementation):
    assert implementation == "cudnn" and q.shape[1] % 2 == 0 and k.shape[1] % 2 == 0 and is_causal == causal
    assert mask.shape == (q.shape[0], 1, q.shape[1], k.shape[1])
    calls.append(q.shape)
    return xla_attention(q, k, v, mask=mask, is_causal=is_causal)

  monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
  _fused_against_reference("cudnn-stand-in", jnp.bfloat16, queries, causal, keys, rel=3e-2)
  assert calls   # the cuDNN form ran (a fallback to the reference would not call it)


@pytest.mark.slow
@pytest.mark.parametrize("queries,causal,keys", [*ATTENTION_CASES, (2, True, 130)],
                         ids=[*CASE_IDS, "q2-k130-causal"])
def test_splash_attention_equals_reference(queries, causal, keys):
  # Interpret mode on CPU: the kernel's own program (blocks, masks, segment ids, its custom backward), lengths padded
  # up to a multiple of 128 (every case here; 130 runs as one block of 256).
  _fused_against_reference("splash", jnp.float32, queries, causal, keys, rel=1e-5)


@pytest.mark.slow
def test_splash_attention_in_bfloat16_and_without_a_key_mask():
  _fused_against_reference("splash", jnp.bfloat16, 12, True, 12, rel=3e-2)
  q, k, v, _ = _qkv(12, 12)
  np.testing.assert_allclose(ops.attention(q, k, v, None, kernels="splash"), reference.attention(q, k, v),
                             atol=1e-5)


@pytest.mark.slow
def test_splash_attention_rows_without_any_key_stay_finite():
  # An all-padding row (a batch filled up with empty examples) has no key to attend to: the reference averages v,
  # splash attends every key instead; finite either way, so a weight of 0 on that row keeps the loss finite.
  q, k, v, _ = _qkv(12, 12)
  key_mask = _key_mask(12).at[2].set(False)
  got = ops.attention(q, k, v, key_mask, kernels="splash")
  assert np.isfinite(np.asarray(got)).all()
  np.testing.assert_allclose(got[:2], reference.attention(q, k, v, key_mask)[:2], atol=1e-5)


def test_xla_cpu_module_is_what_auto_runs_here():
  # The ops' CPU forms are the functions in xla_cpu (tests/test_dropout.py tests their bits).
  x = jnp.ones((4, 8))
  np.testing.assert_array_equal(ops.dropout(x, 0.5, jax.random.key(0)), xla_cpu.dropout(x, 0.5, jax.random.key(0)))


@pytest.mark.slow
def test_splash_attention_runs_per_shard_under_a_mesh():
  """On a (data, fsdp, tensor) mesh the TPU kernel runs on each device's batch and heads (shard_map): values and
  gradients as the reference's on the same sharded operands."""
  from electra_jax import sharding
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  q, k, v, cot = _qkv(8, 12, jnp.float32)
  q, k, v, cot = (jnp.concatenate([t] * 4, axis=0) for t in (q, k, v, cot))   # batch divisible by 4
  key_mask = jnp.ones((q.shape[0], k.shape[1]), bool).at[0, -3:].set(False)
  fused = lambda *a: ops.attention(*a, key_mask, causal=True, kernels="splash")  # noqa: E731
  ref = lambda *a: reference.attention(*a, key_mask, True)  # noqa: E731
  with jax.set_mesh(mesh), sharding.use_rules(None):
    assert "shard_map" in _jaxpr(fused, q, k, v) and _ran("splash", fused, q, k, v)
    got = jax.jit(fused)(q, k, v)
    grads = _grads(fused, (q, k, v), cot, (0, 1, 2))
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref(q, k, v)), atol=1e-5)
  for g, w in zip(grads, _grads(ref, (q, k, v), cot, (0, 1, 2))):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=4e-5)
