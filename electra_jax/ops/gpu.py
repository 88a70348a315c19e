"""GPU forms: attention through cuDNN's fused (flash) kernel (`kernels="cudnn"`, what `auto` picks on GPU).

cuDNN's kernel never materialises the [B, N, Lq, L] probabilities, so it has no probability dropout: it serves calls
whose attention dropout is off (inference, or attention_probs_dropout_prob = 0); `auto` gives the others the
reference attention. It runs bfloat16 / float16 operands with a head size that is a multiple of 8, up to 128.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
