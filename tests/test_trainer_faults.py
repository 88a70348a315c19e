"""The trainer and checkpoint faults of issue 28 §4: runs that must not mix, non-finite checkpoints, a failed save.

Each test reproduces the probe: a second task or another batch size in a fine-tuning workdir, evaluating a checkpoint
with another task, a non-finite state at a save and a non-finite step at a restart, a pretraining resume with another
length, and a disk that fills during a checkpoint save.
"""

import errno
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath

from electra_jax import checkpointing, sharding
from electra_jax.checkpointing import Checkpointer, CheckpointError, NonFiniteParamsError, SaveError
from electra_jax.eval import evaluation
from electra_jax.eval.tasks import TaskError
from electra_jax.train import finetune_lib, loop, metrics, trainer
from tests.test_finetune import tiny_glue_config


def _state(scale: float):
  params = {"w": jnp.full((64, 32), scale, jnp.float32), "b": jnp.ones((32,), jnp.float32)}
  return params, optax.adam(1e-3).init(params)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


# ------------------------------------------------------------------------------------------------ fine-tuning runs
@pytest.mark.slow
def test_a_finetuning_workdir_refuses_another_task_batch_size_and_evaluation(tmp_path):
  """RTE trained into W: SST-2 into W refuses (naming the task) instead of scoring RTE's model as SST-2's; RTE again
  with another batch size refuses instead of resuming at the wrong data position; evaluating W with task=sst2
  refuses."""
  work = str(tmp_path / "w")
  rte = tiny_glue_config("rte", max_train_examples=16, max_eval_examples=8, num_train_steps=2, predict_test=False)
  first = finetune_lib.train_and_evaluate(rte, work)
  assert first["trials"][0]["steps"] == 2
  meta = checkpointing.read_model_config(os.path.join(work, "seed_0"))
  assert meta["task"] == {"name": "rte", "labels": ["entailment", "not_entailment"]}
  before = {f: os.path.getmtime(os.path.join(work, "seed_0", "checkpoints", f))
            for f in os.listdir(os.path.join(work, "seed_0", "checkpoints"))}

  sst2 = tiny_glue_config("sst2", max_train_examples=16, max_eval_examples=8, num_train_steps=2, predict_test=False)
  with pytest.raises(CheckpointError, match=r"another model .*task .*'rte'.* -> .*'sst2'"):
    finetune_lib.train_and_evaluate(sst2, work)
  bigger = tiny_glue_config("rte", max_train_examples=16, max_eval_examples=8, num_train_steps=2, predict_test=False,
                            batch_size=16)
  with pytest.raises(trainer.ResumeError, match="batch_size changed 8 -> 16"):
    finetune_lib.train_and_evaluate(bigger, work)
  assert {f: os.path.getmtime(os.path.join(work, "seed_0", "checkpoints", f))
          for f in os.listdir(os.path.join(work, "seed_0", "checkpoints"))} == before
  with pytest.raises(TaskError, match="fine-tuned on rte"):
    evaluation.evaluate_checkpoint(sst2, os.path.join(work, "seed_0"), str(tmp_path / "eval"))


def test_an_old_checkpoint_without_a_task_is_refused_by_its_labels(tmp_path):
  class Adapter:   # what _check_task reads of a GLUE adapter
    name = "sst2"
    task = type("T", (), {"label_names": ("negative", "positive")})()

  meta = {"kind": "ElectraForSequenceClassification", "config": {"id2label": {"0": "entailment",
                                                                              "1": "not_entailment"}}}
  with pytest.raises(TaskError, match=r"labels \['entailment', 'not_entailment'\].*sst2"):
    evaluation._check_task(meta, Adapter, "ckpt")   # pylint: disable=protected-access
  evaluation._check_task({"config": {"id2label": {"0": "negative", "1": "positive"}}}, Adapter, "ckpt")


# ------------------------------------------------------------------------------------------------ non-finite states
def _run_loop(tmp_path, ckpt, step_fn, total, every):
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  tr = trainer.Trainer(mesh=mesh, rules=sharding.DEFAULT_RULES, tx=None, schedule=None, abstract_state=None,
                       state_shardings=None, train_step_fn=step_fn, train_step=step_fn, init_fn=None)
  params, opt = _state(1.0)
  return loop.run(
      loop.Loop(step_fn=step_fn, total_steps=total, mesh=mesh, rules=sharding.DEFAULT_RULES,
                writer=metrics.MetricWriter(tmp_path), checkpointer=ckpt,
                meter=metrics.Throughput(tokens_per_step=1, flops_per_step=1.0, num_devices=1,
                                         peak_flops_per_device=None, total_steps=total),
                save=tr.saver(ckpt, lambda: {"seed": 0}), log_every=100, checkpoint_every=every),
      {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt}, start_step=0,
      batch_at=lambda s: {}, rng=jax.random.key(0))


