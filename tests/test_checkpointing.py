"""Checkpointer: sharded save/restore, keep-last-K, corrupt and half-written steps, SIGTERM, params-only tools."""

import glob
import logging
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from electra_jax import sharding
from electra_jax.modeling import ElectraConfig, ElectraForPreTraining, ElectraPretrainingModel, generator_config
from electra_jax import checkpointing
from electra_jax.checkpointing import CheckpointError, Checkpointer

# A failed tensorstore read leaves a callback for asyncio's already-closed loop; harmless, reported as unraisable.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _mesh():
  return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _state(mesh, scale=1.0):
  params = {"dense": {"kernel": jnp.arange(32.0).reshape(8, 4) * scale, "bias": jnp.ones(4) * scale},
            "emb": jnp.arange(16.0).reshape(4, 4) * scale}
  specs = {"dense": {"kernel": P("fsdp", "tensor"), "bias": P()}, "emb": P("data", None)}
  params = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), params, specs,
                        is_leaf=lambda x: isinstance(x, P))
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  return params, opt_state


def _abstract(tree, mesh, spec=None):
  def one(x):
    sh = NamedSharding(mesh, spec) if spec is not None else x.sharding
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)
  return jax.tree.map(one, tree)


def _save_steps(directory, mesh, steps, keep=5):
  with Checkpointer(directory, keep=keep, handle_sigterm=False, model_meta={"kind": "test"}) as ckpt:
    for s in steps:
      params, opt = _state(mesh, scale=float(s))
      assert ckpt.save(s, params, opt, {"loader": {"next_step": s}, "rng_key": [0, s]})
    assert not ckpt.save(steps[-1], params, opt, {})   # an existing step is not saved again


def test_roundtrip_into_another_sharding_and_keep_last(tmp_path):
  mesh = _mesh()
  d = str(tmp_path / "ckpt")
  _save_steps(d, mesh, [1, 2, 3, 4], keep=2)
  params, opt = _state(mesh)
  replicated = P()
  with Checkpointer(d, keep=2, handle_sigterm=False, model_meta={"kind": "test", "v": 2}) as ckpt:   # a rerun
    assert ckpt.all_steps() == [3, 4]
    restored = ckpt.restore(_abstract(params, mesh, replicated), _abstract(opt, mesh))
  assert restored.step == 4
  assert restored.train_meta == {"step": 4, "loader": {"next_step": 4}, "rng_key": [0, 4]}
  np.testing.assert_array_equal(np.asarray(restored.params["dense"]["kernel"]), np.arange(32.0).reshape(8, 4) * 4)
  assert restored.params["dense"]["kernel"].sharding.spec == replicated       # placed as the target asks
  assert restored.opt_state[0].mu["emb"].sharding.spec == P("data", None)
  with open(os.path.join(d, checkpointing.MODEL_CONFIG_FILE), encoding="utf-8") as f:
    assert '"v": 2' in f.read()


def test_empty_directory_restores_nothing(tmp_path):
  mesh = _mesh()
  params, opt = _state(mesh)
  with Checkpointer(str(tmp_path / "none"), handle_sigterm=False) as ckpt:
    assert ckpt.restore(_abstract(params, mesh), _abstract(opt, mesh)) is None


@pytest.mark.parametrize("damage", ["truncate", "delete", "metadata"])
def test_corrupt_latest_step_is_skipped_with_a_warning(tmp_path, caplog, damage):
  mesh = _mesh()
  d = str(tmp_path / "ckpt")
  _save_steps(d, mesh, [1, 2])
  data_files = glob.glob(os.path.join(d, "2", "params", "d", "*"))
  assert data_files
  if damage == "truncate":
    for f in data_files:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif damage == "delete":
    for f in data_files:
      os.remove(f)
  else:
    os.remove(os.path.join(d, "2", "train_meta", "metadata"))
  params, opt = _state(mesh)
  with caplog.at_level(logging.WARNING):
    with Checkpointer(d, handle_sigterm=False) as ckpt:
      restored = ckpt.restore(_abstract(params, mesh), _abstract(opt, mesh))
      assert restored.step == 1
      assert ckpt.all_steps() == [1]
      # training continues: step 2 can be written again
      p1, o1 = _state(mesh, 5.0)
      assert ckpt.save(2, p1, o1, {"loader": {}})
  assert any("incomplete or corrupt" in r.getMessage() and "/2" in r.getMessage() for r in caplog.records)
  np.testing.assert_array_equal(np.asarray(restored.params["emb"]), np.arange(16.0).reshape(4, 4))
  assert glob.glob(os.path.join(d, "2.unreadable-*"))


