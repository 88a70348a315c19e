"""Value fingerprints of checkpointed arrays: what was saved is what is restored, bit for bit.

    record = fingerprints(params)                   # {path: [dtype, shape, "h1h2"]}, at save time (committed with it)
    problems = verify(record, restored_params, "params")   # [] when every array reads back as it was saved

Why values and not file checksums: Orbax commits a step by renaming its temporary folder when the (asynchronous) save
finishes, so a checksum of the files could only be written after the commit, in a second, non-atomic step. A
fingerprint of the arrays is computed before the save starts, saved as one more item of the same step and so
committed with it; it checks exactly the values training or conversion would use, whatever the storage format
(OCDBT, compression) or the sharding on either side.

The fingerprint of an array is two wrapping uint32 sums over its elements' bit patterns (bits viewed as unsigned
integers of the element width), each element weighted by an odd function of its flat index, the second one mixed
non-linearly. Integer addition modulo 2**32 is associative and commutative, so the result does not depend on how the
array is sharded or in which order the reduction runs: jnp on device (sharded, several hosts) and numpy on the host
give the same two numbers. Any change of one element changes both sums; two changes cancel with probability ~2**-64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

VERSION = 1
_M1, _M2, _M3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32}


def _mix(xp, v):
  v = (v ^ (v >> 16)) * xp.uint32(_M2)
  v = (v ^ (v >> 13)) * xp.uint32(_M3)
  return v ^ (v >> 16)


def _sums(xp, bits, idx):
  """(h1, h2, 0) of uint32 `bits` with flat indices `idx` (the same shape)."""
  w = (idx * xp.uint32(_M1)) | xp.uint32(1)
  h1 = xp.sum(bits * w, dtype=xp.uint32)
  h2 = xp.sum(_mix(xp, bits ^ (idx * xp.uint32(_M3))) * xp.uint32(_M1), dtype=xp.uint32)
  return h1, h2


def _np_bits(x: np.ndarray) -> np.ndarray:
  x = np.ascontiguousarray(x)
  size = x.dtype.itemsize
  if size in _UINT:
    return x.view(_UINT[size]).astype(np.uint32).reshape(-1)
  if size % 4 == 0:
    return x.reshape(-1).view(np.uint32)
  raise TypeError(f"cannot fingerprint dtype {x.dtype}")


def _np_digest(x: np.ndarray) -> tuple[int, int]:
  bits = _np_bits(np.asarray(x))
  idx = np.arange(bits.size, dtype=np.uint32)
  with np.errstate(over="ignore"):
    h1, h2 = _sums(np, bits, idx)
  return int(h1), int(h2)


def _jnp_bits(x: jax.Array) -> jax.Array:
  size = jnp.dtype(x.dtype).itemsize
  if size in _UINT:
    bits = jax.lax.bitcast_convert_type(x, _UINT[size]).astype(jnp.uint32)
  elif size % 4 == 0:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)   # adds a trailing axis of size // 4
  else:
    raise TypeError(f"cannot fingerprint dtype {x.dtype}")
  return bits


@jax.jit
def _jnp_digest(x: jax.Array) -> jax.Array:
  """uint32[2] of one array; compiled once per shape, dtype and sharding (parameters and their Adam moments share
  shapes, so a model needs a few dozen small programs, not one per leaf)."""
  bits = _jnp_bits(x)
  idx = jax.lax.iota(jnp.uint32, bits.size).reshape(bits.shape)   # row-major flat index, as numpy's ravel
  return jnp.stack(_sums(jnp, bits, idx))


def _host(x: jax.Array) -> np.ndarray:
  """A replicated result as numpy, on one process or several."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def _each_on_device(fn, leaves: list[Any]):
  """(index, fn(leaf)) for the jax arrays among `leaves`, one program at a time, each finished before the next
  starts: several programs with collectives in flight at once can deadlock (XLA's CPU devices wait in a rendezvous
  for threads busy with another program; across processes, the programs' order may differ)."""
  for i, x in enumerate(leaves):
    if isinstance(x, jax.Array):
      yield i, jax.block_until_ready(fn(x))


def _digests(leaves: list[Any]) -> list[tuple[int, int]]:
  out: list[tuple[int, int] | None] = [None] * len(leaves)
  for i, d in _each_on_device(_jnp_digest, leaves):
    h = _host(d)
    out[i] = (int(h[0]), int(h[1]))
  for i, x in enumerate(leaves):
    if out[i] is None:
      out[i] = _np_digest(np.asarray(x))
  return out  # type: ignore[return-value]


