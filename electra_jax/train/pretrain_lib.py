"""ELECTRA replaced-token-detection pretraining (and the BERT-style MLM baseline): masking, the train step, the loop.

    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=tiny --workdir=/tmp/electra_tiny

    from electra_jax.train import pretrain_lib
    result = pretrain_lib.train_and_evaluate(config, workdir)     # resumes from workdir; returns a TrainResult

    setup = pretrain_lib.build_setup(config, mesh, vocab_size=30522, ids=special_ids(tok))   # pieces, for tests
    state = pretrain_lib.init_state(setup)                          # {"step", "params", "opt_state"}, born sharded
    state, metrics = pretrain_lib.run_step(setup, state, batch, base_key)   # folds base_key with state["step"]

One step (objective "electra", as google-research/electra run_pretraining.py): dynamic masking of ~15% of the real
tokens (masking.py), the generator's MLM loss at the masked positions, replacements sampled from its softmax, the
discriminator's sigmoid BCE at every real token (label 1 where the token changed); loss = 1 * MLM + 50 * RTD. The
objectives and generator switches are composed in electra_jax/train/objectives.py; the step, the state layout,
restore-or-init and saves are electra_jax/train/trainer.py's (gradient accumulation: config.gradient_accumulation_steps
micro-batches per step, the same update as the whole batch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from electra_jax import checkpointing, convert, modeling, ops, sharding
from electra_jax.runtime import distributed
from electra_jax.runtime.compile import LazyStep
from electra_jax.train import flops, generator, loop, metrics as metrics_lib, objectives, phases, pretrain_data
from electra_jax.train.masking import MASKINGS, OBJECTIVES, StepConfig, max_predictions_per_seq
from electra_jax.train.pretrain_data import load_tokenizer, make_loader, prepare_data, strip_accents  # noqa: F401
from electra_jax.train.pretrain_model import SetupError, generator_options, model_configs  # noqa: F401
from electra_jax.train.trainer import Trainer, check_accumulation, check_run, count_params

# What a resumed run must share with the run that saved the checkpoint (recorded in each step's train_meta).
RUN_FIELDS = ("batch_size", "seed", "max_seq_length")


# ------------------------------------------------------------------------------------------------ set-up
@dataclasses.dataclass
class Setup:
  """Everything a training step needs, built once from the config."""
  config: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  disc_config: modeling.ElectraConfig
  gen_config: modeling.ElectraConfig | None
  step_config: StepConfig
  graphdef: nnx.GraphDef
  rest: nnx.State
  trainer: Trainer
  batch_sharding: jax.sharding.NamedSharding
  model_options: dict[str, str] | None = None    # ElectraPretrainingModel's options; None: a plain masked LM
  generator_source: Any = None                    # generator.Source: a frozen generator's weights, set at init

  tx = property(lambda self: self.trainer.tx)
  schedule = property(lambda self: self.trainer.schedule)
  abstract_state = property(lambda self: self.trainer.abstract_state)
  state_shardings = property(lambda self: self.trainer.state_shardings)
  train_step = property(lambda self: self.trainer.train_step)      # jitted, state donated
  init_fn = property(lambda self: self.trainer.init_fn)

  @property
  def model_meta(self) -> dict[str, Any]:
    if self.model_options is None:
      return checkpointing.head_meta("ElectraForMaskedLM", self.disc_config)
    return checkpointing.pretraining_meta(self.disc_config, self.gen_config, options=self.model_options)


def build_mesh(config: Any, devices=None) -> jax.sharding.Mesh:
  return sharding.make_mesh({k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}, devices)


def build_setup(config: Any, mesh: jax.sharding.Mesh, *, vocab_size: int, ids: Mapping[str, int]) -> Setup:
  """Model configs, abstract sharded state, optimizer and the jitted train step for `mesh`."""
  if config.objective not in OBJECTIVES:
    raise SetupError(f"config.objective={config.objective!r}: must be one of {OBJECTIVES}")
  if config.masking not in MASKINGS:
    raise SetupError(f"config.masking={config.masking!r}: must be one of {MASKINGS}")
  if not 0.0 < float(config.mask_prob) < 1.0:
    raise SetupError(f"config.mask_prob={config.mask_prob}: must be in (0, 1)")
  temperature = generator.temperature_schedule(config.generator.get("temperature", 1.0), int(config.num_train_steps))
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  accumulation = int(config.get("gradient_accumulation_steps", 1))
  check_accumulation(int(config.batch_size), accumulation, mesh, rules)
  disc, gen = model_configs(config, vocab_size)
  g = generator_options(config)
  source = generator.frozen_source(config, disc, vocab_size)
  if source is not None:
    gen = source.config
  seed = int(config.seed)
  options = None
  if config.objective != "mlm":
    options = objectives.model_options(config.objective, "none" if source is not None else g["weight_sharing"])

  def make_model():
    if options is None:
      return modeling.ElectraForMaskedLM(disc, rngs=nnx.Rngs(seed))
    return modeling.ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(seed), **options)

  graphdef, abstract_vars, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
  param_shardings = nnx.to_pure_dict(sharding.logical_to_sharding(abstract_vars, mesh, rules))
  abstract_params = nnx.to_pure_dict(abstract_vars)
  tx, schedule = generator.optimizer(config, abstract_params, frozen_generator=source is not None,
                                     two_stage=g["two_stage"])
  step_cfg = StepConfig(
      objective=config.objective, mask_prob=float(config.mask_prob),
      max_predictions=int(config.max_predictions_per_seq) if int(config.max_predictions_per_seq) > 0 else
      max_predictions_per_seq(float(config.mask_prob), int(config.max_seq_length)),
      masking=config.masking, gen_weight=float(config.gen_weight), disc_weight=float(config.disc_weight),
      temperature=temperature, vocab_size=disc.vocab_size, pad_id=ids["pad"], cls_id=ids["cls"],
      sep_id=ids["sep"], mask_id=ids["mask"], sampling=g["sampling"], disallow_correct=g["disallow_correct"],
      two_stage=g["two_stage"], frozen_generator=source is not None)
  two_stage = None
  if g["two_stage"] > 0:
    two_stage = (g["two_stage"], *objectives.two_stage_frozen(abstract_params, g["weight_sharing"]))
  trainer = Trainer.build(
      mesh, rules, abstract_params, param_shardings, tx=tx, schedule=schedule,
      loss_fn=objectives.make_loss_fn(graphdef, rest, step_cfg),
      init_params=lambda: nnx.to_pure_dict(nnx.state(make_model(), nnx.Param)), accumulation_steps=accumulation,
      prepare=objectives.make_prepare_fn(step_cfg), summed=objectives.SUMMED_METRICS, two_stage=two_stage,
      pass_step=True, compiler_options=ops.compiler_options(disc.kernels, mesh.devices.flat[0].platform))
  return Setup(config=config, mesh=mesh, rules=rules, disc_config=disc, gen_config=gen, step_config=step_cfg,
               graphdef=graphdef, rest=rest, trainer=trainer, batch_sharding=sharding.batch_sharding(mesh, rules),
               model_options=options, generator_source=source)


def init_state(setup: Setup) -> dict[str, Any]:
  """A fresh train state, created directly in its sharded layout (a frozen generator holds its source's weights)."""
  state = setup.trainer.init_state()
  if setup.generator_source is not None:
    abstract = setup.abstract_state["params"]["generator"]
    host = jax.tree.map(lambda a, x: np.asarray(x, a.dtype), abstract, setup.generator_source.params)
    state["params"]["generator"] = jax.device_put(host, setup.state_shardings["params"]["generator"])
  return state


def run_step(setup: Setup, state: dict[str, Any], batch: Mapping[str, jax.Array], rng: jax.Array):
  """One train step under the setup's mesh and rules (the loop enters them once instead)."""
  with jax.set_mesh(setup.mesh), sharding.use_rules(setup.rules):
    return setup.train_step(state, dict(batch), rng)


def merge_model(setup: Setup, params: Any) -> nnx.Module:
  return nnx.merge(setup.graphdef, params, setup.rest)


# ------------------------------------------------------------------------------------------------ the run
@dataclasses.dataclass
class TrainResult:
  step: int                        # the last step trained (and checkpointed)
  preempted: bool                  # stopped by SIGTERM / a preemption notice before num_train_steps
  last_metrics: dict[str, float]
  export_dirs: dict[str, str]


def _peak_flops(config: Any) -> float | None:
  peak = float(config.get("peak_flops_per_device", 0.0) or 0.0)
  if peak > 0:
    return peak
  peak = flops.peak_flops_per_device()
  if peak is None and jax.devices()[0].platform == "cpu":
    peak = flops.measure_peak_flops()
    logging.info("measured peak of one CPU device: %.3g FLOP/s (set config.peak_flops_per_device to fix it)", peak)
  return peak


def train_and_evaluate(config: Any, workdir: str) -> TrainResult:
  """Pretrains from config, resuming from `workdir` when it holds a checkpoint; exports HF folders at the end.

  One run per workdir (checkpointing.WorkdirLock). Nothing in the workdir changes until the run is accepted: the
  checkpoint to resume from fits the model and the run's batch size, seed and length (else CheckpointError /
  trainer.ResumeError, with config.json and checkpoints/model_config.json as they were), or there is none and the workdir
  never had one that became unreadable (else CheckpointError unless config.restart_from_scratch).
  """
  workdir = os.path.abspath(workdir)
  total_steps = int(config.num_train_steps)
  if total_steps <= 0:
    raise SetupError(f"config.num_train_steps={total_steps}: must be positive")
  with checkpointing.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir, total_steps)