def test_half_written_orbax_tmp_dir_is_ignored(tmp_path):
  mesh = _mesh()
  d = str(tmp_path / "ckpt")
  _save_steps(d, mesh, [1, 2])
  # A save killed mid-way leaves Orbax's temporary directory behind (here: a copy with a file cut short).
  tmp = os.path.join(d, "3.orbax-checkpoint-tmp-1234")
  shutil.copytree(os.path.join(d, "2"), tmp)
  for f in glob.glob(os.path.join(tmp, "params", "d", "*")):
    with open(f, "r+b") as fh:
      fh.truncate(1)
  params, opt = _state(mesh)
  with Checkpointer(d, handle_sigterm=False) as ckpt:
    restored = ckpt.restore(_abstract(params, mesh), _abstract(opt, mesh))
  assert restored.step == 2
  assert not os.path.exists(tmp)   # cleaned up at start-up


def test_all_steps_corrupt_is_an_error(tmp_path):
  mesh = _mesh()
  d = str(tmp_path / "ckpt")
  _save_steps(d, mesh, [1])
  for f in glob.glob(os.path.join(d, "1", "opt_state", "d", "*")):
    os.remove(f)
  params, opt = _state(mesh)
  with Checkpointer(d, handle_sigterm=False) as ckpt:
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
      ckpt.restore(_abstract(params, mesh), _abstract(opt, mesh))


def test_shape_mismatch_is_a_clear_error_not_corruption(tmp_path):
  mesh = _mesh()
  d = str(tmp_path / "ckpt")
  _save_steps(d, mesh, [1])
  params, opt = _state(mesh)
  wrong = dict(params, emb=jnp.zeros((8, 4)))
  with Checkpointer(d, handle_sigterm=False) as ckpt:
    with pytest.raises(CheckpointError, match=r"does not fit the model.*emb"):
      ckpt.restore(_abstract(wrong, mesh, P()), _abstract(opt, mesh, P()))
    assert ckpt.all_steps() == [1]   # left in place


def test_sigterm_sets_the_preemption_flag_and_close_restores_the_handler(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), handle_sigterm=True)
  assert not ckpt.preemption_requested(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert ckpt.preemption_requested(2)
  ckpt.close()
  assert signal.getsignal(signal.SIGTERM) == before


def _tiny_configs():
  disc = ElectraConfig(vocab_size=40, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=16)
  return disc, generator_config(disc, 0.5)


@pytest.mark.slow
def test_params_tools_roundtrip(tmp_path):
  disc, gen = _tiny_configs()
  model = ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(3))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  meta = checkpointing.pretraining_meta(disc, gen, tokenizer={"vocab_file": "v.txt", "lowercase": True})
  out = checkpointing.save_params(str(tmp_path / "conv"), meta, params)
  got_meta, got = checkpointing.load_params(out)
  assert got_meta == meta
  flat_want = jax.tree_util.tree_leaves_with_path(params)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(got))
  for path, leaf in flat_want:
    assert isinstance(flat_got[path], np.ndarray)
    np.testing.assert_array_equal(flat_got[path], np.asarray(leaf))
  rebuilt = checkpointing.load_model(out)
  assert isinstance(rebuilt, ElectraPretrainingModel)
  ids = jnp.array([[1, 5, 7, 2, 0]])
  np.testing.assert_allclose(np.asarray(rebuilt.discriminator(ids).logits), np.asarray(model.discriminator(ids).logits),
                             rtol=1e-6)
  # one step's directory works too, and a head checkpoint
  _, again = checkpointing.load_params(os.path.join(out, "0"))
  assert jax.tree.structure(again) == jax.tree.structure(got)
  head = ElectraForPreTraining(disc, rngs=nnx.Rngs(0))
  out2 = checkpointing.save_params(str(tmp_path / "head"), checkpointing.head_meta("ElectraForPreTraining", disc),
                                   nnx.to_pure_dict(nnx.state(head, nnx.Param)))
  assert isinstance(checkpointing.load_model(out2), ElectraForPreTraining)
  with pytest.raises(CheckpointError, match="no checkpoint step 7"):
    checkpointing.load_params(out2, step=7)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpointing.load_params(str(tmp_path / "missing"))


def test_load_params_skips_a_corrupt_latest_step(tmp_path, caplog):
  mesh = _mesh()
  d = str(tmp_path / "ckpt")
  _save_steps(d, mesh, [1, 2])
  for f in glob.glob(os.path.join(d, "2", "params", "d", "*")):
    os.remove(f)
  with caplog.at_level(logging.WARNING):
    meta, params = checkpointing.load_params(str(tmp_path / "ckpt"))
  assert meta == {"kind": "test"}
  np.testing.assert_array_equal(params["dense"]["bias"], np.ones(4))   # step 1 (scale 1)
  assert any("incomplete or corrupt" in r.getMessage() for r in caplog.records)
