"""Reads pretraining shards (electra_jax.data.pretraining) as globally sharded, resumable batches.

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    loader = PretrainingLoader("data/pretrain", global_batch_size=128, mesh=mesh, seed=0)
    batch = next(loader)          # {"input_ids", "input_mask", "segment_ids"}: int32 [128, L] jax.Arrays,
                                  # sharded along the batch over ("data", "fsdp"), replicated over the other axes
    ckpt["loader"] = loader.state()                 # json-serialisable: next_step, seed, fingerprint, ...
    loader.restore(ckpt["loader"])                  # continues with exactly the batches it would have produced
    batch = loader.batch(step)                      # any step, random access, same result as the iterator

Order: epoch e visits the N examples in the order `np.random.default_rng([seed, e]).permutation(N)` (global example
index = position in the shards taken in manifest order); batch `step` is the global positions [step*B, (step+1)*B) of
the concatenated epochs, so batches cross epoch ends without a seam or a dropped remainder. Each process reads only
the rows of the global batch that its devices hold (one contiguous slice: rows [i*B/P, (i+1)*B/P) for process i of P
on the usual process-major meshes; the rows are taken from the sharding itself). `local_batch(step)` gives that slice
as numpy; passing process_index/process_count explicitly simulates another process layout (numpy only). A background
thread prefetches the next `prefetch` local batches of the iterator (a bounded queue), so reading and decoding overlap
the training step.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from electra_jax import errors
from electra_jax.data.pretraining import RecordError, decode_records, read_manifest

_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # tuned for random access


class LoaderStateError(errors.Error, ValueError):
  """A saved loader state that does not belong to this dataset / seed / batch size."""


class PretrainingLoader:
  """Deterministic, resumable global batches from an ArrayRecord pretraining dataset."""

  def __init__(self, dataset_dir: str | os.PathLike, global_batch_size: int, mesh: Mesh | None = None, seed: int = 0,
               *, batch_axes: Sequence[str] = ("data", "fsdp"), process_index: int | None = None,
               process_count: int | None = None, prefetch: int = 2, start_step: int = 0):
    self.dataset_dir = os.fspath(dataset_dir)
    self.manifest = read_manifest(self.dataset_dir)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.max_seq_length = int(self.manifest["max_seq_length"])
    self.fingerprint = str(self.manifest["fingerprint"])
    self._id_dtype = self.manifest["id_dtype"]
    self._open_shards()
    self._check_layout(mesh, tuple(batch_axes), process_index, process_count)
    self._prefetch = max(0, int(prefetch))
    self._perm_cache: dict[int, np.ndarray] = {}
    self._read_lock = threading.Lock()
    self._thread: threading.Thread | None = None
    self._queue: queue.Queue | None = None
    self._stop: threading.Event | None = None
    self._next_step = int(start_step)

  # -- set-up ----------------------------------------------------------------------------------------------------------

  def _open_shards(self) -> None:
    from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=import-outside-toplevel
    self._readers, self._shard_files, counts = [], [], []
    for entry in self.manifest["shards"]:
      path = os.path.join(self.dataset_dir, entry["file"])
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{self.dataset_dir}: shard {entry['file']} listed in the manifest is missing")
      reader = ArrayRecordReader(path, _READER_OPTIONS)
      if reader.num_records() != entry["num_examples"]:
        raise RecordError(f"{path}: {reader.num_records()} records, the manifest says {entry['num_examples']}")
      self._readers.append(reader)
      self._shard_files.append(path)
      counts.append(entry["num_examples"])
    self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self.num_examples = int(self._offsets[-1])
    if self.num_examples == 0:
      raise RecordError(f"{self.dataset_dir}: the dataset has no examples")

  def _check_layout(self, mesh: Mesh | None, batch_axes: tuple[str, ...], process_index: int | None,
                    process_count: int | None) -> None:
    b = self.global_batch_size
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.simulated = (self.process_count, self.process_index) != (jax.process_count(), jax.process_index())
    if b <= 0:
      raise ValueError(f"global_batch_size must be positive, got {b}")
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index {self.process_index} is not in [0, {self.process_count})")
    if b % self.process_count:
      raise ValueError(f"global_batch_size {b} does not divide evenly over {self.process_count} processes")
    self.mesh = mesh
    self.sharding = None
    if mesh is not None:
      missing = [a for a in batch_axes if a not in mesh.shape]
      if missing:
        raise ValueError(f"batch axes {missing} are not axes of the mesh {dict(mesh.shape)}")
      ways = math.prod(mesh.shape[a] for a in batch_axes)
      if b % ways:
        raise ValueError(f"global_batch_size {b} does not divide evenly over the batch-sharding mesh axes "
                         f"{batch_axes} ({ways} ways)")
      self.sharding = NamedSharding(mesh, P(batch_axes))
    per_process = b // self.process_count
    if self.sharding is not None and not self.simulated:
      # The rows this process's devices hold, from the sharding itself.
      spans = {(s[0].start or 0, b if s[0].stop is None else s[0].stop)
               for s in self.sharding.addressable_devices_indices_map((b, self.max_seq_length)).values()}
      start, stop = min(a for a, _ in spans), max(z for _, z in spans)
      covered = np.zeros(stop - start, bool)
      for a, z in spans:
        covered[a - start:z - start] = True
      if not covered.all():
        raise ValueError(f"process {self.process_index}'s devices hold a non-contiguous set of batch rows "
                         f"{sorted(spans)}; order the mesh devices process-major")
      self.rows = (start, stop)
    else:
      self.rows = (self.process_index * per_process, (self.process_index + 1) * per_process)

  # -- order -----------------------------------------------------------------------------------------------------------

  def permutation(self, epoch: int) -> np.ndarray:
    """The visiting order of epoch `epoch` (global example indices)."""
    perm = self._perm_cache.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
      if len(self._perm_cache) >= 2:
        self._perm_cache.pop(min(self._perm_cache))
      self._perm_cache[epoch] = perm
    return perm

  def example_indices(self, step: int) -> np.ndarray:
    """Global example indices of this process's rows of batch `step`."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    positions = step * self.global_batch_size + np.arange(*self.rows, dtype=np.int64)
    epochs, within = np.divmod(positions, self.num_examples)
    out = np.empty_like(positions)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self.permutation(int(e))[within[sel]]
    return out

  # -- reading ---------------------------------------------------------------------------------------------------------

  def read_examples(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Decoded, padded int32 arrays [len(indices), L] of the given global example indices, in that order."""
    indices = np.asarray(indices, np.int64)
    shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
    records: list[bytes | None] = [None] * len(indices)
    with self._read_lock:
      for s in np.unique(shard_of):
        where = np.flatnonzero(shard_of == s)
        local = (indices[where] - self._offsets[s]).tolist()
        for i, rec in zip(where, self._readers[s].read(local)):
          records[i] = rec
    try:
      return decode_records(records, self._id_dtype, self.max_seq_length)
    except RecordError as e:
      s = int(shard_of[e.index])
      position = int(indices[e.index] - self._offsets[s])
      raise ValueError(f"{self._shard_files[s]}: record {position}: {e.detail}") from None

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of batch `step`, as numpy int32 arrays [rows, L]."""
    return self.read_examples(self.example_indices(step))

  def _to_global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    if self.simulated:
      raise RuntimeError(f"this loader simulates process {self.process_index} of {self.process_count} "
                         f"(JAX runs {jax.process_count()}); use local_batch() for numpy slices")
    shape = (self.global_batch_size, self.max_seq_length)
    if self.sharding is None:
      if jax.process_count() > 1:
        raise RuntimeError("a multi-process run needs a mesh to assemble global batches; pass mesh=")
      return {k: jax.device_put(v) for k, v in local.items()}
    return {k: jax.make_array_from_process_local_data(self.sharding, v, shape) for k, v in local.items()}

  def batch(self, step: int) -> dict[str, jax.Array]:
    """Global batch `step`: int32 [B, L] jax.Arrays sharded along the batch (random access; no effect on next())."""
    return self._to_global(self.local_batch(step))

  # -- iteration with prefetch -----------------------------------------------------------------------------------------

  def _producer(self, start: int, q: queue.Queue, stop: threading.Event) -> None:
    step = start
    while not stop.is_set():
      try:
        item = (step, self.local_batch(step), None)
      except Exception as e:  # pylint: disable=broad-except  (handed to the consumer)
        item = (step, None, e)
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return
      step += 1

  def _stop_prefetch(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
    self._thread = self._queue = self._stop = None

  def __iter__(self) -> PretrainingLoader:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    step = self._next_step
    if self._prefetch == 0:
      local = self.local_batch(step)
    else:
      if self._thread is None:
        self._queue, self._stop = queue.Queue(maxsize=self._prefetch), threading.Event()
        self._thread = threading.Thread(target=self._producer, args=(step, self._queue, self._stop),
                                        name="pretraining-loader-prefetch", daemon=True)
        self._thread.start()
      got, local, error = self._queue.get()
      assert got == step, (got, step)
      if error is not None:
        self._stop_prefetch()
        raise error
    out = self._to_global(local)
    self._next_step = step + 1
    return out

  def close(self) -> None:
    """Stops the prefetch thread (the loader can still be used; iteration restarts it)."""
    self._stop_prefetch()

  def __enter__(self) -> PretrainingLoader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  # -- checkpointable position -----------------------------------------------------------------------------------------

  @property
  def next_step(self) -> int:
    return self._next_step

  @property
  def steps_per_epoch(self) -> float:
    return self.num_examples / self.global_batch_size

  def state(self) -> dict[str, Any]:
    """The iterator position, json-serialisable, for a checkpoint."""
    return {"next_step": self._next_step, "seed": self.seed, "fingerprint": self.fingerprint,
            "global_batch_size": self.global_batch_size, "num_examples": self.num_examples}

  def restore(self, state: dict[str, Any]) -> None:
    """Continues from a saved `state()`; raises LoaderStateError when it belongs to another dataset/seed/batch size."""
    for key, mine in (("fingerprint", self.fingerprint), ("seed", self.seed),
                      ("global_batch_size", self.global_batch_size)):
      if key not in state:
        raise LoaderStateError(f"loader state lacks {key!r}: {state}")
      if state[key] != mine:
        what = f"dataset {self.dataset_dir}" if key == "fingerprint" else "this loader"
        raise LoaderStateError(f"loader state has {key} {state[key]!r} but {what} has {mine!r}")
    step = state.get("next_step")
    if not isinstance(step, int) or step < 0:
      raise LoaderStateError(f"loader state has an invalid next_step {step!r}")
    self._stop_prefetch()
    self._next_step = step
