"""The trainer under pretraining and fine-tuning: the train state, the step, restore-or-init and the save policy.

    trainer = Trainer.build(mesh, rules, abstract_params, param_shardings, tx=tx, schedule=schedule,
                            loss_fn=loss_fn, init_params=lambda: params_tree, accumulation_steps=K)
    step = compile.LazyStep(trainer.train_step, name="pretraining step")   # jitted once, compiled at first call
    restored = trainer.restore(ckpt)               # refuses another model before anything in the workdir changes
    state, step = trainer.start(ckpt, restored, run_dir)           # or a fresh state, born sharded
    save = trainer.saver(ckpt, train_meta=lambda: {...})           # loop.Loop(save=save, ...)
    state, metrics = step(state, batch, base_key)                  # what loop.run calls

State = {"step", "params", "opt_state"}; shapes come from the model's abstract state, shardings from the rules table
(optimizer state placed like the parameters it mirrors), and init is one jitted program whose outputs are born in
their shards. The step (`make_train_step`) is pure `(state, batch, rng) -> (state, metrics)`: state donated, rng
folded with state["step"], `loss_fn(params, batch, rng, *extra) -> (loss, metrics)` differentiated, the optimizer
applied once. With gradient accumulation (K > 1) the global batch is split into K micro-batches inside the compiled
step (one lax.scan: the activations of one micro-batch live at a time), gradients summed in float32:
  * `prepare(batch, rng) -> batch` first does every random draw that does not depend on the parameters for the whole
    batch (pretraining's masking and sampling noise, and each loss's global denominators as per-row copies), so the
    micro-batches see exactly what the full batch would; the loss is then additive over micro-batches, and the
    metrics named in `summed` add up while the others are averaged;
  * without `prepare` the loss is a mean over equal-weight examples (fine-tuning): gradients and metrics averaged.
Micro-batch k holds rows k, k + K, k + 2K, ... so each keeps the batch spread over every device.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from electra_jax import checkpointing, errors, sharding
from electra_jax.train import metrics as metrics_lib, objectives

State = dict[str, Any]


class TrainerError(errors.Error, ValueError):
  """A training configuration the trainer cannot run (e.g. a batch that does not split into micro-batches)."""


class ResumeError(errors.Error, ValueError):
  """A checkpoint written with other run settings (batch size, seed, length) than the run that would resume it."""


def check_run(restored: checkpointing.Restored, now: Mapping[str, Any], where: str) -> None:
  """Refuses to resume a step whose run settings (train_meta["run"], and "seed") differ from `now`: the data
  position and the random stream would not continue. One line naming each changed field, e.g. "max_seq_length
  changed 128 -> 64"; a field the checkpoint did not record is not compared."""
  saved = dict(restored.train_meta.get("run") or {})
  if "seed" in restored.train_meta and "seed" in now:
    saved.setdefault("seed", restored.train_meta["seed"])
  changed = [f"{k} changed {saved[k]} -> {v}" for k, v in now.items() if k in saved and saved[k] != v]
  if changed:
    raise ResumeError(f"{where}/{restored.step} was saved by a run with other settings: {'; '.join(changed)}; rerun "
                      f"with the saved values, or use a new workdir")


