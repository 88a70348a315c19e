"""The fine-tuning trainer for GLUE and SQuAD: one library behind the finetune binary.

    from electra_jax.train import finetune_lib
    results = finetune_lib.train_and_evaluate(config, workdir)       # config: configs/glue.py or configs/squad.py
    results["summary"]["dev/accuracy"]                                # {"median", "mean", "std", "min", "max", ...}

A run does `config.num_trials` fine-tuning runs (seeds seed, seed+1, ...), each in WORKDIR/seed_<s>/:
  checkpoints/            Orbax (params, optimizer state, step); a restarted run resumes from the latest step
  metrics.jsonl, events*  TensorBoard and JSON lines: loss, learning_rate, grad_norm, throughput, ETA, dev scores
  predictions/            GLUE: <TASK>_<split>.tsv for dev sets and the leaderboard files (MRPC.tsv, MNLI-m.tsv, AX.tsv)
                          SQuAD: predictions.json, null_odds.json (v2.0), predictions_thresholded.json (v2.0),
                          nbest_predictions.json
  results.json            this run's dev scores
and WORKDIR/results.json holds every trial plus median, mean, std (sample), min and max of each dev metric, each
beside the task's trivial baseline on the same rows (eval/baselines.py: "baselines", "beats_baseline"); the same
summary is printed as a table.

Initialisation (`config.init_checkpoint`): "" trains from scratch; an HF folder (config.json + model.safetensors), or
a Hugging Face Hub model id (ID or ID@REVISION, through the HF cache: convert/hub.py), loads its encoder, and with
head="hf" its task head when it has one (else a fresh head, as HF's from_pretrained);
an Orbax checkpoint of this project loads the encoder of its discriminator (pretraining) or of its head (fine-tuning).
Tasks (data, loss, scoring) are eval/tasks.py's adapters; the steps run in train/loop.py, the loop pretraining uses.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from electra_jax import checkpointing, convert, sharding
from electra_jax.checkpointing import ModelSpec
from electra_jax.convert import flatten, params_from_hf, read_hf_weights
from electra_jax.data import stream as data_stream
from electra_jax.eval import baselines
from electra_jax.eval.evaluation import (Predictor, check_batch, check_vocab, evaluate_sets, format_summary,
                                         runtime_options, summarize, with_baselines)
from electra_jax.eval.tasks import EvalSet, TaskError, load_task, resolve_vocab, write_json
from electra_jax.modeling import ElectraConfig, effective_params, original_heads
from electra_jax.runtime import distributed
from electra_jax.runtime.compile import LazyStep
from electra_jax.train import flops, loop, metrics, optim

ARCH_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob")


class FinetuneError(TaskError):
  """A fine-tuning configuration or checkpoint that cannot be used; the message says which and why."""


# ================================================================================================ model and init
def _base_electra_config(config: ml_collections.ConfigDict) -> tuple[ElectraConfig, str, dict[str, Any] | None]:
  """(encoder config, init kind "scratch" | "hf" | "orbax", the Orbax checkpoint's model_config or None)."""
  runtime = runtime_options(config)
  path = config.init_checkpoint
  if not path:
    arch = {k: config.model[k] for k in ARCH_FIELDS if k in config.model}
    return ElectraConfig(**arch, **runtime), "scratch", None
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_checkpoint={path} does not exist")
  if convert.is_hf_folder(path):
    return ElectraConfig.from_json_file(os.path.join(path, "config.json"), **runtime), "hf", None
  meta = checkpointing.read_model_config(path)
  return checkpointing.electra_config_from_meta(meta, path, runtime), "orbax", meta


def model_spec(config: ml_collections.ConfigDict, adapter) -> tuple[ModelSpec, str, dict[str, Any] | None]:
  """The model to fine-tune, the init kind and (Orbax) the init checkpoint's model_config."""
  base, init_kind, meta = _base_electra_config(config)
  if config.head == "hf":
    kind, options = adapter.hf_head, {}
  elif config.head == "original":
    kind, options = adapter.original_kind, adapter.original_options()
  else:
    raise FinetuneError(f"config.head={config.head!r}: must be 'original' or 'hf'")
  electra_config = base.replace(architectures=(kind,), **adapter.head_overrides())
  return ModelSpec(kind, electra_config, options), init_kind, meta


def init_values(spec: ModelSpec, config: ml_collections.ConfigDict, init_kind: str,
                meta: Mapping[str, Any] | None, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Flat {param path: array} from the init checkpoint: the encoder, and with an HF head its head when present.

  `shapes` are the model's flat parameter shapes; every encoder parameter must be found, with the same shape.
  """
  path = config.init_checkpoint
  if init_kind == "scratch":
    return {}
  body_shapes = {k[len("electra/"):]: v for k, v in shapes.items() if k.startswith("electra/")}
  if init_kind == "hf":
    tensors = read_hf_weights(path)
    if spec.kind in original_heads.ORIGINAL_HEADS:
      body, _ = params_from_hf("ElectraModel", body_shapes, tensors, source=path)
      values = {f"electra/{k}": v for k, v in body.items()}
    else:
      values, missing = params_from_hf(spec.kind, dict(shapes), tensors, source=path, new_head_ok=True)
      if missing:
        logging.info("%s has no %s head weights; the head starts fresh: %s", path, spec.kind, missing)
  else:
    _, params = checkpointing.load_params(path)
    if meta and meta.get("kind") == "pretraining":   # the discriminator's effective weights (gdes: E_G + E_delta)
      params = effective_params(params, meta.get("options"))
    tree = params.get("discriminator", params) if meta and meta.get("kind") == "pretraining" else params
    if "electra" not in tree:
      raise FinetuneError(f"{path}: checkpoint params have no 'electra' encoder (top-level keys {sorted(tree)})")
    values = {f"electra/{k}": np.asarray(v) for k, v in flatten(tree["electra"]).items()}
  missing = sorted(k for k in shapes if k.startswith("electra/") and k not in values)
  unknown = sorted(k for k in values if k not in shapes)
  if missing or unknown:
    raise FinetuneError(f"{path}: encoder parameters do not match the model: missing {missing[:5]}, "
                        f"unexpected {unknown[:5]}")
  for k, v in values.items():
    if tuple(v.shape) != tuple(shapes[k]):
      raise FinetuneError(f"{path}: parameter {k} has shape {tuple(v.shape)} but the model expects {shapes[k]}")
  return values



# ================================================================================================ steps
class Steps(Predictor):
  """A Predictor plus the jitted train step `(state, batch, rng) -> (state, metrics)` with state = {"step", "params",
  "opt_state"} (donated; rng folded with state["step"]), compiled once and shared by every trial of a run."""

  def __init__(self, spec: ModelSpec, adapter, mesh, rules, *, config: ml_collections.ConfigDict | None = None,
               num_train_steps: int | None = None):
    super().__init__(spec, adapter, mesh, rules)
    self.tx = self.schedule = self.train_step = None
    # The pure train step before jit: what `train_step` compiles, for tools that trace it (benchmarks/product_bound.py).
    self.train_step_fn = None
    if config is None:
      return
    self.tx, self.schedule = optim.create(config.optimizer, self.abstract_params,
                                          learning_rate=float(config.learning_rate),
                                          num_train_steps=int(num_train_steps))
    tx, schedule, graphdef = self.tx, self.schedule, self.graphdef

    def train_step(state, batch, rng):
      rng = jax.random.fold_in(rng, state["step"])

      def loss_fn(p):
        return adapter.loss(nnx.merge(graphdef, p), batch, rng)

      loss, grads = jax.value_and_grad(loss_fn)(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      metrics_out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"])}
      return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics_out

    self.train_step_fn = train_step
    replicated = sharding.replicated(mesh)
    abstract_opt = jax.eval_shape(tx.init, self.abstract_params)
    opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, self.param_shardings,
                                          transform_non_params=lambda _: replicated,
                                          is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    self.state_shardings = {"step": replicated, "params": self.param_shardings, "opt_state": opt_shardings}
    self.train_step = self.in_mesh(LazyStep(
        jax.jit(train_step, donate_argnums=(0,), out_shardings=(self.state_shardings, replicated)),
        name="fine-tuning step"))

  def init_state(self, params) -> dict[str, Any]:
    """{"step": 0, "params", "opt_state"} around `params`, placed like the train step's outputs."""
    with jax.set_mesh(self.mesh):
      opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings["step"])
    return {"step": step, "params": params, "opt_state": opt_state}


# ================================================================================================ one trial
def num_train_steps(config: ml_collections.ConfigDict, train_rows: int) -> int:
  """config.num_train_steps when > 0, else int(rows * epochs / batch_size) as the original computes it."""
  if config.num_train_steps and config.num_train_steps > 0:
    return int(config.num_train_steps)
  steps = int(train_rows * float(config.num_train_epochs) / int(config.batch_size))
  if steps <= 0:
    raise FinetuneError(f"{train_rows} training rows x {config.num_train_epochs} epochs is less than one batch of "
                        f"{config.batch_size}; set config.num_train_steps")
  return steps


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def run_trial(config: ml_collections.ConfigDict, trial_dir: str, seed: int, steps: Steps,
              train: Mapping[str, np.ndarray], eval_sets: Sequence[EvalSet], total_steps: int,
              init: Callable[[], dict[str, np.ndarray]]) -> dict[str, Any]:
  """Fine-tunes one seed (resuming from trial_dir/checkpoints if present), then scores and writes predictions.

  A trial whose last checkpoint is already the final step (killed while scoring) is scored again; its train loss
  comes from metrics.jsonl, and the dev scores are written there unless they already are.
  """
  ckpt = _checkpointer(os.path.join(trial_dir, checkpointing.CHECKPOINTS_SUBDIR), steps.spec,
                      int(config.keep_checkpoints), tokenizer_meta(config),
                      bool(config.get("restart_from_scratch", False)))
  try:
    state = steps.init_state(steps.init_params(seed))
    restored = ckpt.restore(_abstract(state["params"]), _abstract(state["opt_state"]))
    if restored is not None:
      step = restored.step
      state = {"step": jax.device_put(jnp.asarray(step, jnp.int32), steps.state_shardings["step"]),
               "params": restored.params, "opt_state": restored.opt_state}
      logging.info("seed %d: resuming at step %d of %d", seed, step, total_steps)
    else:
      step = 0
      state["params"] = steps.overwrite(state["params"], init())
      if ckpt.set_aside_steps():   # config.restart_from_scratch: keep the old run's metrics
        kept = metrics.archive(trial_dir, "before-restart")
        if kept:
          logging.warning("seed %d: starting over from step 0 (restart_from_scratch); earlier metrics in %s", seed,
                          kept)
    finished_before = restored is not None and restored.step >= total_steps
    writer = metrics.MetricWriter(trial_dir, resume_step=step if restored is not None else None)
    if not len(next(iter(train.values()))):
      raise FinetuneError("no training examples")
    # Grain (data/stream.py): each process reads its rows of the global batch; the position is saved with the step
    stream = data_stream.array_stream(train, int(config.batch_size), seed=seed, mesh=steps.mesh,
                                      batch_axes=sharding.batch_axes(steps.mesh, steps.rules), start_step=step)
    if restored is not None and "loader" in restored.train_meta:
      stream.restore(restored.train_meta["loader"], f"this run ({steps.adapter.name})")
    seq_len = int(next(iter(train.values())).shape[1])
    meter = metrics.Throughput(
        tokens_per_step=int(config.batch_size) * seq_len,
        flops_per_step=3.0 * int(config.batch_size) * flops.discriminator_forward_flops(
            flops.Dims.from_config(steps.spec.config, seq_len), sparse_embed_lookup=True),
        num_devices=jax.device_count(), peak_flops_per_device=flops.peak_flops_per_device(),
        total_steps=total_steps)
    eval_batch = int(config.eval_batch_size)

    def evaluate(_, state):
      dev, _ = evaluate_sets(steps, state["params"], eval_sets, eval_batch, None, labelled_only=True)
      return {f"{name}/{k}": v for name, m in dev.items() for k, v in m.items()}

    def save(at: int, state) -> None:
      # One process: host copies (Orbax would otherwise compile a slice per replicated array shape, seconds of XLA
      # compilation for a small model); several processes: the sharded arrays themselves.
      params, opt_state = state["params"], state["opt_state"]
      fingerprints = checkpointing.state_fingerprints(params, opt_state)   # on device: fast
      if jax.process_count() == 1:
        params, opt_state = jax.device_get((params, opt_state))
      ckpt.save(at, params, opt_state, {"seed": seed, "loader": stream.state()}, fingerprints=fingerprints)

    try:
      trained = loop.run(
          loop.Loop(step_fn=steps.train_step, total_steps=total_steps, mesh=steps.mesh, rules=steps.rules,
                    writer=writer, meter=meter, checkpointer=ckpt, save=save, log_every=int(config.log_every_steps),
                    checkpoint_every=int(config.checkpoint_every_steps), eval_every=int(config.eval_every_steps),
                    evaluate=evaluate, name=f"[{steps.adapter.name} seed {seed}]"),
          state, start_step=step, batch_at=lambda _: stream.to_global(next(stream)), rng=jax.random.key(seed))
    finally:
      stream.close()
    state, step = trained.state, trained.step
    if trained.preempted:
      writer.close()
      return {"seed": seed, "workdir": trial_dir, "steps": step, "preempted": True}
    out_dir = os.path.join(trial_dir, "predictions") if config.get("write_predictions", True) else None
    dev, files = evaluate_sets(steps, state["params"], eval_sets, eval_batch, out_dir)
    scores = {f"{name}/{k}": v for name, m in dev.items() for k, v in m.items()}
    logged = metrics.read_metrics(trial_dir) if finished_before else []
    if not any(r.get("step") == step and set(scores) <= set(r) for r in logged):   # not already there
      writer.write_scalars(step, scores)
    writer.close()
    final_loss = trained.last_metrics.get("loss")
    if final_loss is None:   # nothing trained in this process: the loss logged at the last step trained
      final_loss = next((r["loss"] for r in reversed(logged) if r.get("loss") is not None and r["step"] <= step), None)
    result = {"seed": seed, "workdir": trial_dir, "steps": step, "final_train_loss": final_loss, "metrics": dev,
              "files": files}
    write_json(os.path.join(trial_dir, "results.json"), result)
    return result
  finally:
    ckpt.close()


def tokenizer_meta(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The tokenizer settings a fine-tuned checkpoint records, so predict and convert need no --vocab_file."""
  return {"vocab_file": os.path.abspath(resolve_vocab(config)), "lowercase": bool(config.do_lower_case),
          "strip_accents": None}


def _architecture(meta: Mapping[str, Any]) -> dict[str, Any]:
  """model_config without what does not change the parameters (the tokenizer, label names)."""
  out = {k: v for k, v in meta.items() if k != "tokenizer"}
  if isinstance(out.get("config"), Mapping):
    out["config"] = {k: v for k, v in out["config"].items() if k not in ("id2label", "label2id")}
  return out


def _checkpointer(directory: str, spec: ModelSpec, keep: int, tokenizer: Mapping[str, Any] | None = None,
                  restart_from_scratch: bool = False) -> checkpointing.Checkpointer:
  """The trial's Checkpointer. A directory that already holds a model_config.json (a run being resumed) must describe
  the same model, so that a changed config is refused with a clear message instead of a shape error."""
  meta = json.loads(json.dumps({**spec.meta(), **({"tokenizer": dict(tokenizer)} if tokenizer else {})}))
  meta_file = os.path.join(directory, checkpointing.MODEL_CONFIG_FILE)
  if os.path.isfile(meta_file):
    with open(meta_file, encoding="utf-8") as f:
      existing = json.load(f)
    if _architecture(existing) != _architecture(meta):
      old, new = _architecture(existing), _architecture(meta)
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise FinetuneError(f"{directory} holds checkpoints of another model (model_config differs in {changed}); "
                          f"use a new workdir")
  return checkpointing.Checkpointer(directory, keep=keep, model_meta=meta, restart_from_scratch=restart_from_scratch)


# ================================================================================================ runs
def setup(config: ml_collections.ConfigDict):
  """(tokenizer, adapter, mesh, rules) of a task config."""
  tokenizer, adapter = load_task(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  return tokenizer, adapter, mesh, rules


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every trial of `config` in WORKDIR/seed_<s>, writes WORKDIR/results.json and prints the summary table.
  One run per workdir (checkpointing.WorkdirLock). config.init_checkpoint may be a Hub model id (convert/hub.py)."""
  local = convert.hub.resolve(config.init_checkpoint) if config.get("init_checkpoint") else ""
  if local != (config.get("init_checkpoint") or ""):   # a Hub id: its snapshot folder in the Hugging Face cache
    config = config.copy_and_resolve_references()
    config.init_checkpoint = local
  with checkpointing.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  tokenizer, adapter, mesh, rules = setup(config)
  check_batch("batch_size", int(config.batch_size), mesh, rules)
  check_batch("eval_batch_size", int(config.eval_batch_size), mesh, rules)
  spec, init_kind, meta = model_spec(config, adapter)
  check_vocab(tokenizer, spec.config, config.init_checkpoint or "config.model")
  start = time.time()
  train, data_info = adapter.train_arrays()
  eval_sets = adapter.eval_sets(include_test=True)
  for line in adapter.read_summaries:
    logging.info("read %s", line)
  total = num_train_steps(config, data_info["train_rows"])
  if spec.kind in original_heads.ORIGINAL_HEADS:   # said before training: the export refuses this head
    logging.info("head=original (%s): convert orbax_to_hf cannot export this head (no transformers class has it); "
                 "fine-tune with head=hf (the default) for a model that transformers loads", spec.kind)
  logging.info("%s: %s; %d steps of %d (head %s, init %s)", adapter.name, data_info, total, config.batch_size,
               spec.kind, init_kind)
  steps = Steps(spec, adapter, mesh, rules, config=config, num_train_steps=total)
  logging.debug("parameters:\n%s", sharding.describe(jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), steps.abstract_params, steps.param_shardings)))
  init = lambda: init_values(spec, config, init_kind, meta, steps.shapes)  # noqa: E731
  trials = []
  for k in range(int(config.num_trials)):
    seed = int(config.seed) + k
    trial_dir = os.path.join(workdir, f"seed_{seed}")
    trials.append(run_trial(config, trial_dir, seed, steps, train, eval_sets, total, init))
    if trials[-1].get("preempted"):
      logging.warning("preempted during seed %d at step %d: rerun the same command to resume", seed,
                      trials[-1]["steps"])
      break
  results = {
      "task": adapter.name, "family": adapter.family, "head": spec.kind, "init_checkpoint": config.init_checkpoint,
      "init_kind": init_kind, "num_train_steps": total, **data_info, "data": adapter.read_summaries,
      "main_metric": adapter.main_metric,
      "trials": trials, "seconds": time.time() - start}
  base = baselines.of_sets(adapter, eval_sets)   # the trivial predictor on the same rows (eval/baselines.py)
  results["summary"] = summarize([t for t in trials if "metrics" in t], base)
  with_baselines(results, base)
  write_json(os.path.join(workdir, "results.json"), results)
  if distributed.is_primary() and not trials[-1].get("preempted"):
    print(format_summary(results), flush=True)
  return results
