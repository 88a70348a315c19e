"""Training batches of any random-access dataset on Grain: seeded epochs, each process reading its rows, resumable.

    layout = stream.Layout.of(global_batch_size=128, mesh=mesh, batch_axes=("data", "fsdp"))
    s = stream.BatchStream(num_examples, read, layout, seed=0, identity={"fingerprint": ...}, prefetch=2)
    local = next(s)                  # this process's rows of the next global batch, as numpy (read(example indices))
    batch = s.to_global(local)       # jax.Arrays [B, ...] sharded along the batch over the mesh's batch axes
    ckpt["loader"] = s.state()       # json: the Grain iterator's state, the next step, and what the position belongs to
    s.restore(ckpt["loader"])        # refuses another dataset / seed / batch size (StreamStateError)

The pipeline (grain.MapDataset, random access all the way down):
    order   = MapDataset.range(N).shuffle(seed=grain_seed(seed)).repeat()      # global position -> example index
    indices = order.batch(R, drop_remainder=True)[k::B // R]                    # step -> this process's example indices
    batches = indices.map(read)                                                 # step -> this process's rows
and `batches.to_iter_dataset(ReadOptions(...))` prefetches on a thread; its state ({"next_index": step}) is the data
position. Epoch e visits the N examples in Grain's index-shuffle order seeded with grain_seed(seed) + e (a different
order each epoch); global batch `step` holds the positions [step*B, (step+1)*B) of the concatenated epochs, so batches
cross epoch ends without a seam or a dropped remainder. Process p holds the R rows [k*R, (k+1)*R) of each global batch
that its devices hold (taken from the sharding: usually R = B / processes and k = p) and reads only those. The global
batch is the same for any number of processes, so a run resumes exactly on another host count.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from electra_jax import errors

ORDER = "grain-index-shuffle-v1"   # names the order of examples a saved position refers to


class StreamStateError(errors.Error, ValueError):
  """A saved data position that does not belong to this dataset / seed / batch size."""


class LayoutError(errors.Error, ValueError):
  """A global batch that cannot be split over the processes or the mesh as asked."""


def grain_seed(seed: int) -> int:
  """The 32-bit Grain shuffle seed of a run's seed. Grain seeds epoch e with seed + e, so runs with seeds 0 and 1
  would share every epoch but one, shifted; a hash spreads the seeds of different runs apart."""
  return int(np.random.SeedSequence(int(seed) & (2**64 - 1)).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which rows of a global batch of `global_batch_size` this process reads, and how the batch is sharded."""
  global_batch_size: int
  rows: tuple[int, int]               # [start, stop) of each global batch held by this process
  process_index: int
  process_count: int
  sharding: NamedSharding | None      # None: one process, arrays placed on the default device
  simulated: bool                     # process_index/process_count given that are not JAX's: numpy only

  @classmethod
  def of(cls, global_batch_size: int, mesh: Mesh | None = None, batch_axes: Sequence[str] = ("data", "fsdp"), *,
         process_index: int | None = None, process_count: int | None = None) -> Layout:
    b = int(global_batch_size)
    count = jax.process_count() if process_count is None else int(process_count)
    index = jax.process_index() if process_index is None else int(process_index)
    simulated = (count, index) != (jax.process_count(), jax.process_index())
    if b <= 0:
      raise LayoutError(f"global_batch_size must be positive, got {b}")
    if not 0 <= index < count:
      raise LayoutError(f"process_index {index} is not in [0, {count})")
    if b % count:
      raise LayoutError(f"global_batch_size {b} does not divide evenly over {count} processes")
    sharding = None
    if mesh is not None:
      batch_axes = tuple(batch_axes)
      missing = [a for a in batch_axes if a not in mesh.shape]
      if missing:
        raise LayoutError(f"batch axes {missing} are not axes of the mesh {dict(mesh.shape)}")
      ways = math.prod(mesh.shape[a] for a in batch_axes)
      if b % ways:
        raise LayoutError(f"global_batch_size {b} does not divide evenly over the batch-sharding mesh axes "
                          f"{batch_axes} ({ways} ways)")
      sharding = NamedSharding(mesh, P(batch_axes))
    per_process = b // count
    rows = (index * per_process, (index + 1) * per_process)
    if sharding is not None and not simulated:
      rows = _held_rows(sharding, b, index)
    return cls(b, rows, index, count, sharding, simulated)


def _held_rows(sharding: NamedSharding, b: int, index: int) -> tuple[int, int]:
  """The rows of a [b] batch that this process's devices hold: one aligned contiguous block."""
  spans = {(s[0].start or 0, b if s[0].stop is None else s[0].stop)
           for s in sharding.addressable_devices_indices_map((b,)).values()}
  start, stop = min(a for a, _ in spans), max(z for _, z in spans)
  covered = np.zeros(stop - start, bool)
  for a, z in spans:
    covered[a - start:z - start] = True
  if not covered.all() or start % (stop - start) or b % (stop - start):
    raise LayoutError(f"process {index}'s devices hold the batch rows {sorted(spans)}, not one aligned block; order "
                      "the mesh devices process-major")
  return start, stop


