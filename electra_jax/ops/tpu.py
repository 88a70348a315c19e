"""TPU forms: attention through JAX's splash attention (`kernels="splash"`, what `auto` picks on TPU).

Splash attention (jax.experimental.pallas.ops.tpu.splash_attention) is the block-sparse flash-attention kernel that
JAX ships for TPU training. It never materialises the [B, N, Lq, L] probabilities, so it has no probability dropout:
it serves calls whose attention dropout is off (inference, or attention_probs_dropout_prob = 0); `auto` gives the
others the reference attention. Masks reach it in its own terms: the causal flag as its static CausalMask (whole
blocks above the diagonal are skipped), the key mask as segment ids (keys 1 where attended, 0 where masked).

Its blocks are multiples of 128 (the TPU's lane width), and the sequence lengths must be multiples of the blocks:
lengths that are not (the [CLS]-only last layer has 1 query; any odd length) are padded up to the next multiple of 128
with keys that no query attends to (segment 0) and queries that are sliced off the output, so every length runs in
the kernel. ELECTRA's 128 and 512 need no padding. Off a TPU (tests on CPU), the kernel runs in Pallas' interpret mode.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from electra_jax import sharding

LANES = 128                 # splash's blocks are multiples of the TPU's lane width
BLOCKS = (512, 256, 128)    # the largest that divides the (padded) length is used
KERNEL_NAMES = ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv")   # prefixes of its Mosaic kernels' names


def padded_length(length: int) -> int:
  """The length the kernel runs at: `length` rounded up to a multiple of 128."""
  return -(-length // LANES) * LANES


def block_size(length: int) -> int:
  """The block size for a padded length: the largest of 512, 256, 128 that divides it."""
  return next(b for b in BLOCKS if length % b == 0)


def make_kernel(heads: int, queries: int, keys: int, causal: bool, interpret: bool):
  """splash's multi-head kernel for [heads, queries, D] x [heads, keys, D] operands (lengths multiples of 128)."""
  mask = splash.CausalMask((queries, keys)) if causal else splash.FullMask((queries, keys))
  bq, bk = block_size(queries), block_size(keys)
  sizes = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                            block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  return splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, interpret=interpret)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, causal: bool, *,
              interpret: bool = False) -> jax.Array:
  """reference.attention without dropout: q [B, Lq, N, D], k and v [B, L, N, D], key_mask boolean [B, L] or None,
  causal (query i attends the keys j <= i) -> [B, Lq, N, D] in q's dtype.

  Runs on each device's slice of the batch and the heads under the mesh in context (shard_map: XLA cannot partition
  a Mosaic call itself, and would gather the operands onto every device). A query with no key to attend to (an
  all-padding row) attends every key instead: finite values, not the reference's average of v.
  """
  b, length = q.shape[0], k.shape[1]
  keys = jnp.ones((b, length), bool) if key_mask is None else jnp.broadcast_to(key_mask.astype(bool), (b, length))
  return _per_shard(lambda *a: _attention(*a, causal=causal, interpret=interpret), q, k, v, keys)


def _attention(q, k, v, keys, *, causal, interpret):
  b, lq, n, d = q.shape
  length = k.shape[1]
  pq, pk = padded_length(lq), padded_length(length)
  heads_major = lambda t, pad: jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)  # noqa: E731
  qh = heads_major(q * jnp.asarray(1 / math.sqrt(d), q.dtype), pq - lq)   # splash does not scale the scores
  kh, vh = heads_major(k, pk - length), heads_major(v, pk - length)
  kv_ids = jnp.pad(keys, ((0, 0), (0, pk - length))).astype(jnp.int32)   # 1: attended; 0: masked or padding
  # every query of a row is segment 1; a row without any attended key is segment 0 throughout (no empty softmax)
  q_ids = jnp.broadcast_to(jnp.any(keys, axis=1, keepdims=True), (b, pq)).astype(jnp.int32)
  kernel = make_kernel(n, pq, pk, causal, interpret)
  out = jax.vmap(kernel)(qh, kh, vh, segment_ids=splash.SegmentIds(q=q_ids, kv=kv_ids))
  return out.transpose(0, 2, 1, 3)[:, :lq].astype(q.dtype)


def _per_shard(kernel, q, k, v, keys):
  """kernel(q, k, v, keys) on each device's slice of the batch and the heads (shard_map under the mesh in context)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, keys)
  rules = sharding.current_rules()
  b_axes = sharding.logical_to_spec(("activation_batch",), rules, mesh, q.shape[:1])[0]
  h_axes = sharding.logical_to_spec(("heads",), rules, mesh, q.shape[2:3])[0]
  qkv = jax.sharding.PartitionSpec(b_axes, None, h_axes, None)
  return jax.shard_map(kernel, in_specs=(qkv, qkv, qkv, jax.sharding.PartitionSpec(b_axes, None)), out_specs=qkv,
                       check_vma=False)(q, k, v, keys)
