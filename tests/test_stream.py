"""data/stream.py: the Grain pipeline behind the pretraining loader and fine-tuning's training batches."""

import json

import jax
import numpy as np
import pytest

from electra_jax.data import stream


def _arrays(n=37):
  return {"input_ids": np.arange(n * 4, dtype=np.int32).reshape(n, 4), "label_ids": np.arange(n, dtype=np.int32)}


def _reader(arrays):
  return lambda idx: {k: v[idx] for k, v in arrays.items()}


def test_each_process_reads_only_its_rows_and_they_make_up_the_global_batch():
  arrays = _arrays()
  calls = []

  def read(idx):
    calls.append(len(idx))
    return _reader(arrays)(idx)

  whole = stream.BatchStream(37, _reader(arrays), stream.Layout.of(16, process_index=0, process_count=1), seed=3)
  parts = [stream.BatchStream(37, read, stream.Layout.of(16, process_index=i, process_count=4), seed=3)
           for i in range(4)]
  for step in (0, 2, 9):   # step 2 crosses the first epoch's end
    want = whole.local_batch(step)
    got = [p.local_batch(step) for p in parts]
    for k in want:
      np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), want[k])
  assert set(calls) == {4}   # every read is one process's 4 rows, never the global batch
  order = np.concatenate([whole.example_indices(s) for s in range(7)])   # 112 positions: 3 epochs and a bit
  for e in range(3):
    np.testing.assert_array_equal(order[e * 37:(e + 1) * 37], whole.permutation(e))
    assert sorted(order[e * 37:(e + 1) * 37].tolist()) == list(range(37))
  assert not np.array_equal(whole.permutation(0), whole.permutation(1))


def test_seeds_give_unrelated_orders():
  a = stream.BatchStream(37, _reader(_arrays()), stream.Layout.of(8), seed=0)
  b = stream.BatchStream(37, _reader(_arrays()), stream.Layout.of(8), seed=1)
  # Grain seeds epoch e with seed + e: without the hash, b's epoch 0 would be a's epoch 1
  assert not np.array_equal(b.permutation(0), a.permutation(1))
  assert not np.array_equal(a.permutation(0), b.permutation(0))


def test_array_stream_resumes_from_its_state_and_refuses_another_batch_size():
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  s = stream.array_stream(_arrays(), 8, seed=5, mesh=mesh, batch_axes=("data", "fsdp"))
  for _ in range(3):
    next(s)
  state = json.loads(json.dumps(s.state()))
  assert state["next_step"] == 3 and state["iterator"] == {"next_index": 3} and state["num_examples"] == 37
  want = [next(s) for _ in range(2)]
  s.close()
  resumed = stream.array_stream(_arrays(), 8, seed=5, mesh=mesh, batch_axes=("data", "fsdp"))
  resumed.restore(state)
  for w in want:
    got = resumed.to_global(next(resumed))
    assert got["input_ids"].shape == (8, 4) and len(got["input_ids"].addressable_shards) == 8
    for k in w:
      np.testing.assert_array_equal(np.asarray(got[k]), w[k])
  resumed.close()
  other = stream.array_stream(_arrays(), 16, seed=5)
  with pytest.raises(stream.StreamStateError, match="global_batch_size 8 but this stream has 16"):
    other.restore(state)
  with pytest.raises(stream.StreamStateError, match="num_examples 37"):
    stream.array_stream(_arrays(40), 8, seed=5).restore(state)
  with pytest.raises(stream.StreamStateError, match="orders the examples by"):
    stream.array_stream(_arrays(), 8, seed=5).restore({**state, "order": "numpy-permutation"})
