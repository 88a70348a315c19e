"""Flash attention as Pallas TPU kernels (FlashAttention-2: forward, and a backward that recomputes the probabilities).

    out = flash_attention(q, k, v, key_mask, causal=False)   # q [B, Lq, N, D], k and v [B, L, N, D] -> [B, Lq, N, D]

Equal (up to float rounding) to the plain form: scores = q k^T / sqrt(D) in float32, masked scores set to
float32's lowest finite value, softmax over the keys, probabilities times v. The [B, N, Lq, L] probabilities are never
stored: the forward pass keeps the running row maximum m and row sum l per query, and the backward pass recomputes the
probabilities block by block from q, k and (m, l). Why: attention memory and HBM traffic linear in the length instead of
quadratic; not measured yet (no TPU on the development machines; measured figures go to benchmarks/README.md).

Semantics, matching the plain form exactly:
  * key_mask [B, L] (True / non-zero = attend); causal masks key j for query i when j > i, with query i at position i
    (top-left aligned: ELECTRA's last layer runs the first Lq positions' queries against all L keys).
  * A query row with no key to attend (all masked) averages v uniformly over all L keys, as softmax over scores that
    are all float32-lowest does; its gradient flows to v only. It never yields NaN. (The row sum l is kept next to m,
    not folded into log-sum-exp, because m + log(l) rounds back to m at float32-lowest.)
  * Lengths are padded inside to a multiple of the block; padded keys get -inf (weight exactly 0), padded queries are
    dropped.
  * Products take the inputs' dtype (bfloat16 stays bfloat16 on the MXU) and accumulate in float32; the softmax
    statistics are float32; the output has q's dtype.

Kernels work heads-major ([B, N, L, D]: a block's last two dims must be (8, 128)-tileable or whole on TPU, and D = 64
is neither when heads are interleaved), so the wrapper transposes; the per-query statistics are stored lane-major
([B, N, 1, Lq]) so they cost Lq floats per head, not 128 Lq. The dk/dv kernel computes transposed scores
[keys, queries] so those rows broadcast as they are; the forward and dq kernels turn them into columns (and the dk/dv
kernel the key mask row) by one small transpose per outer block, none per step.
With causal, key blocks wholly above the diagonal are skipped (and not fetched) unless the query block holds a row
with no visible key (then every block is visited, to match the plain form's uniform average).

interpret=None runs the kernels through Pallas' interpreter when lowering for CPU and compiles them with Mosaic when
lowering for TPU (chosen per lowering platform, so ahead-of-time compilation for TPU on a CPU host gets the real
kernel). There is no GPU kernel here. Under a sharded jit, call it inside shard_map: XLA cannot partition a Mosaic call.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

_LANES = 128         # TPU vector lanes: a block's last dim is a multiple of this or the whole array dim
_SUBLANE_ALIGN = 8   # a block's second-to-last dim is a multiple of this (or whole)
_LOWEST = float(jnp.finfo(jnp.float32).min)
_DIMS = ("parallel", "parallel", "parallel", "arbitrary")


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static facts of one call (hashable: custom_vjp's non-differentiable argument)."""
  causal: bool
  block_q: int
  block_k: int
  num_q_blocks: int
  num_k_blocks: int
  scale: float
  has_kcap: bool        # a key cap row is passed (key mask or key padding)
  has_first: bool       # causal with a key mask: per-example index of the first attended key (scalar prefetch)
  interpret: bool | pltpu.InterpretParams | None


# ------------------------------------------------------------------------------------------------ in-kernel helpers
def _row_to_col(row: jax.Array) -> jax.Array:
  """[1, n] -> [n, 1] (through a lane-replicated tile: Mosaic transposes 2-D tiles, not vectors)."""
  return jnp.transpose(jnp.broadcast_to(row, (_LANES, row.shape[1])))[:, :1]


def _col_to_row(col: jax.Array) -> jax.Array:
  """[n, 1] -> [1, n]."""
  return jnp.transpose(jnp.broadcast_to(col, (col.shape[0], _LANES)))[:1, :]


