"""The pretraining step gives the same loss on a (data=2, fsdp=2, tensor=2) mesh as on one device; the pod presets' mesh
and the rules' handling of dims the mesh does not divide."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import pretrain as pretrain_config
from electra_jax import sharding
from electra_jax.train import pretrain_lib

IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def _config(objective="electra"):
  c = pretrain_config.get_config(f"size=tiny,objective={objective}")
  c.batch_size = 8
  c.max_seq_length = 32
  c.model.hidden_size = 64
  c.model.embedding_size = 32
  c.model.intermediate_size = 128
  c.model.num_attention_heads = 2
  c.optimizer.warmup_steps = 1
  return c


def _batch(b, length, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, 30522, size=(b, length)).astype(np.int32)
  mask = np.ones((b, length), np.int32)
  seg = np.zeros((b, length), np.int32)
  for i in range(b):
    n = int(rng.integers(length // 2, length + 1))
    ids[i, 0], ids[i, n // 2], ids[i, n - 1] = 101, 102, 102
    ids[i, n:], mask[i, n:] = 0, 0
    seg[i, n // 2 + 1:n] = 1
  return {"input_ids": ids, "input_mask": mask, "segment_ids": seg}


def _run(config, mesh, steps=2):
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=30522, ids=IDS)
  state = pretrain_lib.init_state(setup)
  params0 = jax.device_get(state["params"])
  outs = []
  for step in range(steps):
    batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in _batch(config.batch_size,
                                                                             config.max_seq_length, step).items()}
    state, out = pretrain_lib.run_step(setup, state, batch, jax.random.fold_in(jax.random.key(0), step))
    outs.append(jax.device_get(out))
  return params0, outs, jax.device_get(state["params"]), state


@pytest.fixture
def fast_compile():
  """Cheaper XLA compilation (both runs use it, so the comparison is unaffected)."""
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)


@pytest.mark.slow
def test_222_mesh_equals_one_device(fast_compile):
  del fast_compile
  config = _config()
  one = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  eight = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  p1, outs1, end1, _ = _run(config, one)
  p8, outs8, end8, state8 = _run(config, eight)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):   # same initialisation whatever the layout
    np.testing.assert_array_equal(a, b)
  for o1, o8 in zip(outs1, outs8):
    for key in ("loss", "mlm_loss", "rtd_loss", "grad_norm", "disc_accuracy"):
      np.testing.assert_allclose(o8[key], o1[key], rtol=2e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(end1), jax.tree.leaves(end8)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # the state really is sharded over all three axes
  kernel = state8["params"]["discriminator"]["electra"]["encoder"]["layers"]["intermediate"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  words = state8["opt_state"][1].mu["discriminator"]["electra"]["embeddings"]["word_embeddings"]
  assert words.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_pod_presets_shard_state_over_fsdp_and_data_across_slices():
  # base and large: parameters and AdamW state over every device of a slice (fsdp=-1), data = 0 = one per slice;
  # large rematerialises (dots), base does not (launch/tpu_aot.py: both fit a v5e pod so).
  for size, remat in (("base", "none"), ("large", "dots")):
    c = pretrain_config.get_config(f"size={size}")
    assert dict(c.mesh) == {"data": 0, "fsdp": -1, "tensor": 1} and c.model.remat_policy == remat, size
  assert dict(pretrain_config.get_config("size=small").mesh) == {"data": -1, "fsdp": 1, "tensor": 1}
  # On devices of one slice (these CPUs) data=0 is 1 and fsdp takes them all.
  assert sharding.num_slices(jax.devices()) == 1
  assert dict(sharding.make_mesh({"data": 0, "fsdp": -1}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  with pytest.raises(sharding.ShardingError, match="positive or -1"):
    sharding.make_mesh({"data": 2, "fsdp": 0})


def test_a_dim_the_mesh_axes_do_not_divide_keeps_the_axes_that_do():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"))
  spec = lambda shape, axes: sharding.logical_to_spec(axes, rules, mesh, shape)  # noqa: E731
  assert spec((16, 8), ("batch", None)) == P(("data", "fsdp"), None)
  assert spec((6, 8), ("batch", None)) == P("data", None)       # 6 % 8 != 0, 6 % 2 == 0: data alone
  assert spec((5, 8), ("batch", None)) == P(None, None)         # nothing divides 5: replicated
  assert spec((4, 6), (None, "embed")) == P(None, None)