# ------------------------------------------------------------------------------------------------ the step
def split_micro(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [K, B/K, ...] with micro-batch i = rows i, i + K, ... (each device's rows split K ways locally)."""
  y = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
  return sharding.constrain(y, (None, "activation_batch") + (None,) * (x.ndim - 1))


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    accumulation_steps: int = 1, prepare: Callable | None = None, summed: Collection[str] = (),
                    two_stage: tuple[int, Any, Any] | None = None, pass_step: bool = False) -> Callable:
  """train_step(state, batch, rng) -> (state, metrics); the step's randomness is fold_in(rng, state["step"]).
  pass_step: loss_fn(params, batch, rng, step) (a scheduled generator temperature reads it; two_stage implies it).

  two_stage = (N, frozen_in_stage_1, frozen_in_stage_2) (objectives.two_stage_frozen): at step N the discriminator's
  encoder is initialised from the generator's; the frozen parameters of the current stage keep their values (no
  update, no weight decay); loss_fn gets the step.
  """
  k = int(accumulation_steps)
  if k < 1:
    raise TrainerError(f"config.gradient_accumulation_steps={k}: must be >= 1")
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradients(params, batch, rng, extra):
    if k == 1:
      (_, out), grads = grad_fn(params, batch, rng, *extra)
      return grads, out
    if prepare is not None:
      batch = prepare(batch, rng)
    micro = jax.tree.map(lambda x: split_micro(x, k), dict(batch))

    def body(acc, xs):
      i, mb = xs
      (_, out), grads = grad_fn(params, mb, jax.random.fold_in(rng, i), *extra)
      return jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads), out

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grads, outs = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    if prepare is None:   # a mean over examples: the mean over micro-batches of equal size
      grads = jax.tree.map(lambda g: g / k, grads)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    out = {name: (jnp.sum(v, 0) if prepare is not None and name in summed else jnp.mean(v, 0))
           for name, v in outs.items()}
    return grads, out

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])
    params = state["params"]
    extra = (state["step"],) if pass_step or two_stage is not None else ()
    if two_stage is not None:
      params = objectives.copy_generator_into_discriminator(params, state["step"] == two_stage[0])
    grads, out = gradients(params, batch, rng, extra)
    with jax.named_scope("optimizer"):   # names the update's ops in profiles (benchmarks/profile_step.py)
      updates, opt_state = tx.update(grads, state["opt_state"], params)
      new_params = optax.apply_updates(params, updates)
    if two_stage is not None:
      first = state["step"] < two_stage[0]
      new_params = jax.tree.map(lambda f1, f2, old, new: jnp.where(jnp.where(first, f1, f2), old, new),
                                two_stage[1], two_stage[2], params, new_params)
    # The parameters' norm is measured where metrics are logged (loop.Loop.log_extras), not in every step.
    out = dict(out, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state["step"]))
    return {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}, out

  return train_step


# ------------------------------------------------------------------------------------------------ shardings
def state_layout(tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any,
                 mesh: jax.sharding.Mesh) -> tuple[State, State]:
  """(abstract state with shardings, state shardings): optimizer state placed like the parameters it mirrors, its
  counters replicated."""
  replicated = sharding.replicated(mesh)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  # a MaskedNode stands where a parameter group's optimizer (optim.create_groups) holds nothing: kept as it is
  opt_shardings = optax.tree_map_params(tx, lambda x, s: x if isinstance(x, optax.MaskedNode) else s, abstract_opt,
                                        param_shardings, transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, (jax.sharding.Sharding, optax.MaskedNode)))
  shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                           "opt_state": abstract_opt}, shardings)
  return abstract, shardings


def check_accumulation(batch_size: int, k: int, mesh: jax.sharding.Mesh, rules: Any) -> None:
  """The global batch splits into K micro-batches that each still split over the mesh's batch shards."""
  shards = sharding.batch_shards(mesh, rules)
  if k < 1:
    raise TrainerError(f"config.gradient_accumulation_steps={k}: must be >= 1")
  if batch_size % (k * shards):
    raise TrainerError(f"config.batch_size={batch_size} is not divisible by config.gradient_accumulation_steps={k} "
                       f"x {shards} batch shards of the mesh {dict(mesh.shape)}")


