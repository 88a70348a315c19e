"""The forms tuned for XLA's CPU backend (`kernels="xla_cpu"`, what `auto` picks on CPU).

Each computes its reference form's values (tests/test_ops.py holds both to it, values and gradients); what differs is
the program XLA's CPU backend gets: threefry written out, several dropout masks per hash, backwards written out so
that products run in the orientation the CPU dot is fast in, selects that keep a pass out of a YNNPACK fusion,
operands copied into the layout the batched products want. Why each one, with the measurements: benchmarks/README.md
(the change number is given at each op).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from electra_jax.ops import reference


# ------------------------------------------------------------------------------------------------ dropout
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def random_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """jax.random.bits(rng, shape, jnp.uint32), bit for bit, with threefry's 20 rounds written out.

  JAX's CPU lowering of threefry is a rolled loop (a pass over memory per round pair); written out, XLA hashes each
  counter in one fusion, as JAX's own TPU/GPU lowering does (benchmarks/README.md). Keys of another
  implementation, the non-partitionable threefry mode and 2^32 elements or more go to jax.random.bits itself.
  """
  words = threefry_words(rng, shape)
  return jax.random.bits(rng, shape, jnp.uint32) if words is None else words[0] ^ words[1]


def threefry_words(rng: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array] | None:
  """Both 32-bit output words of threefry2x32 for each counter (jax.random.bits keeps only their xor), or None for
  keys that `random_bits` hands to jax.random.bits (see there)."""
  n = math.prod(shape)
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  if (not typed or rng.shape or str(jax.random.key_impl(rng)) != "threefry2x32"
      or not jax.config.jax_threefry_partitionable or n >= 2**32):
    return None
  k = jax.random.key_data(rng)
  ks = (k[0], k[1], k[0] ^ k[1] ^ jnp.uint32(0x1BD11BDA))
  # the counter of each element: its flat index (high word 0 below 2^32 elements), as jax.random.bits numbers them
  strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
  count = sum((jax.lax.broadcasted_iota(jnp.uint32, shape, i) * jnp.uint32(st) for i, st in enumerate(strides)),
              jnp.zeros(shape, jnp.uint32))
  x0, x1 = jnp.zeros(shape, jnp.uint32) + ks[0], count + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
      x1 = x0 ^ x1
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def _random_halfwords(rng: jax.Array, shape: tuple[int, ...], parts: int) -> list[jax.Array]:
  """`parts` (1, 2 or 4) independent arrays of 16 random bits (as uint32), each of `shape`: the halves of one 32-bit
  word per element (parts 1 takes the high half), or of both words of one threefry hash (parts 4)."""
  if parts == 4:
    words = threefry_words(rng, shape)
    if words is None:   # other keys: two words of jax.random.bits
      words = tuple(jax.random.bits(rng, (2, *shape), jnp.uint32))
    return [h for w in words for h in (w & 0xFFFF, w >> 16)]
  bits = random_bits(rng, shape)
  return [bits >> 16] if parts == 1 else [bits & 0xFFFF, bits >> 16]


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """reference.dropout with masks from 16 random bits, four per threefry hash (benchmarks/README.md).

  Each element is dropped when its 16 bits fall below round(rate * 2^16) (rate 0.1: drop probability 0.1000061).
  One hash (`threefry_words`: two 32-bit words) gives the masks of four elements, one in each quarter of the last
  axis; a last axis not divisible by 4 takes one 32-bit word (jax.random.bits' xor of the two) per two elements, or
  per element when odd. The same key gives the same mask on every platform.
  """
  if rng is None or rate == 0.0:
    return x
  threshold = jnp.uint32(round(rate * 65536))
  *lead, d = x.shape
  scale = jnp.asarray(1.0 / (1.0 - rate), x.dtype)
  parts = 4 if d % 4 == 0 else 2 if d % 2 == 0 else 1
  with jax.named_scope("dropout_mask"):   # names the random-bit ops in profiles (benchmarks/profile_step.py)
    keep = jnp.concatenate([h >= threshold for h in _random_halfwords(rng, (*lead, 1, d // parts), parts)], axis=-2)
  return _keep_scaled(x.reshape(*lead, parts, d // parts), keep, scale).reshape(x.shape)


@jax.custom_vjp
def _keep_scaled(x: jax.Array, keep: jax.Array, scale: jax.Array) -> jax.Array:
  """where(keep, x * scale, 0), its gradient in the same form: autodiff's where(keep, g, 0) * scale let XLA pull the
  multiply into the next YNNPACK fusion with `scale` materialised at full size (benchmarks/README.md)."""
  return jnp.where(keep, x * scale, jnp.zeros_like(x))


def _keep_scaled_fwd(x, keep, scale):
  return _keep_scaled(x, keep, scale), (keep, scale)


def _keep_scaled_bwd(res, g):
  keep, scale = res
  return jnp.where(keep, g * scale, jnp.zeros_like(g)), None, None


_keep_scaled.defvjp(_keep_scaled_fwd, _keep_scaled_bwd)


# ------------------------------------------------------------------------------------------------ products
@jax.custom_vjp
def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [N, in] @ kernel [in, out]; a kernel with in > out takes its gradient as (g^T x)^T, not x^T g.

  XLA's CPU backend runs the kernel gradient's token contraction itself (not through YNNPACK), fast only when the
  result has no more rows than columns (benchmarks/README.md). The barrier keeps XLA from folding the
  transpose back into the product.
  """
  return jnp.dot(x, kernel)


def _dense_fwd(x, kernel):
  return jnp.dot(x, kernel), (x, kernel)


def _dense_bwd(res, g):
  x, kernel = res
  dx = jax.lax.dot_general(g, kernel, (((1,), (1,)), ((), ())))            # g @ kernel^T
  tokens = (((0,), (0,)), ((), ()))
  if kernel.shape[0] > kernel.shape[1]:
    dk = jax.lax.optimization_barrier(jax.lax.dot_general(g, x, tokens)).T   # (g^T x)^T
  else:
    dk = jax.lax.dot_general(x, g, tokens)                                   # x^T g
  return dx, dk


dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def tied_logits(x: jax.Array, table: jax.Array, bias: jax.Array) -> jax.Array:
  """x [N, E] @ table [V, E]^T + bias [V], the table's and the bias's gradients from ONE product [x, 1]^T @ g.

  Left to autodiff, XLA's CPU backend ran the table's gradient as a slow transposing dot_general and the bias's as a
  column reduction over the [N, V] logit gradient (benchmarks/README.md).
  """
  return jnp.dot(x, table.T) + bias


def _tied_logits_fwd(x, table, bias):
  return tied_logits(x, table, bias), (x, table)


def _tied_logits_bwd(res, g):
  x, table = res
  dx = jnp.dot(g, table)
  x1 = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
  # The barrier keeps XLA from folding the transpose back into the product (which would make it the slow one again).
  dt = jnp.dot(jax.lax.optimization_barrier(x1.T), g)                        # [E + 1, V]: table^T rows, then bias
  return dx, dt[:-1].T.astype(table.dtype), dt[-1].astype(g.dtype)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


# ------------------------------------------------------------------------------------------------ elementwise and rows
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """reference.layer_norm (two-pass variance) with its backward written out from the saved xhat and rstd:
  dx = rstd * (gs - mean(gs) - xhat * mean(gs * xhat)), gs = g * scale, two row reductions and one elementwise pass
  where autodiff's chain made several (benchmarks/README.md)."""
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  xc = x - jnp.mean(x, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)
  xhat = xc * rstd
  return xhat * scale + bias, (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, g):
  del eps
  xhat, rstd, scale = res
  lead = tuple(range(g.ndim - 1))
  # A select that changes no value (rstd > 0; a NaN rstd takes the g * scale branch): it keeps this pass out of a
  # YNNPACK fusion that would write `scale` broadcast to [tokens, hidden] (benchmarks/README.md).
  gs = jnp.where(rstd < 0, 0.0, g * scale)
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True) - xhat * jnp.mean(gs * xhat, axis=-1, keepdims=True))
  return dx, jnp.sum(g * xhat, axis=lead).reshape(scale.shape), jnp.sum(g, axis=lead).reshape(scale.shape)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def gelu(x: jax.Array) -> jax.Array:
  """reference.gelu plus a select that changes no value (below -10 the formula is already 0): XLA's CPU backend does
  not pull a select into a YNNPACK matmul fusion, which otherwise took the whole FFN (dot, GELU, dot) with GELU's
  constants materialised at full size (benchmarks/README.md)."""
  y = x * 0.5 * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))
  return jnp.where(x < -10.0, jnp.zeros_like(y), y)


