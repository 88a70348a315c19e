"""Tests of PretrainingLoader (electra_jax/data/loader.py) on 8 simulated CPU devices."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from electra_jax.data import pretraining as pt
from electra_jax.data.loader import LoaderStateError, PretrainingLoader
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def vocab():
  return str(shared_data("vocab/bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def wiki_dataset(tmp_path_factory, vocab):
  wiki = shared_data("corpus/wikitext-2-raw/wiki.valid.raw")
  corpus = tmp_path_factory.mktemp("corpus") / "prefix.raw"
  corpus.write_text("".join(open(wiki).readlines()[:600]))  # a prefix: ~10 articles, ~270 examples
  out = tmp_path_factory.mktemp("wiki")
  pt.build_dataset(str(corpus), vocab, out, 64, num_shards=5)
  return out


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, vocab):
  """A few dozen short examples (one per document), some shards empty."""
  corpus = tmp_path_factory.mktemp("small") / "c.txt"
  corpus.write_text("\n\n".join(f"Document number {i} says hello ." for i in range(37)) + "\n")
  out = tmp_path_factory.mktemp("small_out")
  manifest = pt.build_dataset(str(corpus), vocab, out, 16, num_shards=40)
  assert manifest["num_examples"] == 37 and any(s["num_examples"] == 0 for s in manifest["shards"])
  return out


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def as_numpy(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


def test_batches_are_global_arrays_sharded_over_the_mesh(wiki_dataset, mesh):
  with PretrainingLoader(wiki_dataset, 8, mesh, seed=3) as loader:
    batch = next(loader)
    assert set(batch) == {"input_ids", "input_mask", "segment_ids"}
    for v in batch.values():
      assert isinstance(v, jax.Array) and v.shape == (8, 64) and v.dtype == np.int32
      assert v.sharding.is_equivalent_to(NamedSharding(mesh, P(("data", "fsdp"))), 2)
      assert len(v.addressable_shards) == 8 and all(s.data.shape == (2, 64) for s in v.addressable_shards)
    expected = loader.read_examples(loader.example_indices(0))
    for k, v in as_numpy(batch).items():
      np.testing.assert_array_equal(v, expected[k])
    assert (batch["input_ids"][:, 0] == 101).all()
    np.testing.assert_array_equal(as_numpy(loader.batch(1))["input_ids"], as_numpy(next(loader))["input_ids"])


def test_order_is_deterministic_and_seeded(wiki_dataset, mesh):
  a = PretrainingLoader(wiki_dataset, 8, mesh, seed=0)
  b = PretrainingLoader(wiki_dataset, 8, mesh, seed=0, prefetch=0)
  c = PretrainingLoader(wiki_dataset, 8, mesh, seed=1)
  first = [as_numpy(next(a)) for _ in range(3)]
  for batch in first:
    np.testing.assert_array_equal(batch["input_ids"], np.asarray(next(b)["input_ids"]))
  assert not np.array_equal(first[0]["input_ids"], np.asarray(next(c)["input_ids"]))
  for loader in (a, b, c):
    loader.close()


def test_epochs_are_permutations_and_batches_cross_them(small_dataset):
  loader = PretrainingLoader(small_dataset, 8, seed=5, process_count=1, process_index=0)
  n = loader.num_examples
  order = np.concatenate([loader.example_indices(s) for s in range(14)])  # 112 positions: 3 epochs and a bit
  for e in range(3):
    epoch = order[e * n:(e + 1) * n]
    np.testing.assert_array_equal(epoch, loader.permutation(e))
    assert sorted(epoch.tolist()) == list(range(n))
  assert not np.array_equal(loader.permutation(0), loader.permutation(1))
  # Step 4 holds positions 32..39: the last 5 of epoch 0, then the first 3 of epoch 1.
  np.testing.assert_array_equal(loader.example_indices(4),
                                np.concatenate([loader.permutation(0)[32:], loader.permutation(1)[:3]]))
  texts = {tuple(row) for row in loader.read_examples(np.arange(n))["input_ids"]}
  assert len(texts) == n  # every example is a different document


def test_resume_from_saved_state_gives_identical_batches(wiki_dataset, mesh):
  loader = PretrainingLoader(wiki_dataset, 8, mesh, seed=7, prefetch=3)
  for _ in range(5):
    next(loader)
  state = json.loads(json.dumps(loader.state()))
  assert state["next_step"] == 5 and state["seed"] == 7
  expected = [as_numpy(next(loader)) for _ in range(3)]
  resumed = PretrainingLoader(wiki_dataset, 8, mesh, seed=7)
  resumed.restore(state)
  for want in expected:
    got = as_numpy(next(resumed))
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  loader.restore(state)  # rewinding a loader whose prefetch thread ran ahead
  np.testing.assert_array_equal(np.asarray(next(loader)["input_ids"]), expected[0]["input_ids"])
  assert loader.state()["next_step"] == 6
  loader.close()
  resumed.close()


def test_restore_rejects_foreign_state(wiki_dataset, small_dataset, mesh):
  loader = PretrainingLoader(wiki_dataset, 8, mesh, seed=0, prefetch=0)
  other = PretrainingLoader(small_dataset, 8, mesh, seed=0, prefetch=0)
  with pytest.raises(LoaderStateError, match="fingerprint"):
    loader.restore(other.state())
  with pytest.raises(LoaderStateError, match="seed"):
    loader.restore({**loader.state(), "seed": 1})
  with pytest.raises(LoaderStateError, match="global_batch_size"):
    loader.restore({**loader.state(), "global_batch_size": 16})
  with pytest.raises(LoaderStateError, match="next_step"):
    loader.restore({**loader.state(), "next_step": -1})


@pytest.mark.parametrize("processes", [2, 4])
def test_process_slices_make_up_the_global_batch(wiki_dataset, mesh, processes):
  whole = PretrainingLoader(wiki_dataset, 16, mesh, seed=2, prefetch=0)
  parts = [PretrainingLoader(wiki_dataset, 16, seed=2, process_index=i, process_count=processes, prefetch=0)
           for i in range(processes)]
  for step in (0, 3, 40):  # 40 crosses an epoch end
    want = as_numpy(whole.batch(step))
    slices = [p.local_batch(step) for p in parts]
    assert all(s["input_ids"].shape == (16 // processes, 64) for s in slices)
    for k in want:
      np.testing.assert_array_equal(np.concatenate([s[k] for s in slices]), want[k])
  with pytest.raises(RuntimeError, match="simulates process"):
    next(parts[0])


def test_layout_errors(wiki_dataset, mesh):
  with pytest.raises(ValueError, match=r"does not divide evenly over the batch-sharding mesh axes"):
    PretrainingLoader(wiki_dataset, 6, mesh)
  with pytest.raises(ValueError, match="does not divide evenly over 4 processes"):
    PretrainingLoader(wiki_dataset, 6, process_index=0, process_count=4)
  with pytest.raises(ValueError, match=r"batch axes \['expert'\] are not axes"):
    PretrainingLoader(wiki_dataset, 8, mesh, batch_axes=("data", "expert"))
  with pytest.raises(ValueError, match="process_index 2 is not in"):
    PretrainingLoader(wiki_dataset, 8, process_index=2, process_count=2)


def test_dataset_errors(tmp_path, small_dataset):
  with pytest.raises(pt.IncompleteDatasetError, match="manifest.json is missing"):
    PretrainingLoader(tmp_path, 8)
  broken = tmp_path / "broken"
  broken.mkdir()
  manifest = pt.read_manifest(small_dataset)
  for shard in manifest["shards"][1:]:
    os.symlink(os.path.join(small_dataset, shard["file"]), broken / shard["file"])
  (broken / pt.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(FileNotFoundError, match=f"shard {manifest['shards'][0]['file']} listed in the manifest"):
    PretrainingLoader(broken, 8)
  empty = next(s["file"] for s in manifest["shards"] if s["num_examples"] == 0)
  assert manifest["shards"][0]["num_examples"] > 0
  os.symlink(os.path.join(small_dataset, empty), broken / manifest["shards"][0]["file"])
  with pytest.raises(ValueError, match="records, the manifest says"):
    PretrainingLoader(broken, 8)


def test_background_errors_reach_the_caller(small_dataset):
  loader = PretrainingLoader(small_dataset, 8, seed=0)
  real = loader.read_examples

  def failing(indices):
    if np.array_equal(indices, loader.example_indices(2)):
      raise OSError("disk gone")
    return real(indices)

  loader.read_examples = failing
  next(loader)
  next(loader)
  with pytest.raises(OSError, match="disk gone"):
    next(loader)
  assert loader.state()["next_step"] == 2


@pytest.mark.parametrize("rule,spec", [(["data", "fsdp"], P(("data", "fsdp"))), (["data"], P(("data",))),
                                       (["fsdp", "tensor"], P(("fsdp", "tensor")))])
def test_pretraining_batches_follow_the_rules_table(small_dataset, rule, spec):
  """config.sharding_rules' activation_batch decides how the trainer's loader splits batches over the mesh."""
  from configs import pretrain as pretrain_config
  from electra_jax import sharding
  from electra_jax.train import pretrain_lib
  config = pretrain_config.get_config("size=tiny")
  config.batch_size, config.max_seq_length = 8, 16
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  config.sharding_rules = [[name, rule if name == "activation_batch" else axes]
                           for name, axes in config.sharding_rules]
  setup = pretrain_lib.build_setup(config, pretrain_lib.build_mesh(config), vocab_size=30522,
                                   ids={"pad": 0, "cls": 101, "sep": 102, "mask": 103})
  assert setup.batch_sharding.spec[0] in (spec[0], spec[0][0])
  with pretrain_lib.make_loader(config, str(small_dataset), setup) as loader:
    batch = next(loader)
  assert batch["input_ids"].sharding.spec == spec
  axes = (spec[0],) if isinstance(spec[0], str) else spec[0]
  ways = int(np.prod([setup.mesh.shape[a] for a in axes]))
  assert len({str(s.index) for s in batch["input_ids"].addressable_shards}) == ways