# ------------------------------------------------------------------------------------------------ the trainer
@dataclasses.dataclass
class Trainer:
  """One model's train state layout, jitted step and state initialiser on a mesh."""
  mesh: jax.sharding.Mesh
  rules: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: State
  state_shardings: State
  train_step_fn: Callable          # the pure step before jit (for tools that trace it)
  train_step: Callable             # jitted, state donated (loops wrap it in compile.LazyStep)
  init_fn: Callable | None         # jitted () -> state, born sharded; None without init_params

  @classmethod
  def build(cls, mesh, rules, abstract_params: Any, param_shardings: Any, *, tx: optax.GradientTransformation,
            schedule: optax.Schedule, loss_fn: Callable, init_params: Callable[[], Any] | None = None,
            accumulation_steps: int = 1, prepare: Callable | None = None, summed: Collection[str] = (),
            two_stage: tuple[int, Any, Any] | None = None, pass_step: bool = False,
            compiler_options: Mapping[str, Any] | None = None) -> "Trainer":
    abstract, shardings = state_layout(tx, abstract_params, param_shardings, mesh)
    step_fn = make_train_step(loss_fn, tx, schedule, accumulation_steps=accumulation_steps, prepare=prepare,
                              summed=summed, two_stage=two_stage, pass_step=pass_step)
    # compiler_options: the XLA options of the kernel forms for the mesh's platform (ops.compiler_options)
    jitted = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(shardings, sharding.replicated(mesh)),
                     compiler_options=dict(compiler_options) if compiler_options else None)
    init_fn = None
    if init_params is not None:
      def init():
        params = init_params()
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
      init_fn = jax.jit(init, out_shardings=shardings)
    return cls(mesh=mesh, rules=rules, tx=tx, schedule=schedule, abstract_state=abstract, state_shardings=shardings,
               train_step_fn=step_fn, train_step=jitted, init_fn=init_fn)

  def in_mesh(self, fn: Callable) -> Callable:
    def wrapped(*args):
      with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
        return fn(*args)
    return wrapped

  def init_state(self) -> State:
    """A fresh state from init_params, created directly in its sharded layout."""
    return self.in_mesh(self.init_fn)()

  def state_from(self, params: Any, step: int = 0) -> State:
    """A fresh optimizer state around `params` (already placed), placed like the step's outputs."""
    with jax.set_mesh(self.mesh):
      opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
    return {"step": self.step_array(step), "params": params, "opt_state": opt_state}

  def step_array(self, step: int) -> jax.Array:
    return jax.device_put(jnp.asarray(step, jnp.int32), self.state_shardings["step"])

  # -------------------------------------------------------------- restore-or-init
  def restore(self, ckpt: checkpointing.Checkpointer) -> checkpointing.Restored | None:
    """The latest usable step read straight into the state's shards, or None; a checkpoint of another model (or a
    workdir whose steps were all set aside) refuses the run here, before anything in the workdir changes."""
    return ckpt.restore(self.abstract_state["params"], self.abstract_state["opt_state"])

  def start(self, ckpt: checkpointing.Checkpointer, restored: checkpointing.Restored | None, run_dir: str,
            init: Callable[[], State] | None = None, label: str = "") -> tuple[State, int]:
    """(state, step) to train from: the restored step, or a fresh state (`init`, else init_state). Starting over
    where earlier steps were set aside (restart_from_scratch) keeps the earlier metrics in an archive."""
    prefix = f"{label}: " if label else ""
    if restored is not None:
      state = {"step": self.step_array(restored.step), "params": restored.params, "opt_state": restored.opt_state}
      return state, restored.step
    if ckpt.set_aside_steps():
      kept = metrics_lib.archive(run_dir, "before-restart")
      if kept:
        logging.warning("%sstarting over from step 0 (restart_from_scratch); the earlier metrics are in %s", prefix,
                        kept)
    return (init() if init is not None else self.init_state()), 0

  # -------------------------------------------------------------- the save policy
  def saver(self, ckpt: checkpointing.Checkpointer, train_meta: Callable[[], Mapping[str, Any]],
            host_copies: bool = False) -> Callable[[int, State], None]:
    """save(step, state) for loop.Loop: refuses non-finite parameters (NonFiniteParamsError naming the step);
    fingerprints are taken on device; with host_copies (one process, small models) Orbax gets numpy copies, which
    spares it compiling a slice per replicated array shape."""
    def save(at: int, state: State) -> None:
      params, opt_state = state["params"], state["opt_state"]
      ckpt.check_finite(at, params)   # never a non-finite step: the restart would trust it
      fingerprints = checkpointing.state_fingerprints(params, opt_state)
      if host_copies and jax.process_count() == 1:
        params, opt_state = jax.device_get((params, opt_state))
      ckpt.save(at, params, opt_state, dict(train_meta()), fingerprints=fingerprints)
    return save


def count_params(abstract_params: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params))