def test_non_finite_parameters_are_never_saved(tmp_path):
  """The loss and gradient norm of the step are finite, but the update overflowed the parameters: the save of that
  step stops the run with one line naming it, and the last checkpoint stays the last finite one."""
  def step_fn(state, batch, rng):
    del batch, rng
    step = state["step"] + 1
    params = jax.tree.map(lambda p: jnp.where(step >= 4, jnp.inf, p + 1.0), state["params"])
    return dict(state, step=step, params=params), {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}

  d = str(tmp_path / "ckpt")
  with Checkpointer(d, handle_sigterm=False, model_meta={"kind": "test"}) as ckpt:
    with pytest.raises(NonFiniteParamsError, match=r"^non-finite parameters at step 4 .*last checkpoint: 2\)"):
      _run_loop(tmp_path, ckpt, step_fn, total=6, every=2)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2]


def test_a_restart_falls_back_from_a_non_finite_step_and_says_so(tmp_path, caplog):
  d = str(tmp_path / "ckpt")
  with Checkpointer(d, handle_sigterm=False, model_meta={"kind": "test"}) as ckpt:
    ckpt.save(1, *_state(1.0), {})
    params, opt = _state(2.0)
    ckpt.save(2, dict(params, w=params["w"].at[0, 0].set(jnp.nan)), opt, {})   # as a run before saves were checked
  with caplog.at_level(logging.WARNING), Checkpointer(d, handle_sigterm=False) as ckpt:
    restored = ckpt.restore(_abstract(_state(1.0)[0]), _abstract(_state(1.0)[1]))
    assert restored.step == 1 and float(restored.params["w"][0, 0]) == 1.0
    assert ckpt.all_steps() == [1] and len(ckpt.set_aside_steps()) == 1
  assert any("2 holds non-finite parameters" in r.getMessage() and "falling back to the previous step" in
             r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------ a failed save
def test_a_full_disk_fails_at_the_save_that_failed_in_one_line(tmp_path, monkeypatch, caplog):
  """The writes of step 2's save hit ENOSPC (in Orbax's background commit): the run stops with one line naming step
  2, at the latest when step 4's save would start, and none of Orbax's tracebacks reach the log."""
  path_cls = type(epath.Path(str(tmp_path)))
  original = path_cls.write_text

  def full_disk(self, *args, **kwargs):
    if "orbax-checkpoint-tmp" in os.fspath(self) and f"{os.sep}2.orbax" in os.fspath(self):
      raise OSError(errno.ENOSPC, "No space left on device")
    return original(self, *args, **kwargs)

  monkeypatch.setattr(path_cls, "write_text", full_disk)
  ran = []

  def step_fn(state, batch, rng):
    del batch, rng
    ran.append(int(state["step"]) + 1)
    return dict(state, step=state["step"] + 1), {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}

  d = str(tmp_path / "ckpt")
  ckpt = Checkpointer(d, handle_sigterm=False, model_meta={"kind": "test"})
  try:
    with caplog.at_level(logging.DEBUG), pytest.raises(SaveError) as failure:
      _run_loop(tmp_path, ckpt, step_fn, total=8, every=2)
  finally:
    ckpt.close()
  message = str(failure.value)
  assert "\n" not in message and "saving checkpoint step 2 " in message and "No space left on device" in message
  assert "it starts from step 0" in message and max(ran) <= 4
  orbax_errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "orbax" in r.pathname]
  assert not orbax_errors, [r.getMessage() for r in orbax_errors]


# ------------------------------------------------------------------------------------------------ pretraining resume
@pytest.mark.slow
def test_a_refused_pretraining_resume_names_the_length_and_changes_nothing(tmp_path):
  """A rerun with another max_seq_length (or batch size, or seed) exits 1 with "max_seq_length changed 64 -> 32",
  before the dataset of the new length is built, and leaves config.json and the checkpoints as they were."""
  from tests import test_reliability as rel  # pylint: disable=import-outside-toplevel
  pre = {"root": tmp_path, "jax_cache": str(tmp_path / "jax_cache"), "data": str(tmp_path / "data")}
  work = tmp_path / "work"
  first = rel._pretrain(pre, work)   # pylint: disable=protected-access
  assert first.returncode == 0, first.stderr[-3000:]
  before, data_before = rel._files(work), sorted(os.listdir(pre["data"]))   # pylint: disable=protected-access
  length = int(__import__("json").loads((work / "config.json").read_text())["max_seq_length"])
  refused = rel._pretrain(pre, work, f"--config.max_seq_length={length // 2}")   # pylint: disable=protected-access
  assert refused.returncode == 1
  assert f"max_seq_length changed {length} -> {length // 2}" in refused.stderr, refused.stderr[-2000:]
  assert "Traceback" not in refused.stderr and "fingerprint" not in refused.stderr
  assert rel._files(work) == before                                          # pylint: disable=protected-access
  assert sorted(os.listdir(pre["data"])) == data_before                      # no dataset built for the new length
  seed = rel._pretrain(pre, work, "--config.seed=3")   # pylint: disable=protected-access
  assert seed.returncode == 1 and "seed changed 0 -> 3" in seed.stderr and rel._files(work) == before