def _dot_nt(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [m, d] . b [n, d]^T -> [m, n] in float32."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _mask(s: jax.Array, kcap: jax.Array | None, q_start, k_start, cfg: _Config, *, keys_major: bool):
  """Masked scores and the keep mask (None when nothing is masked).

  s is [queries, keys] (or [keys, queries] when keys_major); kcap broadcasts along the keys axis: +inf keeps, float32
  lowest masks, -inf removes (padding); causal sets scores of later keys to float32 lowest.
  """
  keep = None
  if cfg.causal:
    q_axis, k_axis = (1, 0) if keys_major else (0, 1)
    rows = q_start + lax.broadcasted_iota(jnp.int32, s.shape, q_axis)
    cols = k_start + lax.broadcasted_iota(jnp.int32, s.shape, k_axis)
    keep = cols <= rows
    s = jnp.where(keep, s, _LOWEST)
  if kcap is not None:
    s = jnp.minimum(s, kcap)
    kept = kcap == jnp.inf
    keep = kept if keep is None else keep & kept
  return s, keep


def _needed(cfg: _Config, first_ref, b, qi, kb):
  """Whether key block kb matters to query block qi: it has a key at or below the diagonal, or the query block holds
  a row with no visible key (its uniform average takes every key)."""
  need = kb * cfg.block_k <= qi * cfg.block_q + cfg.block_q - 1
  if first_ref is not None:
    need = need | (first_ref[b] > qi * cfg.block_q)
  return need


def _maybe(cond, body):
  if cond is None:
    body()
  else:
    pl.when(cond)(body)


# ------------------------------------------------------------------------------------------------ kernels
def _fwd_kernel(*refs, cfg: _Config):
  """Grid (b, h, query block, key block): online softmax of one query block over the key blocks; writes the output
  and the block's row maximum m and row sum l."""
  first_ref = refs[0] if cfg.has_first else None
  refs = refs[1:] if cfg.has_first else refs
  q_ref, k_ref, v_ref, *refs = refs
  kcap_ref = refs.pop(0) if cfg.has_kcap else None
  o_ref, m_ref, l_ref, m_sc, l_sc, acc_sc = refs
  b, qi, kb = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(kb == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def _step():
    s = _dot_nt(q_ref[...], k_ref[...]) * cfg.scale
    s, _ = _mask(s, None if kcap_ref is None else kcap_ref[...], qi * cfg.block_q, kb * cfg.block_k, cfg,
                 keys_major=False)
    m_prev = m_sc[...]
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_new)
    p = jnp.exp(s - m_new)
    l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
    acc_sc[...] = alpha * acc_sc[...] + _dot(p.astype(v_ref.dtype), v_ref[...])
    m_sc[...] = m_new

  _maybe(_needed(cfg, first_ref, b, qi, kb) if cfg.causal else None, _step)

  @pl.when(kb == cfg.num_k_blocks - 1)
  def _finish():
    l = l_sc[...]
    o_ref[...] = (acc_sc[...] / l).astype(o_ref.dtype)
    m_ref[...] = _col_to_row(m_sc[...])
    l_ref[...] = _col_to_row(l)


def _dkv_kernel(*refs, cfg: _Config):
  """Grid (b, h, key block, query block): dk and dv of one key block, accumulated over the query blocks."""
  first_ref = refs[0] if cfg.has_first else None
  refs = refs[1:] if cfg.has_first else refs
  q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, di_ref, *refs = refs
  kcap_ref = refs.pop(0) if cfg.has_kcap else None
  dk_ref, dv_ref, dk_sc, dv_sc, *refs = refs
  kcap_sc = refs[0] if cfg.has_kcap else None
  b, kb, qi = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(qi == 0)
  def _init():
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)
    if kcap_sc is not None:
      kcap_sc[...] = _row_to_col(kcap_ref[...])

  def _step():
    q, do = q_ref[...], do_ref[...]
    s_t = _dot_nt(k_ref[...], q) * cfg.scale                       # [keys, queries]
    s_t, keep = _mask(s_t, None if kcap_sc is None else kcap_sc[...], qi * cfg.block_q, kb * cfg.block_k, cfg,
                      keys_major=True)
    p_t = jnp.exp(s_t - m_ref[...]) * (1.0 / l_ref[...])
    dv_sc[...] += _dot(p_t.astype(do.dtype), do)
    dp_t = _dot_nt(v_ref[...], do)
    ds_t = p_t * (dp_t - di_ref[...])
    if keep is not None:
      ds_t = jnp.where(keep, ds_t, 0.0)
    dk_sc[...] += _dot(ds_t.astype(q.dtype), q)

  _maybe(_needed(cfg, first_ref, b, qi, kb) if cfg.causal else None, _step)

  @pl.when(qi == cfg.num_q_blocks - 1)
  def _finish():
    dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg: _Config):
  """Grid (b, h, query block, key block): dq of one query block, accumulated over the key blocks."""
  first_ref = refs[0] if cfg.has_first else None
  refs = refs[1:] if cfg.has_first else refs
  q_ref, k_ref, v_ref, do_ref, m_ref, l_ref, di_ref, *refs = refs
  kcap_ref = refs.pop(0) if cfg.has_kcap else None
  dq_ref, dq_sc, m_sc, linv_sc, di_sc = refs
  b, qi, kb = pl.program_id(0), pl.program_id(2), pl.program_id(3)

  @pl.when(kb == 0)
  def _init():
    dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)
    m_sc[...] = _row_to_col(m_ref[...])
    linv_sc[...] = 1.0 / _row_to_col(l_ref[...])
    di_sc[...] = _row_to_col(di_ref[...])

  def _step():
    k = k_ref[...]
    s = _dot_nt(q_ref[...], k) * cfg.scale
    s, keep = _mask(s, None if kcap_ref is None else kcap_ref[...], qi * cfg.block_q, kb * cfg.block_k, cfg,
                    keys_major=False)
    p = jnp.exp(s - m_sc[...]) * linv_sc[...]
    dp = _dot_nt(do_ref[...], v_ref[...])
    ds = p * (dp - di_sc[...])
    if keep is not None:
      ds = jnp.where(keep, ds, 0.0)
    dq_sc[...] += _dot(ds.astype(k.dtype), k)

  _maybe(_needed(cfg, first_ref, b, qi, kb) if cfg.causal else None, _step)

  @pl.when(kb == cfg.num_k_blocks - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * cfg.scale).astype(dq_ref.dtype)


