"""GPU forms: attention through cuDNN's fused (flash) kernel (`kernels="cudnn"`, what `auto` picks on GPU).

cuDNN's kernel never materialises the [B, N, Lq, L] probabilities, so it has no probability dropout: it serves calls
whose attention dropout is off (inference, or attention_probs_dropout_prob = 0); `auto` gives the others the
reference attention. It runs bfloat16 / float16 operands only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = (jnp.bfloat16, jnp.float16)


def supports(q: jax.Array) -> bool:
  """Whether cuDNN's fused attention takes operands like q (its dtype)."""
  return any(q.dtype == d for d in DTYPES)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """reference.attention without dropout: q [B, Lq, N, D], k and v [B, L, N, D], boolean mask broadcastable to
  [B, 1, Lq, L] -> [B, Lq, N, D]. cuDNN takes the mask as an additive bias of the full [B, 1, Lq, L] shape (it is
  broadcast over the heads only)."""
  if not supports(q):
    raise ValueError(f"kernels='cudnn': cuDNN's fused attention runs bfloat16 or float16, got {q.dtype}; set "
                     f"dtype=bfloat16 or kernels=auto")
  b, lq, _, _ = q.shape
  mask = jnp.broadcast_to(mask, (b, 1, lq, k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
