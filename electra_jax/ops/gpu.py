"""GPU forms: attention through cuDNN's fused (flash) kernel (`kernels="cudnn"`, what `auto` picks on GPU).

cuDNN's kernel never materialises the [B, N, Lq, L] probabilities, so it has no probability dropout: it serves calls
whose attention dropout is off (inference, or attention_probs_dropout_prob = 0); `auto` gives the others the
reference attention. It runs bfloat16 / float16 operands with a head size that is a multiple of 8, up to 128.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp

# the forward (and its residuals xhat, rstd, scale) is xla_cpu's; the backward below reduces differently
from electra_jax.ops.xla_cpu import _layer_norm_fwd

DTYPES = (jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 128   # 256 on Hopper and later; the smaller bound holds on every GPU cuDNN's flash attention runs on


def supports(q: jax.Array) -> bool:
  """Whether cuDNN's fused attention takes operands like q [B, Lq, N, D] (dtype, head size)."""
  return any(q.dtype == d for d in DTYPES) and q.shape[-1] % 8 == 0 and q.shape[-1] <= MAX_HEAD_DIM


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, causal: bool) -> jax.Array:
  """reference.attention without dropout: q [B, Lq, N, D], k and v [B, L, N, D], key_mask boolean [B, L] or None,
  causal (query i attends the keys j <= i) -> [B, Lq, N, D].

  The causal flag goes to cuDNN as its own causal mask (`is_causal`: the masked blocks are skipped, not computed).
  The key mask goes as a boolean mask of the full [B, 1, Lq, L] shape (broadcast over the heads only), which cuDNN
  applies as a bias: any 0/1 key mask, not only right padding (what `key_value_seq_lengths` would take). In training
  cuDNN takes query and key lengths that are even: an odd one (the [CLS]-only last layer has Lq = 1) gets one padding
  row, a query attending to key 0 or a key no query attends to, sliced off the output.
  """
  if not supports(q):
    raise ValueError(f"kernels='cudnn': cuDNN's fused attention runs bfloat16 or float16 operands with a head size "
                     f"that is a multiple of 8 up to {MAX_HEAD_DIM}, got {q.dtype} and {q.shape[-1]}; set "
                     f"dtype=bfloat16 or kernels=auto")
  b, lq, _, _ = q.shape
  length = k.shape[1]
  pad_q, pad_k = lq % 2, length % 2
  mask = None
  if key_mask is not None or pad_q or pad_k:
    keys = jnp.ones((b, length), bool) if key_mask is None else jnp.broadcast_to(key_mask.astype(bool), (b, length))
    mask = jnp.broadcast_to(keys[:, None, None, :], (b, 1, lq, length))
  if pad_k:
    k, v = (jnp.pad(t, ((0, 0), (0, 1), (0, 0), (0, 0))) for t in (k, v))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, 1)), constant_values=False)
  if pad_q:
    q = jnp.pad(q, ((0, 0), (0, 1), (0, 0), (0, 0)))
    row = jnp.zeros((b, 1, 1, mask.shape[-1]), bool).at[..., 0].set(True)
    mask = jnp.concatenate([mask, row], axis=2)
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")
  return out[:, :lq]


# ------------------------------------------------------------------------------------------------ fewer launches
# The forms below compute their reference forms' values; what differs is the number of kernels XLA's GPU backend
# launches for them: each bias or LayerNorm parameter gradient is a reduction over every token, which XLA splits in
# two kernels (a tree), and autodiff gives each its own. Counted with launch/gpu_aot.py (benchmarks/README.md, "GPU
# launches").
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """reference.layer_norm with its backward written out: dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat)),
  gs = g * scale (two row reductions, one pass), and the scale and bias gradients as ONE reduction over the tokens of
  [g * xhat, g] side by side, where autodiff made two of each."""
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_bwd(eps, res, g):
  del eps
  xhat, rstd, scale = res
  gs = g * scale
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  sums = column_sums(jnp.concatenate([g * xhat, g], axis=-1))
  h = scale.shape[-1]
  return dx, sums[:h].reshape(scale.shape), sums[h:].reshape(scale.shape)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def column_sums(x: jax.Array) -> jax.Array:
  """x [..., C] summed over every axis but the last -> [C], in x's dtype (accumulated in float32)."""
  return jnp.sum(x.reshape(-1, x.shape[-1]), axis=0, dtype=jnp.float32).astype(x.dtype)


