"""ELECTRA replaced-token-detection pretraining (and the BERT-style MLM baseline): masking, the train step, the loop.

    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=tiny --workdir=/tmp/electra_tiny

    from electra_jax.train import pretrain_lib
    result = pretrain_lib.train_and_evaluate(config, workdir)     # resumes from workdir; returns a TrainResult

    setup = pretrain_lib.build_setup(config, mesh, vocab_size=30522, ids=special_ids(tok))   # pieces, for tests
    state = pretrain_lib.init_state(setup)                          # {"step", "params", "opt_state"}, born sharded
    state, metrics = setup.train_step(state, batch, jax.random.fold_in(base_key, step))

One step (objective "electra", as google-research/electra run_pretraining.py):
  1. dynamic masking: per sequence, n = min(P, max(1, round(mask_prob * #real tokens))) positions ([CLS]/[SEP] count
     as real tokens but are never chosen, nor [MASK] or padding), P = max_predictions_per_seq = int((mask_prob + 0.005)
     * max_seq_length); 85% of them become [MASK], 15% keep their token (masking="bert": 80% [MASK], 10% a random
     token, 10% kept). Positions are drawn without replacement (Gumbel top-k); the original draws with replacement
     (tf.random.categorical), so it occasionally masks fewer distinct tokens. Positions are a fixed [B, P] array with
     weights 0 on the unused slots;
  2. the generator predicts the masked tokens (vocabulary logits only at those P positions): MLM loss = mean CE over
     the weighted positions;
  3. replacements are sampled from softmax(generator logits / temperature) under stop_gradient (by inverting the
     CDF with one uniform per position: the distribution of the original's Gumbel-max, at a fraction of its cost);
  4. the discriminator sees the corrupted sequence; label 1 where the token was replaced AND differs from the original;
     RTD loss = sigmoid BCE averaged over the real tokens;
  5. loss = gen_weight * MLM + disc_weight * RTD (1 and 50). Objective "mlm": BERT-style masked LM of a
     discriminator-size ElectraForMaskedLM (steps 1-2 only).
The other objectives (electra_15, replace_mlm, all_tokens_mlm, electric) and the generator switches (sampling,
disallow_correct, weight_sharing, two_stage) are composed in electra_jax/train/objectives.py.
Discriminator AUC is computed on device from a fixed-bin histogram of the step's logits (4096 bins over [-16, 16]):
pairs in the same bin count 1/2, so it is the exact AUC of logits rounded to 1/128.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from electra_jax import checkpointing, convert, modeling, ops, sharding
from electra_jax.data import pretraining, tokenization
from electra_jax.data.loader import PretrainingLoader
from electra_jax.runtime import distributed
from electra_jax.runtime.compile import LazyStep
from electra_jax.train import flops, loop, metrics as metrics_lib, objectives, optim
from electra_jax.train.masking import MASKINGS, OBJECTIVES, SAMPLINGS, StepConfig, max_predictions_per_seq



def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    two_stage: tuple[int, Any, Any] | None = None) -> Callable:
  """train_step(state, batch, rng) -> (state, metrics); state = {"step", "params", "opt_state"}; the step's
  randomness is fold_in(rng, state["step"]), so the loop passes one base key.

  two_stage = (N, frozen_in_stage_1, frozen_in_stage_2) (objectives.two_stage_frozen): at step N the discriminator's
  encoder is initialised from the generator's; the frozen parameters of the current stage keep their values (no
  update, no weight decay); loss_fn gets the step. The loop needs nothing else."""

  def train_step(state, batch, rng):
    rng = jax.random.fold_in(rng, state["step"])
    params = state["params"]
    extra = ()
    if two_stage is not None:
      params = objectives.copy_generator_into_discriminator(params, state["step"] == two_stage[0])
      extra = (state["step"],)
    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, *extra)
    with jax.named_scope("optimizer"):   # names the update's ops in profiles (benchmarks/profile_step.py)
      updates, opt_state = tx.update(grads, state["opt_state"], params)
      new_params = optax.apply_updates(params, updates)
    if two_stage is not None:
      first = state["step"] < two_stage[0]
      new_params = jax.tree.map(lambda f1, f2, old, new: jnp.where(jnp.where(first, f1, f2), old, new),
                                two_stage[1], two_stage[2], params, new_params)
    params = new_params
    # The parameters' norm is measured where metrics are logged (loop.Loop.log_extras), not in every step: nobody
    # reads it in between (benchmarks/README.md, change 17).
    out.update(grad_norm=optax.tree.norm(grads), learning_rate=schedule(state["step"]))
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, out

  return train_step


# ------------------------------------------------------------------------------------------------ set-up
def model_configs(config: Any, vocab_size: int) -> tuple[modeling.ElectraConfig, modeling.ElectraConfig | None]:
  """(discriminator or MLM config, generator config or None) from config.model / config.generator."""
  m = config.model
  if int(m.get("vocab_size", 0) or 0) not in (0, vocab_size):
    raise ValueError(f"config.model.vocab_size={m.vocab_size} but the vocab file has {vocab_size} tokens")
  heads = int(m.get("num_attention_heads", 0) or 0) or max(1, m.hidden_size // 64)
  objective = config.objective
  disc = modeling.ElectraConfig(
      vocab_size=vocab_size, embedding_size=int(m.embedding_size or m.hidden_size), hidden_size=int(m.hidden_size),
      num_hidden_layers=int(m.num_hidden_layers), num_attention_heads=heads,
      intermediate_size=int(m.get("intermediate_size", 0) or 4 * m.hidden_size),
      hidden_dropout_prob=float(m.hidden_dropout_prob),
      attention_probs_dropout_prob=float(m.attention_probs_dropout_prob),
      max_position_embeddings=int(m.max_position_embeddings), dtype=config.dtype, param_dtype=config.param_dtype,
      scan_layers=bool(config.scan_layers), remat_policy=config.remat_policy, kernels=config.get("kernels", "auto"),
      architectures=(("ElectraForMaskedLM",) if objective in ("mlm", "replace_mlm", "all_tokens_mlm") else
                     ("ElectraForPreTraining",)))
  if disc.max_position_embeddings < config.max_seq_length:
    raise ValueError(f"max_seq_length={config.max_seq_length} exceeds config.model.max_position_embeddings="
                     f"{disc.max_position_embeddings}")
  g = generator_options(config)
  if objective == "mlm" or g["sampling"] == "uniform":
    return disc, None
  fractions = (float(config.generator.hidden_fraction), float(config.generator.layers_fraction))
  if g["weight_sharing"] == "all" or g["two_stage"] > 0:
    what = "generator.weight_sharing='all'" if g["weight_sharing"] == "all" else "two_stage"
    if fractions != (1.0, 1.0):
      raise ValueError(f"{what} needs the generator the discriminator's size: set generator.hidden_fraction=1 and "
                       f"generator.layers_fraction=1 (they are {fractions[0]} and {fractions[1]})")
    gen = disc.replace(architectures=("ElectraForMaskedLM",))
  else:
    gen = modeling.generator_config(disc, *fractions)
  if g["weight_sharing"] == "none" and g["two_stage"] == 0:
    # the original's untied generator (untied_generator_embeddings=True) builds its own embeddings at its own width
    # (embedding_size=None -> hidden size), without a projection; two_stage keeps the discriminator's width so that
    # the generator's encoder can be copied into it
    gen = gen.replace(embedding_size=gen.hidden_size)
  return disc, gen


def generator_options(config: Any) -> dict[str, Any]:
  """config.generator's sampling / disallow_correct / weight_sharing and config.two_stage, validated."""
  gen = config.generator
  out = {"sampling": str(gen.get("sampling", "model")), "disallow_correct": bool(gen.get("disallow_correct", False)),
         "weight_sharing": str(gen.get("weight_sharing", "embeddings")), "two_stage": int(config.get("two_stage", 0))}
  if out["sampling"] not in SAMPLINGS:
    raise ValueError(f"config.generator.sampling={out['sampling']!r}: must be one of {SAMPLINGS}")
  if out["weight_sharing"] not in modeling.WEIGHT_SHARING:
    raise ValueError(f"config.generator.weight_sharing={out['weight_sharing']!r}: must be one of "
                     f"{modeling.WEIGHT_SHARING}")
  objective = config.objective
  if out["sampling"] == "uniform" and objective not in ("electra", "electra_15", "replace_mlm", "all_tokens_mlm"):
    raise ValueError(f"config.generator.sampling='uniform' with objective {objective!r}: uniform replacements need an "
                     f"objective that samples (electra, electra_15, replace_mlm, all_tokens_mlm)")
  if out["weight_sharing"] == "all" and objective == "electric":
    raise ValueError("config.generator.weight_sharing='all' with objective 'electric': the two-tower generator is "
                     "causal and cannot be the discriminator")
  if out["two_stage"] < 0:
    raise ValueError(f"config.two_stage={out['two_stage']}: must be >= 0 (0 = off)")
  if out["two_stage"] > 0:
    if objective != "electra" or out["sampling"] != "model" or out["weight_sharing"] == "all":
      raise ValueError("config.two_stage needs objective 'electra', generator.sampling='model' and "
                       "generator.weight_sharing 'embeddings' or 'none'")
    if out["two_stage"] >= int(config.num_train_steps):
      raise ValueError(f"config.two_stage={out['two_stage']} leaves no discriminator steps "
                       f"(num_train_steps={config.num_train_steps})")
  return out


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
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: dict[str, Any]
  state_shardings: dict[str, Any]
  batch_sharding: jax.sharding.NamedSharding
  train_step: Callable
  init_fn: Callable
  model_options: dict[str, str] | None = None    # ElectraPretrainingModel's options; None: a plain masked LM

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
    raise ValueError(f"config.objective={config.objective!r}: must be one of {OBJECTIVES}")
  if config.masking not in MASKINGS:
    raise ValueError(f"config.masking={config.masking!r}: must be one of {MASKINGS}")
  if not 0.0 < float(config.mask_prob) < 1.0:
    raise ValueError(f"config.mask_prob={config.mask_prob}: must be in (0, 1)")
  if not float(config.temperature) > 0.0:
    raise ValueError(f"config.temperature={config.temperature}: must be positive")
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  disc, gen = model_configs(config, vocab_size)
  g = generator_options(config)
  seed = int(config.seed)
  options = None
  if config.objective != "mlm":
    options = objectives.model_options(config.objective, g["weight_sharing"])

  def make_model():
    if options is None:
      return modeling.ElectraForMaskedLM(disc, rngs=nnx.Rngs(seed))
    return modeling.ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(seed), **options)

  graphdef, abstract_vars, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
  param_shardings = nnx.to_pure_dict(sharding.logical_to_sharding(abstract_vars, mesh, rules))
  abstract_params = nnx.to_pure_dict(abstract_vars)
  if g["two_stage"] > 0:
    tx, schedule = _two_stage_optimizer(config, g["two_stage"])
  else:
    tx, schedule = optim.create(config.optimizer, abstract_params, learning_rate=float(config.learning_rate),
                                num_train_steps=int(config.num_train_steps))
  replicated = sharding.replicated(mesh)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                                 "opt_state": abstract_opt}, state_shardings)
  step_cfg = StepConfig(
      objective=config.objective, mask_prob=float(config.mask_prob),
      max_predictions=int(config.max_predictions_per_seq) if int(config.max_predictions_per_seq) > 0 else
      max_predictions_per_seq(float(config.mask_prob), int(config.max_seq_length)),
      masking=config.masking, gen_weight=float(config.gen_weight), disc_weight=float(config.disc_weight),
      temperature=float(config.temperature), vocab_size=disc.vocab_size, pad_id=ids["pad"], cls_id=ids["cls"],
      sep_id=ids["sep"], mask_id=ids["mask"], sampling=g["sampling"], disallow_correct=g["disallow_correct"],
      two_stage=g["two_stage"])
  loss_fn = objectives.make_loss_fn(graphdef, rest, step_cfg)
  two_stage = None
  if g["two_stage"] > 0:
    two_stage = (g["two_stage"], *objectives.two_stage_frozen(abstract_params, g["weight_sharing"]))
  # XLA options of the kernel forms for this mesh's platform ({} on CPU and TPU; electra_jax/ops).
  options = ops.compiler_options(disc.kernels, mesh.devices.flat[0].platform)
  train_step = jax.jit(make_train_step(loss_fn, tx, schedule, two_stage), donate_argnums=(0,),
                       out_shardings=(state_shardings, replicated), compiler_options=options or None)

  def init():
    model = make_model()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  init_fn = jax.jit(init, out_shardings=state_shardings)
  return Setup(config=config, mesh=mesh, rules=rules, disc_config=disc, gen_config=gen, step_config=step_cfg,
               graphdef=graphdef, rest=rest, tx=tx, schedule=schedule, abstract_state=abstract_state,
               state_shardings=state_shardings, batch_sharding=sharding.batch_sharding(mesh, rules),
               train_step=train_step, init_fn=init_fn, model_options=options)


