"""Reads pretraining shards (electra_jax.data.pretraining) as globally sharded, resumable batches, on Grain.

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    loader = PretrainingLoader("data/pretrain", global_batch_size=128, mesh=mesh, seed=0)
    batch = next(loader)          # {"input_ids", "input_mask", "segment_ids"}: int32 [128, L] jax.Arrays,
                                  # sharded along the batch over ("data", "fsdp"), replicated over the other axes
    ckpt["loader"] = loader.state()                 # json-serialisable: next_step, Grain's iterator state, seed, ...
    loader.restore(ckpt["loader"])                  # continues with exactly the batches it would have produced
    batch = loader.batch(step)                      # any step, random access, same result as the iterator

The order, the split over processes and the prefetching are electra_jax.data.stream's (a Grain MapDataset pipeline;
its docstring gives the order). Global example index = position in the shards taken in manifest order; the shards are
read through `ShardSource`, a Grain random-access data source over ArrayRecord readers opened for random access (Grain's
own ArrayRecordDataSource logs an error for every shard written with group_size > 1, and ours are written with 16 for
size and read speed: data/pretraining/records.py). Each process reads only the rows of the global batch that its
devices hold; `local_batch(step)` gives them as numpy, and passing process_index/process_count explicitly simulates
another process layout (numpy only).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from electra_jax import errors
from electra_jax.data.pretraining import RecordError, decode_records, read_manifest
from electra_jax.data.stream import BatchStream, Layout, StreamStateError

LoaderStateError = StreamStateError   # the name callers catch
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # tuned for random access


class DatasetError(errors.Error, ValueError):
  """A built dataset whose shards do not match its manifest, or hold a malformed record; the message names the file."""


class ShardSource:
  """The records of a dataset's shards in manifest order (Grain's RandomAccessDataSource protocol: len, [i], [list])."""

  def __init__(self, dataset_dir: str, manifest: dict[str, Any]):
    from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=import-outside-toplevel
    self._readers, self.files, counts = [], [], []
    for entry in manifest["shards"]:
      path = os.path.join(dataset_dir, entry["file"])
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{dataset_dir}: shard {entry['file']} listed in the manifest is missing")
      reader = ArrayRecordReader(path, _READER_OPTIONS)
      if reader.num_records() != entry["num_examples"]:
        raise DatasetError(f"{path}: {reader.num_records()} records, the manifest says {entry['num_examples']}")
      self._readers.append(reader)
      self.files.append(path)
      counts.append(entry["num_examples"])
    self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def locate(self, indices: np.ndarray) -> np.ndarray:
    """The shard of each global index."""
    return np.searchsorted(self.offsets, indices, side="right") - 1

  def __getitem__(self, index: int) -> bytes:
    return self.__getitems__([index])[0]

  def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
    indices = np.asarray(indices, np.int64)
    shard_of = self.locate(indices)
    records: list[bytes | None] = [None] * len(indices)
    with self._lock:
      for s in np.unique(shard_of):
        where = np.flatnonzero(shard_of == s)
        for i, rec in zip(where, self._readers[s].read((indices[where] - self.offsets[s]).tolist())):
          records[i] = rec
    return records

  def close(self) -> None:
    for reader in self._readers:
      reader.close()
    self._readers = []


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
    self.source = ShardSource(self.dataset_dir, self.manifest)
    self.num_examples = len(self.source)
    if self.num_examples == 0:
      raise DatasetError(f"{self.dataset_dir}: the dataset has no examples")
    self.layout = Layout.of(self.global_batch_size, mesh, batch_axes, process_index=process_index,
                            process_count=process_count)
    self.mesh, self.sharding, self.rows = mesh, self.layout.sharding, self.layout.rows
    self.process_index, self.process_count = self.layout.process_index, self.layout.process_count
    self.simulated = self.layout.simulated
    # read_examples is looked up at each read, so that a test can wrap it
    self.stream = BatchStream(self.num_examples, lambda idx: self.read_examples(idx), self.layout, seed=self.seed,
                              identity={"fingerprint": self.fingerprint}, prefetch=prefetch, start_step=start_step)

  def permutation(self, epoch: int) -> np.ndarray:
    """The visiting order of epoch `epoch` (global example indices)."""
    return self.stream.permutation(epoch)

  def example_indices(self, step: int) -> np.ndarray:
    """Global example indices of this process's rows of batch `step`."""
    return self.stream.example_indices(step)

  def read_examples(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Decoded, padded int32 arrays [len(indices), L] of the given global example indices, in that order."""
    indices = np.asarray(indices, np.int64)
    records = self.source.__getitems__(indices)
    try:
      return decode_records(records, self._id_dtype, self.max_seq_length)
    except RecordError as e:
      s = int(self.source.locate(indices[e.index:e.index + 1])[0])
      position = int(indices[e.index] - self.source.offsets[s])
      raise DatasetError(f"{self.source.files[s]}: record {position}: {e.detail}") from None

  def local_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of batch `step`, as numpy int32 arrays [rows, L]."""
    return self.stream.local_batch(step)

  def batch(self, step: int) -> dict[str, jax.Array]:
    """Global batch `step`: int32 [B, L] jax.Arrays sharded along the batch (random access; no effect on next())."""
    return self.stream.to_global(self.local_batch(step))

  def __iter__(self) -> PretrainingLoader:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self.simulated:   # before reading anything
      return self.stream.to_global({})
    return self.stream.to_global(next(self.stream))

  def close(self) -> None:
    """Stops the prefetch thread (the loader can still be used; iteration restarts it)."""
    self.stream.close()

  def __enter__(self) -> PretrainingLoader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  @property
  def next_step(self) -> int:
    return self.stream.next_step

  @property
  def steps_per_epoch(self) -> float:
    return self.num_examples / self.global_batch_size

  def state(self) -> dict[str, Any]:
    """The iterator position, json-serialisable, for a checkpoint."""
    return self.stream.state()

  def restore(self, state: dict[str, Any]) -> None:
    """Continues from a saved `state()`; raises LoaderStateError when it belongs to another dataset/seed/batch size."""
    what = f"dataset {self.dataset_dir}" if state.get("fingerprint") != self.fingerprint else "this loader"
    self.stream.restore(state, what)