class BatchStream:
  """Seeded, resumable batches of `read(example indices) -> {name: array [len(indices), ...]}` for one process."""

  def __init__(self, num_examples: int, read: Callable[[np.ndarray], Mapping[str, np.ndarray]], layout: Layout, *,
               seed: int = 0, identity: Mapping[str, Any] | None = None, prefetch: int = 2, start_step: int = 0):
    if num_examples <= 0:
      raise LayoutError("the dataset has no examples")
    self.num_examples = int(num_examples)
    self.layout = layout
    self.seed = int(seed)
    self.identity = {"seed": self.seed, "global_batch_size": layout.global_batch_size, **dict(identity or {})}
    self._prefetch = max(0, int(prefetch))
    start, stop = layout.rows
    size = stop - start
    self.order = grain.MapDataset.range(self.num_examples).shuffle(seed=grain_seed(self.seed)).repeat()
    self.indices = self.order.batch(size, drop_remainder=True)[start // size::layout.global_batch_size // size]
    self.batches = self.indices.map(lambda idx: read(np.asarray(idx, np.int64)))
    self._iterator = None
    self._next_step = int(start_step)

  # -- random access ---------------------------------------------------------------------------------------------------

  def permutation(self, epoch: int) -> np.ndarray:
    """The visiting order of epoch `epoch` (example indices)."""
    n = self.num_examples
    return np.asarray(self.order.batch(n)[epoch], np.int64)

  def example_indices(self, step: int) -> np.ndarray:
    """Example indices of this process's rows of batch `step`."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    return np.asarray(self.indices[step], np.int64)

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of batch `step` (random access; no effect on the iterator)."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    return dict(self.batches[step])

  def to_global(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows -> global jax.Arrays [B, ...] sharded along the batch."""
    layout = self.layout
    if layout.simulated:
      raise RuntimeError(f"this stream simulates process {layout.process_index} of {layout.process_count} "
                         f"(JAX runs {jax.process_count()}); use local_batch() for numpy slices")
    if layout.sharding is None:
      if jax.process_count() > 1:
        raise RuntimeError("a multi-process run needs a mesh to assemble global batches; pass mesh=")
      return {k: jax.device_put(v) for k, v in local.items()}
    return {k: jax.make_array_from_process_local_data(layout.sharding, v, (layout.global_batch_size, *v.shape[1:]))
            for k, v in local.items()}

  # -- iteration -------------------------------------------------------------------------------------------------------

  def _iter(self):
    if self._iterator is None:
      options = grain.ReadOptions(num_threads=1 if self._prefetch else 0, prefetch_buffer_size=self._prefetch)
      self._iterator = iter(self.batches.to_iter_dataset(options))
      self._iterator.set_state({"next_index": self._next_step})
    return self._iterator

  def __iter__(self) -> BatchStream:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    it = self._iter()
    try:
      local = next(it)
    except BaseException:
      self.close()   # a failed read leaves the position at the batch that failed; nothing read ahead is kept
      raise
    self._next_step = it.get_state()["next_index"]
    return dict(local)

  def close(self) -> None:
    """Stops the prefetch thread (iteration restarts it at the same position)."""
    if self._iterator is not None:
      self._iterator.close()
    self._iterator = None

  # -- the data position -----------------------------------------------------------------------------------------------

  @property
  def next_step(self) -> int:
    return self._next_step

  def state(self) -> dict[str, Any]:
    """The position, json-serialisable, for a checkpoint: Grain's iterator state plus what it belongs to."""
    return {"next_step": self._next_step, "iterator": {"next_index": self._next_step}, "order": ORDER,
            "num_examples": self.num_examples, **self.identity}

  def restore(self, state: Mapping[str, Any], what: str = "this stream") -> None:
    """Continues from a saved `state()`; StreamStateError when it belongs to another dataset / seed / batch size."""
    for key, mine in self.identity.items():
      if key not in state:
        raise StreamStateError(f"loader state lacks {key!r}: {dict(state)}")
      if state[key] != mine:
        raise StreamStateError(f"loader state has {key} {state[key]!r} but {what} has {mine!r}")
    step = state.get("next_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
      raise StreamStateError(f"loader state has an invalid next_step {step!r}")
    if "order" not in state:
      logging.warning("the saved data position (step %d) comes from a version that ordered the examples by hand; it "
                      "continues at that step in Grain's order, so the rest of this epoch may repeat or skip "
                      "examples", step)
    elif state["order"] != ORDER:
      raise StreamStateError(f"loader state orders the examples by {state['order']!r}, this version by {ORDER!r}")
    self.close()
    self._next_step = step


def array_stream(arrays: Mapping[str, np.ndarray], global_batch_size: int, *, seed: int, mesh: Mesh | None = None,
                 batch_axes: Sequence[str] = (), prefetch: int = 2, start_step: int = 0) -> BatchStream:
  """A BatchStream over in-memory arrays with a shared first dimension (fine-tuning features): each process slices
  its rows of each global batch out of them."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  sizes = {k: v.shape[0] for k, v in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise LayoutError(f"arrays of different lengths: {sizes}")
  n = next(iter(sizes.values()))
  if n == 0:
    raise LayoutError("no training examples")
  layout = Layout.of(global_batch_size, mesh, batch_axes)
  return BatchStream(n, lambda idx: {k: v[idx] for k, v in arrays.items()}, layout, seed=seed,
                     identity={"num_examples": n}, prefetch=prefetch, start_step=start_step)