# ------------------------------------------------------------------------------------------------ pallas_calls
def _last_k(cfg: _Config, qi):
  """The last key block with a key at or below query block qi's diagonal."""
  return jnp.minimum(lax.div(qi * cfg.block_q + cfg.block_q - 1, cfg.block_k), cfg.num_k_blocks - 1)


def _first_q(cfg: _Config, kb):
  """The first query block with a query at or after key block kb's first key."""
  return jnp.minimum(lax.div(kb * cfg.block_k, cfg.block_q), cfg.num_q_blocks - 1)


def _k_index(cfg: _Config, b, qi, kb, first_ref):
  """Key block to fetch at (qi, kb): skipped blocks repeat the last needed one, so no DMA is issued for them."""
  if not cfg.causal:
    return kb
  return jnp.where(_needed(cfg, first_ref, b, qi, kb), kb, _last_k(cfg, qi))


def _q_index(cfg: _Config, b, qi, kb, first_ref):
  """Query block to fetch at (kb, qi) in the dk/dv grid: skipped blocks fetch the next needed one."""
  if not cfg.causal:
    return qi
  return jnp.where(_needed(cfg, first_ref, b, qi, kb), qi, _first_q(cfg, kb))


def _specs(cfg: _Config, d: int, *, keys_outer: bool):
  """BlockSpecs of (q-like [B,N,Lq,D], kv-like [B,N,L,D], q-stat rows [B,N,1,Lq], key cap row [B,1,L]) for a grid
  (b, h, outer, inner) with outer = query blocks (keys_outer=False) or key blocks (keys_outer=True)."""
  def blocks(b, x, y, first):
    """(query block, key block) fetched at grid step (b, h, x, y); `first` holds the scalar-prefetch ref if any."""
    first_ref = first[0] if first else None
    if keys_outer:
      kb, qi = x, y
      return _q_index(cfg, b, qi, kb, first_ref), kb
    qi, kb = x, y
    return qi, _k_index(cfg, b, qi, kb, first_ref)

  def q_map(b, h, x, y, *first):
    return b, h, blocks(b, x, y, first)[0], 0

  def k_map(b, h, x, y, *first):
    return b, h, blocks(b, x, y, first)[1], 0

  def row_map(b, h, x, y, *first):
    return b, h, 0, blocks(b, x, y, first)[0]

  def kcap_map(b, h, x, y, *first):
    return b, 0, blocks(b, x, y, first)[1]

  return (pl.BlockSpec((None, None, cfg.block_q, d), q_map), pl.BlockSpec((None, None, cfg.block_k, d), k_map),
          pl.BlockSpec((None, None, 1, cfg.block_q), row_map), pl.BlockSpec((None, 1, cfg.block_k), kcap_map))


