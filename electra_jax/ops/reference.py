"""The reference form of every op: plain jax.numpy, gradients by autodiff.

What the tuned forms (xla_cpu.py, gpu.py, tpu.py) must equal in values and gradients
(tests/test_ops.py), and what runs wherever no tuned form is chosen (`kernels="reference"`, or `auto` on a platform
without one).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout: each element kept with probability 1 - rate and scaled by 1 / (1 - rate); x itself when rng is
  None or rate is 0."""
  if rng is None or rate == 0.0:
    return x
  with jax.named_scope("dropout_mask"):   # names the random-bit ops in profiles (benchmarks/profile_step.py)
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """x [N, in] @ kernel [in, out]."""
  return jnp.dot(x, kernel)


def tied_logits(x: jax.Array, table: jax.Array, bias: jax.Array) -> jax.Array:
  """x [N, E] @ table [V, E]^T + bias [V]: an output layer whose kernel is an embedding table."""
  return jnp.dot(x, table.T) + bias


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def gelu(x: jax.Array) -> jax.Array:
  """The exact GELU in torch's form (what HF's "gelu" runs): x / 2 * (1 + erf(x / sqrt 2))."""
  return x * 0.5 * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))


def attention_mask(key_mask: jax.Array | None, causal: bool, queries: int, keys: int) -> jax.Array | None:
  """The boolean (query, key) mask of a key mask [B, L] (True: a key the queries may attend to) and the causal flag
  (query i attends the keys j <= i), broadcastable to [B, 1, Lq, L]; None when neither masks anything."""
  mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
  if causal:
    tril = jnp.tril(jnp.ones((queries, keys), bool))[None, None]
    mask = tril if mask is None else mask & tril
  return mask


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, causal: bool = False,
              dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None, *, drop=dropout) -> jax.Array:
  """softmax(q k^T / sqrt(D), masked) v, the probabilities dropped out with `drop` (this module's dropout unless a
  tuned form passes its own). q [B, Lq, N, D] (the queries of the first Lq positions), k and v [B, L, N, D],
  key_mask boolean [B, L] or None (True: a key the queries may attend to), causal: query i attends the keys j <= i
  -> [B, Lq, N, D] in q's dtype. Scores and softmax in float32; a query with no key to attend to averages all of v."""
  scores = jnp.einsum("bqnd,bknd->bnqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  mask = attention_mask(key_mask, causal, q.shape[1], k.shape[1])
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = drop(jax.nn.softmax(scores, axis=-1), dropout_rate, dropout_rng).astype(q.dtype)
  return jnp.einsum("bnqk,bknd->bqnd", probs, v)


def cross_entropy_rows(x: jax.Array, targets: jax.Array) -> jax.Array:
  """logsumexp(x) - x[target] for each row of x [R, V] (float32) and targets [R] (int)."""
  return jax.nn.logsumexp(x, axis=-1) - jnp.take_along_axis(x, targets[:, None], 1)[:, 0]