@jax.custom_vjp
def cross_entropy_rows(x: jax.Array, targets: jax.Array, lse: jax.Array) -> jax.Array:
  """lse - x[target] per row of x [R, V], lse the rows' logsumexp (a constant), with the gradient softmax(x) - one_hot
  as one elementwise pass over [R, V] (autodiff of logsumexp and of a one-hot product made three;
  benchmarks/README.md)."""
  return _cross_entropy_rows_fwd(x, targets, lse)[0]


def _cross_entropy_rows_fwd(x, targets, lse):
  return lse - jnp.take_along_axis(x, targets[:, None], 1)[:, 0], (x, targets, lse)


def _cross_entropy_rows_bwd(res, g):
  # The target by comparison with an iota: no scatter. lse is a statistic of x: the full derivative is the one above.
  x, targets, lse = res
  one_hot = jax.lax.broadcasted_iota(targets.dtype, x.shape, 1) == targets[:, None]
  return g[:, None] * (jnp.exp(x - lse[:, None]) - one_hot), None, None


cross_entropy_rows.defvjp(_cross_entropy_rows_fwd, _cross_entropy_rows_bwd)


# ------------------------------------------------------------------------------------------------ attention
def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, causal: bool = False,
              dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
  """reference.attention: with probability dropout, spelled out with this module's dropout; without, on heads-major
  copies (`attention_heads_major`)."""
  if dropout_rng is None or dropout_rate == 0.0:
    return attention_heads_major(q, k, v, reference.attention_mask(key_mask, causal, q.shape[1], k.shape[1]))
  return reference.attention(q, k, v, key_mask, causal, dropout_rate, dropout_rng, drop=dropout)


def attention_heads_major(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
  """softmax(q k^T / sqrt(D)) v (mask: reference.attention_mask's) as batched products on operands copied into
  heads-major order first (q and v [B, N, L, D], k [B, N, D, L]; barriers keep the copies), the softmax normalised
  after the value product, on [.., Lq, D] instead of [.., Lq, L] (flash attention's order).
  jax.nn.dot_product_attention left the layouts to XLA, which copied k and v and transposed the output back, and fused
  the normalised probabilities into a slow value product (benchmarks/README.md). The same values up
  to float rounding."""
  bar = jax.lax.optimization_barrier
  dtype = q.dtype
  qh, kt, vh = bar(q.transpose(0, 2, 1, 3)), bar(k.transpose(0, 2, 3, 1)), bar(v.transpose(0, 2, 1, 3))
  scores = jnp.matmul(qh, kt, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  out = jnp.matmul(e.astype(dtype), vh) / jnp.sum(e, axis=-1, keepdims=True)
  return out.astype(dtype).transpose(0, 2, 1, 3)