def _grid_spec(cfg: _Config, grid, in_specs, out_specs, scratch):
  return pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=int(cfg.has_first), grid=grid, in_specs=in_specs,
                                      out_specs=out_specs, scratch_shapes=scratch)


def _run(call, args, interpret: bool | None):
  """Runs `call(interpret)(*args)`; with interpret=None the interpreter on CPU and Mosaic elsewhere, chosen when
  lowering (lax.platform_dependent), not when tracing."""
  if interpret is None:
    return lax.platform_dependent(*args, cpu=call(True), default=call(False))
  return call(interpret if isinstance(interpret, pltpu.InterpretParams) else bool(interpret))(*args)


def _prefix(first, kcap):
  return ((first,) if first is not None else ()), ((kcap,) if kcap is not None else ())


def _forward(q, k, v, kcap, first, cfg: _Config):
  b, n, lq, d = q.shape
  q_spec, k_spec, row_spec, kcap_spec = _specs(cfg, d, keys_outer=False)
  pre, cap = _prefix(first, kcap)
  grid = (b, n, cfg.num_q_blocks, cfg.num_k_blocks)
  in_specs = [q_spec, k_spec, k_spec] + ([kcap_spec] if kcap is not None else [])
  out_shape = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, 1, lq), jnp.float32),
               jax.ShapeDtypeStruct((b, n, 1, lq), jnp.float32))
  scratch = [pltpu.VMEM((cfg.block_q, 1), jnp.float32), pltpu.VMEM((cfg.block_q, 1), jnp.float32),
             pltpu.VMEM((cfg.block_q, d), jnp.float32)]

  def call(interpret):
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg), out_shape=out_shape,
        grid_spec=_grid_spec(cfg, grid, in_specs, [q_spec, row_spec, row_spec], scratch),
        compiler_params=pltpu.CompilerParams(dimension_semantics=_DIMS), interpret=interpret,
        name="flash_attention_fwd")

  return _run(call, (*pre, q, k, v, *cap), cfg.interpret)


def _backward(q, k, v, kcap, first, o, m, l, do, cfg: _Config):
  b, n, lq, d = q.shape
  pre, cap = _prefix(first, kcap)
  di = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)[:, :, None, :]   # [B, N, 1, Lq]
  args = (*pre, q, k, v, do, m, l, di, *cap)

  def specs(keys_outer):
    q_spec, k_spec, row_spec, kcap_spec = _specs(cfg, d, keys_outer=keys_outer)
    return q_spec, k_spec, [q_spec, k_spec, k_spec, q_spec, row_spec, row_spec, row_spec] + ([kcap_spec] if cap else [])

  def dkv_call(interpret):
    _, k_spec, in_specs = specs(keys_outer=True)
    scratch = [pltpu.VMEM((cfg.block_k, d), jnp.float32), pltpu.VMEM((cfg.block_k, d), jnp.float32)]
    scratch += [pltpu.VMEM((cfg.block_k, 1), jnp.float32)] if cap else []
    return pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg),
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)),
        grid_spec=_grid_spec(cfg, (b, n, cfg.num_k_blocks, cfg.num_q_blocks), in_specs, [k_spec, k_spec], scratch),
        compiler_params=pltpu.CompilerParams(dimension_semantics=_DIMS), interpret=interpret,
        name="flash_attention_dkv")

  def dq_call(interpret):
    q_spec, _, in_specs = specs(keys_outer=False)
    scratch = [pltpu.VMEM((cfg.block_q, d), jnp.float32)] + [pltpu.VMEM((cfg.block_q, 1), jnp.float32)] * 3
    return pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        grid_spec=_grid_spec(cfg, (b, n, cfg.num_q_blocks, cfg.num_k_blocks), in_specs, q_spec, scratch),
        compiler_params=pltpu.CompilerParams(dimension_semantics=_DIMS), interpret=interpret,
        name="flash_attention_dq")

  dk, dv = _run(dkv_call, args, cfg.interpret)
  dq = _run(dq_call, args, cfg.interpret)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, kcap, first, cfg: _Config):
  return _forward(q, k, v, kcap, first, cfg)[0]


def _flash_fwd(q, k, v, kcap, first, cfg: _Config):
  o, m, l = _forward(q, k, v, kcap, first, cfg)
  return o, (q, k, v, kcap, first, o, m, l)