@jax.custom_vjp
def dense_group(x: jax.Array, kernels: tuple[jax.Array, ...], biases: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """(x @ kernel_i + bias_i for each i): x [N, in], kernels [in, out_i], biases [out_i] (the attention's query, key and
  value of one input). Forward a product per kernel, each with its bias (a cuBLAS epilogue, outputs where their
  consumers want them); backward the output gradients side by side: one product for the input's gradient and one for
  the kernels' and the biases' together, where autodiff made a product for each and a reduction for each bias."""
  return _dense_group_fwd(x, kernels, biases)[0]


def _dense_group_fwd(x, kernels, biases):
  return tuple(jnp.dot(x, k) + b for k, b in zip(kernels, biases)), (x, kernels)


def _dense_group_bwd(res, dys):
  x, kernels = res
  dy = jnp.concatenate(dys, axis=-1)
  kernel = jnp.concatenate(kernels, axis=-1)
  dx = jnp.dot(dy, kernel.T).astype(x.dtype)
  # The kernels' and the biases' gradients as one product: [x, 1]^T dy (the ones column's row is the sum over the
  # tokens; seven zero columns keep the operand's width a multiple of 8).
  n, width = x.shape
  ones = jnp.zeros((n, 8), x.dtype).at[:, 0].set(1)
  both = jnp.dot(jnp.concatenate([x, ones], axis=-1).T, dy, preferred_element_type=jnp.float32)
  dkernel, dbias = both[:width].astype(kernel.dtype), both[width].astype(dy.dtype)
  edges = list(itertools.accumulate(k.shape[-1] for k in kernels))[:-1]
  return dx, tuple(jnp.split(dkernel, edges, axis=-1)), tuple(jnp.split(dbias, edges, axis=-1))


dense_group.defvjp(_dense_group_fwd, _dense_group_bwd)


def add_layer_norm(y: jax.Array, bias: jax.Array, residual: jax.Array, scale: jax.Array, ln_bias: jax.Array,
                   eps: float, rate: float, rng: jax.Array | None) -> jax.Array:
  """reference.layer_norm(reference.dropout(y + bias) + residual) in float32, cast back to y's dtype: the end of a
  post-LN sublayer (its output Dense's bias, dropout, residual, LayerNorm). Backward, the Dense's bias gradient joins
  the LayerNorm's scale and bias gradients in one reduction over the tokens."""
  keep = None
  if rng is not None and rate > 0.0:
    with jax.named_scope("dropout_mask"):   # the mask reference.dropout draws
      keep = jax.random.bernoulli(rng, 1.0 - rate, y.shape)
  return _add_layer_norm(y, bias, residual, scale, ln_bias, keep, eps, rate)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _add_layer_norm(y, bias, residual, scale, ln_bias, keep, eps, rate):
  return _add_layer_norm_fwd(y, bias, residual, scale, ln_bias, keep, eps, rate)[0]


def _dropped(v, keep, rate):
  return v if keep is None else jnp.where(keep, v / (1.0 - rate), jnp.zeros_like(v))


def _add_layer_norm_fwd(y, bias, residual, scale, ln_bias, keep, eps, rate):
  x = (_dropped(y + bias, keep, rate) + residual).astype(jnp.float32)
  out, (xhat, rstd, _) = _layer_norm_fwd(x, scale, ln_bias, eps)
  dtypes = (jnp.zeros((0,), y.dtype), jnp.zeros((0,), residual.dtype))   # (a residual is an array)
  return out.astype(y.dtype), (xhat, rstd, scale, keep, dtypes)


def _add_layer_norm_bwd(eps, rate, res, g):
  del eps
  xhat, rstd, scale, keep, (y_dtype, residual_dtype) = res
  y_dtype, residual_dtype = y_dtype.dtype, residual_dtype.dtype
  g = g.astype(jnp.float32)
  gs = g * scale
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  dx = dx.astype(y_dtype)   # the gradient of x's cast to float32: x's dtype
  dy = _dropped(dx, keep, rate)
  h = scale.shape[-1]
  sums = column_sums(jnp.concatenate([g * xhat, g, dy.astype(jnp.float32)], axis=-1))
  dbias = sums[2 * h:].astype(y_dtype)
  return (dy, dbias, dx.astype(residual_dtype), sums[:h].reshape(scale.shape), sums[h:2 * h].reshape(scale.shape),
          None)


_add_layer_norm.defvjp(_add_layer_norm_fwd, _add_layer_norm_bwd)