def _two_stage_optimizer(config: Any, first: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW as optim.create builds it, with the warmup-and-decay schedule restarted for each stage (each stage is a
  training run of its own: N generator steps, then num_train_steps - N discriminator steps)."""
  o, total, lr = config.optimizer, int(config.num_train_steps), float(config.learning_rate)

  def stage(steps):
    return optim.warmup_decay_schedule(lr, steps, optim.resolve_warmup(o, steps),
                                       power=float(o.get("lr_decay_power", 1.0)),
                                       end_learning_rate=float(o.get("end_learning_rate", 0.0)),
                                       kind=str(o.get("schedule", "multiply")))

  schedule = optax.join_schedules([stage(first), stage(total - first)], [first])
  tx = optim.adamw(schedule, b1=float(o.get("b1", 0.9)), b2=float(o.get("b2", 0.999)), eps=float(o.get("eps", 1e-6)),
                   weight_decay=float(o.get("weight_decay", 0.01)), mask=optim.weight_decay_mask,
                   clip_norm=o.get("clip_norm", 1.0), bias_correction=bool(o.get("bias_correction", False)))
  return tx, schedule


def init_state(setup: Setup) -> dict[str, Any]:
  """A fresh train state, created directly in its sharded layout."""
  with jax.set_mesh(setup.mesh), sharding.use_rules(setup.rules):
    return setup.init_fn()


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


def _host_params(params: Any) -> Any:
  """Params as numpy on every process (gathers shards across hosts when needed)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def _peak_flops(config: Any) -> float | None:
  peak = float(config.get("peak_flops_per_device", 0.0) or 0.0)
  if peak > 0:
    return peak
  peak = flops.peak_flops_per_device()
  if peak is None and jax.devices()[0].platform == "cpu":
    peak = flops.measure_peak_flops()
    logging.info("measured peak of one CPU device: %.3g FLOP/s (set config.peak_flops_per_device to fix it)", peak)
  return peak


def _strip_accents(value: Any) -> bool | None:
  """config.data.strip_accents: "" / None follows lower casing; true/false (or "true"/"false") forces it."""
  if value in ("", None):
    return None
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ("1", "true", "yes"):
    return True
  if text in ("0", "false", "no"):
    return False
  raise ValueError(f"config.data.strip_accents={value!r}: expected '', 'true' or 'false'")


def load_tokenizer(config: Any):
  """(tokenizer, special ids) of config.data, checked (the vocab exists and has the special tokens)."""
  data = config.data
  for field in ("corpus", "vocab_file"):
    if not data.get(field):
      raise ValueError(f"config.data.{field} is empty: pass --config.data.{field}=...")
  strip = _strip_accents(data.get("strip_accents", ""))
  tok = tokenization.load_tokenizer(data.vocab_file, lowercase=bool(data.lower_case), strip_accents=strip)
  return tok, tokenization.special_ids(tok)


def prepare_data(config: Any, workdir: str):
  """Tokenizer check and the ArrayRecord shards (built once per process 0, then reused). Returns (dir, tok, ids)."""
  data = config.data
  tok, ids = load_tokenizer(config)
  strip = _strip_accents(data.get("strip_accents", ""))
  cache_dir = data.get("cache_dir") or os.path.join(workdir, "data")
  kwargs = dict(max_seq_length=int(config.max_seq_length), lower_case=bool(data.lower_case), strip_accents=strip,
                seed=int(data.get("build_seed", 0)), num_shards=int(data.get("num_shards", 16)),
                num_processes=int(data.get("num_build_processes", 1)),
                tfds_data_dir=data.get("tfds_data_dir") or None)
  if distributed.is_primary():
    dataset_dir, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, **kwargs)
  distributed.barrier("electra_pretraining_data")
  if not distributed.is_primary():
    dataset_dir, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, **kwargs)
  logging.info("pretraining data %s: %d examples, %d tokens", dataset_dir, manifest["num_examples"],
               manifest.get("num_tokens", -1))
  return dataset_dir, tok, ids


