"""train/loop.py's schedule: when it checkpoints, logs and stops, with a stand-in step (no model)."""

import jax
import jax.numpy as jnp
import pytest

from electra_jax import sharding
from electra_jax.train import loop, metrics


class _NoPreemption:
  def preemption_requested(self, step):
    return False

  def latest_step(self):
    return None


def _run(tmp_path, total, checkpoint_every, log_every=3, step_fn=None):
  saved = []

  def counting_step(state, batch, rng):
    return {"step": state["step"] + 1}, {"loss": jnp.float32(1.0) * batch["x"], "grad_norm": jnp.float32(0.5)}

  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  result = loop.run(
      loop.Loop(step_fn=step_fn or counting_step, total_steps=total, mesh=mesh, rules=sharding.DEFAULT_RULES,
                writer=metrics.MetricWriter(tmp_path), checkpointer=_NoPreemption(),
                meter=metrics.Throughput(tokens_per_step=1, flops_per_step=1.0, num_devices=1,
                                         peak_flops_per_device=None, total_steps=total),
                save=lambda step, state: saved.append(step), log_every=log_every, checkpoint_every=checkpoint_every),
      {"step": jnp.zeros((), jnp.int32)}, start_step=0, batch_at=lambda s: {"x": jnp.float32(s)}, rng=jax.random.key(0))
  return saved, result


@pytest.mark.parametrize("every, expected", [(0, [7]), (3, [3, 6, 7]), (7, [7]), (10, [7])])
def test_checkpoints_every_n_steps_and_at_the_end_and_zero_means_only_at_the_end(tmp_path, every, expected):
  saved, result = _run(tmp_path, total=7, checkpoint_every=every)
  assert saved == expected
  assert result.step == 7 and not result.preempted and int(result.state["step"]) == 7


def test_a_non_finite_loss_names_its_step(tmp_path):
  def step_fn(state, batch, rng):
    loss = jnp.where(batch["x"] == 1.0, jnp.nan, 0.0)   # the second step (x = 1), which the loop counts as step 2
    return state, {"loss": loss, "grad_norm": jnp.float32(0.0)}

  with pytest.raises(loop.NonFiniteLossError, match="non-finite loss .* at step 2"):
    _run(tmp_path, total=5, checkpoint_every=0, log_every=5, step_fn=step_fn)