def _train_and_evaluate(config: Any, workdir: str, total_steps: int) -> TrainResult:
  tok, ids = load_tokenizer(config)
  mesh = build_mesh(config)
  plan = phases.parse(config.get("phases", ""), total_steps, int(config.max_seq_length), int(config.batch_size))
  # one setup per length (the masked positions per sequence follow the length); state and schedule are the same
  setups = {length: build_setup(phases.phase_config(config, next(p for p in plan if p.seq_len == length)), mesh,
                                vocab_size=tok.get_vocab_size(), ids=ids)
            for length in phases.lengths(plan)}
  setup = setups[plan[0].seq_len]
  trainer = setup.trainer
  tokenizer_meta = {"vocab_file": os.path.abspath(pretrain_data.vocab_file(config)),
                    "lowercase": bool(config.data.lower_case),
                    "strip_accents": strip_accents(config.data.get("strip_accents", ""))}
  logging.info("mesh %s; %s parameters", dict(mesh.shape), f"{count_params(setup.abstract_state['params']):,}")
  logging.debug("parameters and shardings:\n%s", sharding.describe(setup.abstract_state["params"]))

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINTS_SUBDIR),
                                    keep=int(config.keep_checkpoints),
                                    model_meta={**setup.model_meta, "tokenizer": tokenizer_meta},
                                    restart_from_scratch=bool(config.get("restart_from_scratch", False)))
  try:
    # Before anything in the workdir changes: a checkpoint of another model or of other run settings, or a workdir
    # whose checkpoints were all set aside as unreadable, refuses the run here.
    restored = trainer.restore(ckpt)
    if restored is not None:
      check_run(restored, {k: int(config[k]) for k in RUN_FIELDS}, ckpt.directory)
    dataset_dirs = pretrain_data.prepare_datasets(config, workdir, phases.lengths(plan))
    meter = metrics_lib.Throughput(tokens_per_step=0, flops_per_step=0.0, num_devices=jax.device_count(),
                                   peak_flops_per_device=_peak_flops(config), total_steps=total_steps)

    def on_phase(p: phases.Phase) -> None:   # the global batch, all micro-batches
      s = setups[p.seq_len]
      meter.tokens_per_step = p.batch_size * p.seq_len
      meter.flops_per_step = flops.train_flops_per_step(
          s.disc_config, s.gen_config, batch_size=p.batch_size, seq_len=p.seq_len,
          num_predictions=s.step_config.max_predictions, objective=config.objective,
          generator_trained=s.generator_source is None)

    data = phases.PhasedData(
        plan, lambda p, position: make_loader(config, dataset_dirs[p.seq_len], setup, batch_size=p.batch_size,
                                              start_step=position),
        {(p.batch_size, p.seq_len): LazyStep(setups[p.seq_len].train_step, name="pretraining step") for p in plan},
        on_phase)
    data.open(restored.step if restored is not None else 0, restored.train_meta if restored is not None else None)
    base_key = jax.random.key(int(config.seed))
    if restored is not None:
      if "rng_key" in restored.train_meta:
        base_key = jax.random.wrap_key_data(np.asarray(restored.train_meta["rng_key"], np.uint32))
  except BaseException:
    ckpt.close()
    raise
  if distributed.is_primary():
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  state, step = trainer.start(ckpt, restored, workdir, lambda: init_state(setup))
  logging.info("resuming at step %d" if restored is not None else "starting from scratch (seed %d)",
               step if restored is not None else int(config.seed))

  writer = metrics_lib.MetricWriter(workdir, resume_step=step)
  if step == 0:
    writer.write_text("config", "```\n" + str(config) + "\n```")
  key_data = np.asarray(jax.random.key_data(base_key)).tolist()
  param_norm = jax.jit(optax.tree.norm)
  save = trainer.saver(ckpt, lambda: {**data.train_meta(), "rng_key": key_data, "seed": int(config.seed),
                                      "run": {k: int(config[k]) for k in RUN_FIELDS}})
  logging.info("training steps %d..%d: batch %d x %d tokens (%d micro-batches), %.3g model FLOPs per step", step + 1,
               total_steps, data.phase.batch_size, data.phase.seq_len,
               int(config.get("gradient_accumulation_steps", 1)), meter.flops_per_step)
  try:
    trained = loop.run(
        loop.Loop(step_fn=data.step_fn, total_steps=total_steps, mesh=mesh,
                  rules=setup.rules, writer=writer, meter=meter, checkpointer=ckpt, save=save,
                  log_every=int(config.log_every_steps), checkpoint_every=int(config.checkpoint_every_steps),
                  # the parameters after the logged step: the state the loop holds then
                  log_extras=lambda state: {"param_norm": param_norm(state["params"])}),
        state, start_step=step, batch_at=data.batch_at, rng=base_key)
  finally:
    data.close()
    ckpt.close()
    writer.close()

  export_dirs: dict[str, str] = {}
  if not trained.preempted and config.get("export", True):
    export_dirs = export_hf(setup, trained.state["params"], os.path.join(workdir, "export"), tokenizer_meta)
  return TrainResult(step=trained.step, preempted=trained.preempted, last_metrics=trained.last_metrics,
                     export_dirs=export_dirs)


def export_hf(setup: Setup, params: Any, out_dir: str, tokenizer_meta: Mapping[str, Any]) -> dict[str, str]:
  """Writes the discriminator and generator (or the MLM model) as HF folders with tokenizer files (process 0)."""
  host = multihost_utils.process_allgather(params, tiled=True) if jax.process_count() > 1 else jax.device_get(params)
  dirs: dict[str, str] = {}
  if not distributed.is_primary():
    return dirs
  model = merge_model(setup, jax.tree.map(jnp.asarray, host))
  parts = model.hf_parts() if isinstance(model, modeling.ElectraPretrainingModel) else {"mlm": model}
  for name, module in parts.items():
    dirs[name] = convert.to_hf(module, os.path.join(out_dir, name), vocab_file=tokenizer_meta["vocab_file"],
                               lowercase=tokenizer_meta["lowercase"], strip_accents=tokenizer_meta["strip_accents"])
    logging.info("exported %s to %s", name, dirs[name])
  return dirs