def make_loader(config: Any, dataset_dir: str, setup: Setup):
  """The batches of `dataset_dir`, split over the mesh axes that the rules map activation_batch to."""
  return PretrainingLoader(dataset_dir, int(config.batch_size), setup.mesh, seed=int(config.seed),
                           batch_axes=sharding.batch_axes(setup.mesh, setup.rules),
                           prefetch=int(config.data.get("prefetch", 2)))


def train_and_evaluate(config: Any, workdir: str) -> TrainResult:
  """Pretrains from config, resuming from `workdir` when it holds a checkpoint; exports HF folders at the end.

  One run per workdir (checkpointing.WorkdirLock). Nothing in the workdir changes until the run is accepted: the
  checkpoint to resume from fits the model (else CheckpointError, with config.json and checkpoints/model_config.json
  as they were), or there is none and the workdir never had one that became unreadable (else CheckpointError unless
  config.restart_from_scratch).
  """
  workdir = os.path.abspath(workdir)
  total_steps = int(config.num_train_steps)
  if total_steps <= 0:
    raise ValueError(f"config.num_train_steps={total_steps}: must be positive")
  with checkpointing.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir, total_steps)


def _train_and_evaluate(config: Any, workdir: str, total_steps: int) -> TrainResult:
  tok, ids = load_tokenizer(config)
  mesh = build_mesh(config)
  setup = build_setup(config, mesh, vocab_size=tok.get_vocab_size(), ids=ids)
  tokenizer_meta = {"vocab_file": os.path.abspath(config.data.vocab_file), "lowercase": bool(config.data.lower_case),
                    "strip_accents": _strip_accents(config.data.get("strip_accents", ""))}
  model_meta = {**setup.model_meta, "tokenizer": tokenizer_meta}
  total_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setup.abstract_state["params"]))
  logging.info("mesh %s; %s parameters", dict(mesh.shape), f"{total_params:,}")
  logging.debug("parameters and shardings:\n%s", sharding.describe(setup.abstract_state["params"]))

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINTS_SUBDIR),
                                    keep=int(config.keep_checkpoints), model_meta=model_meta,
                                    restart_from_scratch=bool(config.get("restart_from_scratch", False)))
  try:
    # Before anything in the workdir changes: a checkpoint of another model, or a workdir whose checkpoints were all
    # set aside as unreadable, refuses the run here.
    restored = ckpt.restore(setup.abstract_state["params"], setup.abstract_state["opt_state"])
    dataset_dir, _, _ = prepare_data(config, workdir)
    loader = make_loader(config, dataset_dir, setup)
  except BaseException:
    ckpt.close()
    raise
  if distributed.is_primary():
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  base_key = jax.random.key(int(config.seed))
  if restored is None and ckpt.set_aside_steps():   # config.restart_from_scratch: keep the old run's metrics
    kept = metrics_lib.archive(workdir, "before-restart")
    if kept:
      logging.warning("starting over from step 0 (restart_from_scratch); the earlier metrics are in %s", kept)
  if restored is not None:
    step = restored.step
    state = {"step": jax.device_put(jnp.asarray(step, jnp.int32), setup.state_shardings["step"]),
             "params": restored.params, "opt_state": restored.opt_state}
    if "loader" in restored.train_meta:
      loader.restore(restored.train_meta["loader"])
    else:   # a converted checkpoint (convert tf_to_orbax) has no data position: the data starts from its beginning
      logging.info("checkpoint step %d has no data-loader position; reading the data from its start", step)
    if "rng_key" in restored.train_meta:
      base_key = jax.random.wrap_key_data(np.asarray(restored.train_meta["rng_key"], np.uint32))
    logging.info("resuming at step %d", step)
  else:
    step = 0
    state = init_state(setup)
    logging.info("starting from scratch (seed %d)", int(config.seed))

  writer = metrics_lib.MetricWriter(workdir, resume_step=step)
  if step == 0:
    writer.write_text("config", "```\n" + str(config) + "\n```")
  seq_len, batch_size = int(config.max_seq_length), int(config.batch_size)
  flops_per_step = flops.train_flops_per_step(
      setup.disc_config, setup.gen_config, batch_size=batch_size, seq_len=seq_len,
      num_predictions=setup.step_config.max_predictions, objective=config.objective)
  meter = metrics_lib.Throughput(tokens_per_step=batch_size * seq_len, flops_per_step=flops_per_step,
                                 num_devices=jax.device_count(), peak_flops_per_device=_peak_flops(config),
                                 total_steps=total_steps)
  key_data = np.asarray(jax.random.key_data(base_key)).tolist()
  param_norm = jax.jit(optax.tree.norm)

  def save(at: int, state) -> None:
    ckpt.save(at, state["params"], state["opt_state"],
              {"loader": loader.state(), "rng_key": key_data, "seed": int(config.seed)})

  logging.info("training steps %d..%d: batch %d x %d tokens, %.3g model FLOPs per step", step + 1, total_steps,
               batch_size, seq_len, flops_per_step)
  try:
    trained = loop.run(
        loop.Loop(step_fn=LazyStep(setup.train_step, name="pretraining step"), total_steps=total_steps, mesh=mesh,
                  rules=setup.rules, writer=writer, meter=meter, checkpointer=ckpt, save=save,
                  log_every=int(config.log_every_steps), checkpoint_every=int(config.checkpoint_every_steps),
                  # the parameters after the logged step: the state the loop holds then
                  log_extras=lambda state: {"param_norm": param_norm(state["params"])}),
        state, start_step=step, batch_at=lambda _: next(loader), rng=base_key)
  finally:
    loader.close()
    ckpt.close()
    writer.close()

  export_dirs: dict[str, str] = {}
  if not trained.preempted and config.get("export", True):
    export_dirs = export_hf(setup, trained.state["params"], os.path.join(workdir, "export"), tokenizer_meta)
  return TrainResult(step=trained.step, preempted=trained.preempted, last_metrics=trained.last_metrics,
                     export_dirs=export_dirs)


def export_hf(setup: Setup, params: Any, out_dir: str, tokenizer_meta: Mapping[str, Any]) -> dict[str, str]:
  """Writes the discriminator and generator (or the MLM model) as HF folders with tokenizer files (process 0)."""
  host = _host_params(params)
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