def _leaves(tree: Any) -> tuple[list[str], list[Any]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def _dtype(x: Any) -> str:
  return str(np.dtype(x.dtype)) if hasattr(x, "dtype") else type(x).__name__


def fingerprints(tree: Any) -> dict[str, list]:
  """{tree path: [dtype, shape, hex digest]} of every array leaf of `tree` (jax or numpy; scalars as numpy)."""
  keys, leaves = _leaves(tree)
  leaves = [x if isinstance(x, jax.Array) else np.asarray(x) for x in leaves]
  return {k: [_dtype(x), list(np.shape(x)), f"{h1:08x}{h2:08x}"]
          for k, x, (h1, h2) in zip(keys, leaves, _digests(leaves))}


def verify(record: Mapping[str, Any], tree: Any, item: str) -> list[str]:
  """Differences between `tree` (as restored) and its `record` (as saved); [] when they agree.

  A leaf restored into another dtype than it was saved in (Orbax casts to the target's dtype) cannot be compared
  bit for bit: it is only checked for NaN/Inf.
  """
  keys, leaves = _leaves(tree)
  leaves = [x if isinstance(x, jax.Array) else np.asarray(x) for x in leaves]
  problems = [f"{item}{k}: saved but not restored" for k in sorted(set(record) - set(keys))]
  problems += [f"{item}{k}: restored but not recorded when saved" for k in sorted(set(keys) - set(record))]
  same = [i for i, k in enumerate(keys) if k in record and record[k][0] == _dtype(leaves[i])]
  for i, (h1, h2) in zip(same, _digests([leaves[i] for i in same])):
    if record[keys[i]][2] != f"{h1:08x}{h2:08x}":
      problems.append(f"{item}{keys[i]}: values differ from what was saved (fingerprint "
                      f"{h1:08x}{h2:08x}, saved {record[keys[i]][2]})")
  compared = set(same)
  cast = {k: leaves[i] for i, k in enumerate(keys) if k in record and i not in compared}
  problems += [f"{item}{k}: holds NaN or Inf" for k in _non_finite_keys(cast)]
  return problems


def non_finite(tree: Any, item: str) -> list[str]:
  """Paths of floating-point leaves holding NaN or Inf (the check for checkpoints saved without fingerprints)."""
  keys, leaves = _leaves(tree)
  return [f"{item}{k}: holds NaN or Inf" for k in _non_finite_keys(dict(zip(keys, leaves)))]


def _non_finite_keys(leaves: Mapping[str, Any]) -> list[str]:
  floats = {k: x for k, x in leaves.items() if jnp.issubdtype(getattr(x, "dtype", np.int32), jnp.inexact)}
  keys, values = list(floats), list(floats.values())
  bad = [keys[i] for i, ok in _each_on_device(_jnp_all_finite, values) if not bool(_host(ok))]
  bad += [k for k, x in floats.items() if not isinstance(x, jax.Array)
          and not np.all(np.isfinite(np.asarray(x, np.float32)))]
  return sorted(bad)


@jax.jit
def _jnp_all_finite(x: jax.Array) -> jax.Array:
  return jnp.all(jnp.isfinite(x))


def record(params: Any, opt_state: Any | None = None) -> dict[str, Any]:
  """The record a checkpoint step keeps: fingerprints of its parameters (and optimizer state)."""
  record = {"version": VERSION, "params": fingerprints(params)}
  if opt_state is not None:
    record["opt_state"] = fingerprints(opt_state)
  return record


def shape_mismatches(abstract: Any, metadata: Any, item: str) -> list[str]:
  """Paths whose saved shape differs from the target's, or that exist on one side only."""
  tree = getattr(metadata, "tree", metadata)
  saved = {jax.tree_util.keystr(p): tuple(getattr(m, "shape", ()) or ())
           for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]}
  wanted = {jax.tree_util.keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  problems = [f"{item}{k}: saved {saved[k]} vs model {wanted[k]}" for k in sorted(set(saved) & set(wanted))
              if saved[k] != wanted[k]]
  problems += [f"{item}{k}: only in the checkpoint" for k in sorted(set(saved) - set(wanted))]
  problems += [f"{item}{k}: only in the model" for k in sorted(set(wanted) - set(saved))]
  return problems