def _flash_bwd(cfg: _Config, res, do):
  q, k, v, kcap, first, o, m, l = res
  dq, dk, dv = _backward(q, k, v, kcap, first, o, m, l, do, cfg)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ------------------------------------------------------------------------------------------------ public entry
def _block(length: int, block: int) -> tuple[int, int]:
  """(block, padded length): one block of the length rounded up to 8 when it fits, else `block` and a multiple of it."""
  if length <= block:
    size = -(-length // _SUBLANE_ALIGN) * _SUBLANE_ALIGN
    return size, size
  return block, -(-length // block) * block


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None, *,
                    causal: bool = False, block_q: int = 128, block_k: int = 128,
                    interpret: bool | pltpu.InterpretParams | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(D), masked) v for q [B, Lq, N, D], k and v [B, L, N, D] -> [B, Lq, N, D] in q's dtype.

  key_mask: [B, L] bool or 0/1 (non-zero = attend), or None. causal: key j hidden from query i when j > i.
  block_q / block_k: query / key rows per kernel step; multiples of 8, and of 128 for Mosaic (interpret False or
  None) when the length spans more than one block. interpret: True runs Pallas' interpreter, False compiles with
  Mosaic (TPU), None picks per lowering platform (interpreter for CPU, Mosaic otherwise); a pltpu.InterpretParams
  runs the TPU-semantics interpreter.
  """
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"flash_attention: q, k, v must be [batch, length, heads, head_dim]; got shapes {q.shape}, "
                     f"{k.shape}, {v.shape}")
  bsz, lq, heads, dim = q.shape
  if k.shape != v.shape or k.shape[0] != bsz or k.shape[2:] != (heads, dim):
    raise ValueError(f"flash_attention: k and v must be [{bsz}, L, {heads}, {dim}] like q {q.shape}; got {k.shape} "
                     f"and {v.shape}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"flash_attention: q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
  length = k.shape[1]
  if lq == 0 or length == 0:
    raise ValueError(f"flash_attention: empty sequence (q {q.shape}, k {k.shape}); lengths must be at least 1")
  if key_mask is not None and tuple(key_mask.shape) != (bsz, length):
    raise ValueError(f"flash_attention: key_mask must be [{bsz}, {length}] (batch, keys); got {key_mask.shape}")
  for name, blk in (("block_q", block_q), ("block_k", block_k)):
    if blk <= 0 or blk % _SUBLANE_ALIGN:
      raise ValueError(f"flash_attention: {name}={blk} must be a positive multiple of {_SUBLANE_ALIGN}")
  bq, lq_pad = _block(lq, block_q)
  bk, lk_pad = _block(length, block_k)
  if interpret is None or interpret is False:
    for name, blk, n, full in (("block_q", bq, lq, lq_pad), ("block_k", bk, length, lk_pad)):
      if blk != full and blk % _LANES:
        raise ValueError(f"flash_attention: {name}={blk} must be a multiple of {_LANES} for the Mosaic kernel "
                         f"when the length ({n}) spans several blocks (or pass interpret=True)")

  def heads_major(x, padded):
    x = jnp.transpose(x, (0, 2, 1, 3))
    return jnp.pad(x, ((0, 0), (0, 0), (0, padded - x.shape[2]), (0, 0))) if padded != x.shape[2] else x

  kcap = first = None
  if key_mask is not None or lk_pad != length:
    keep = jnp.ones((bsz, length), bool) if key_mask is None else key_mask != 0
    kcap = jnp.where(keep, jnp.inf, _LOWEST).astype(jnp.float32)
    kcap = jnp.pad(kcap, ((0, 0), (0, lk_pad - length)), constant_values=-jnp.inf)[:, None, :]
    if causal and key_mask is not None:   # index of the first attended key (length when none)
      first = jnp.where(jnp.any(keep, axis=1), jnp.argmax(keep, axis=1), length).astype(jnp.int32)
  cfg = _Config(causal=bool(causal), block_q=bq, block_k=bk, num_q_blocks=lq_pad // bq, num_k_blocks=lk_pad // bk,
                scale=1.0 / math.sqrt(dim), has_kcap=kcap is not None, has_first=first is not None,
                interpret=interpret)
  out = _flash(heads_major(q, lq_pad), heads_major(k, lk_pad), heads_major(v, lk_pad), kcap, first, cfg)
  return jnp.transpose(out[:, :, :lq], (0, 2, 1, 3))
