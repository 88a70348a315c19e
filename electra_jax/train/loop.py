"""The one training loop, shared by pretraining and fine-tuning.

    step_fn = compile.LazyStep(jax.jit(train_step, donate_argnums=0, ...), name="pretraining step")
    result = loop.run(loop.Loop(step_fn=step_fn, total_steps=T, mesh=mesh, rules=rules, writer=writer, meter=meter,
                                checkpointer=ckpt, save=save, log_every=100, checkpoint_every=1000),
                      state, start_step=restored_step, batch_at=lambda step: next(loader), rng=base_key)

A step is a pure function `(state, batch, rng) -> (state, metrics)` with state = {"step", "params", "opt_state"}
(donated) that folds `rng` with state["step"] itself, so the loop passes the same base key every step and a resumed
run draws what an uninterrupted one draws. Around it the loop does what every trainer needs, in one place:
  * metrics: queued on the device, fetched every `log_every` steps (and before every checkpoint), each step's `loss`
    and `grad_norm` checked for NaN/Inf (NonFiniteLossError names the step and the last checkpoint); the window's mean
    of each metric (the learning rate: its last value) is written with throughput, MFU and ETA (the first step, which
    compiles, is not timed), plus whatever `log_extras(state)` adds (e.g. the parameters' norm);
  * evaluation every `eval_every` steps through `evaluate(step, state) -> {name: value}` (not at the last step: the
    trainer evaluates the final state itself);
  * checkpoints every `checkpoint_every` steps (0: none on the way), at the last step, and when a preemption notice
    arrives (SIGTERM, or JAX's sync point on pods), after which the loop stops early with `preempted=True`; a save
    that fails in the background stops the run at the next step with one line naming the failed save's step, and
    non-finite parameters are never saved (checkpointing.NonFiniteParamsError names the step).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from electra_jax import errors
from electra_jax import sharding
from electra_jax.checkpointing import Checkpointer
from electra_jax.runtime import distributed
from electra_jax.train import metrics as metrics_lib

State = dict[str, Any]
_CHECKED = ("loss", "grad_norm")


class NonFiniteLossError(errors.Error, FloatingPointError):
  """The loss or the gradient norm became NaN or Inf."""


@dataclasses.dataclass
class Loop:
  step_fn: Callable[[State, Mapping[str, jax.Array], jax.Array], tuple[State, dict[str, jax.Array]]]
  total_steps: int
  mesh: jax.sharding.Mesh
  rules: Any
  writer: metrics_lib.MetricWriter
  meter: metrics_lib.Throughput
  checkpointer: Checkpointer
  save: Callable[[int, State], None]              # writes a checkpoint of `state` at a step
  log_every: int = 100
  checkpoint_every: int = 1000                    # 0: only at the last step (and on a preemption notice)
  eval_every: int = 0                             # 0: no evaluation during training
  evaluate: Callable[[int, State], Mapping[str, float]] | None = None
  log_extras: Callable[[State], Mapping[str, float]] | None = None
  name: str = ""                                  # prefix of the console lines, e.g. "[mrpc seed 0]"


@dataclasses.dataclass
class LoopResult:
  state: State
  step: int                                       # the last step trained (and checkpointed)
  preempted: bool                                 # stopped by a preemption notice before total_steps
  last_metrics: dict[str, float]                  # the last logged window's metrics


def _window_means(fetched: list[tuple[int, Mapping[str, Any]]]) -> dict[str, float]:
  out = {k: float(np.mean([float(v[k]) for _, v in fetched])) for k in fetched[-1][1]}
  if "learning_rate" in out:
    out["learning_rate"] = float(fetched[-1][1]["learning_rate"])
  return out


def run(loop: Loop, state: State, *, start_step: int, batch_at: Callable[[int], Mapping[str, jax.Array]],
        rng: jax.Array) -> LoopResult:
  """Trains from `start_step` to `loop.total_steps` (or a preemption notice); see the module docstring."""
  step, total = start_step, loop.total_steps
  log_every = max(1, loop.log_every)
  ckpt_every = loop.checkpoint_every if loop.checkpoint_every > 0 else total + 1   # 0: at the last step only
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  last: dict[str, float] = {}
  prefix = f"{loop.name} " if loop.name else ""

  def flush(log: bool) -> None:
    """Fetches the queued metrics, stops on a non-finite loss (naming the step), writes the window when `log`."""
    nonlocal pending, last
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending = []
    for s, values in fetched:
      for key in _CHECKED:
        if key in values and not math.isfinite(float(values[key])):
          raise NonFiniteLossError(
              f"non-finite {key} ({float(values[key])}) at step {s}{' ' + loop.name if loop.name else ''}: stopping "
              f"(last checkpoint: {loop.checkpointer.latest_step()}); lower learning_rate or check the data")
    if not log:
      return
    s = fetched[-1][0]
    last = _window_means(fetched)
    if loop.log_extras is not None:
      last.update({k: float(v) for k, v in loop.log_extras(state).items()})
    scalars = {**last, **loop.meter.update(s)}
    loop.writer.write_scalars(s, scalars)
    if distributed.is_primary():
      logging.info("%s%s", prefix, metrics_lib.format_step_line(s, total, scalars))

  preempted, timed = False, False
  loop.meter.start(step)
  with jax.set_mesh(loop.mesh), sharding.use_rules(loop.rules):
    while step < total:
      state, out = loop.step_fn(state, batch_at(step), rng)
      step += 1
      pending.append((step, out))
      if not timed:   # the first step compiles: restart the clock after it, so rates and ETA leave it out
        jax.block_until_ready(out)
        loop.meter.start(step)
        timed = True
      stop = loop.checkpointer.preemption_requested(step)
      save = step % ckpt_every == 0 or step == total or stop
      if step % log_every == 0 or step == total or stop:
        flush(log=True)
      elif save:
        flush(log=False)
      if loop.evaluate is not None and loop.eval_every > 0 and step % loop.eval_every == 0 and step < total:
        scores = dict(loop.evaluate(step, state))
        loop.writer.write_scalars(step, scores)
        if distributed.is_primary():
          logging.info("%sstep %d dev: %s", prefix, step, " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
      if save:
        loop.save(step, state)
      if stop and step < total:
        logging.warning("%sstopping at step %d after a preemption notice (checkpoint saved)", prefix, step)
        preempted = True
        break
  return LoopResult(state=state, step=step, preempted=preempted, last_metrics=last)
