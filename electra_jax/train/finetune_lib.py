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
import ml_collections
import numpy as np
from flax import nnx

from electra_jax import checkpointing, convert, sharding
from electra_jax.checkpointing import ModelSpec
from electra_jax.data import stream as data_stream
from electra_jax.eval import baselines
from electra_jax.eval.evaluation import (Predictor, check_batch, check_vocab, evaluate_sets, format_summary,
                                         summarize, with_baselines)
from electra_jax.eval.tasks import EvalSet, load_task, resolve_vocab, write_json
from electra_jax.modeling import original_heads
from electra_jax.runtime import distributed
from electra_jax.runtime.compile import LazyStep
from electra_jax.train import flops, loop, metrics, optim
from electra_jax.train.finetune_init import ARCH_FIELDS, FinetuneError, init_values, model_spec  # noqa: F401
from electra_jax.train.trainer import Trainer, check_accumulation, check_run



# ================================================================================================ steps
class Steps(Predictor):
  """A Predictor plus the trainer (train/trainer.py) of its model: the jitted train step `(state, batch, rng) ->
  (state, metrics)` over state = {"step", "params", "opt_state"} (donated; rng folded with state["step"]), compiled once
  and shared by every trial of a run; config.gradient_accumulation_steps splits each batch into micro-batches."""

  def __init__(self, spec: ModelSpec, adapter, mesh, rules, *, config: ml_collections.ConfigDict | None = None,
               num_train_steps: int | None = None):
    super().__init__(spec, adapter, mesh, rules)
    self.tx = self.schedule = self.train_step = self.train_step_fn = self.trainer = None
    if config is None:
      return
    accumulation = int(config.get("gradient_accumulation_steps", 1))
    check_accumulation(int(config.batch_size), accumulation, mesh, rules)
    schedule = optim.schedule_from_config(config.optimizer, float(config.learning_rate), int(num_train_steps))
    graphdef = self.graphdef

    def loss_fn(params, batch, rng):
      loss = adapter.loss(nnx.merge(graphdef, params), batch, rng)
      return loss, {"loss": loss}

    self.trainer = Trainer.build(mesh, rules, self.abstract_params, self.param_shardings,
                                 tx=optim.create(config.optimizer, self.abstract_params, schedule), schedule=schedule,
                                 loss_fn=loss_fn, accumulation_steps=accumulation)
    self.tx, self.schedule, self.state_shardings = self.trainer.tx, schedule, self.trainer.state_shardings
    # The pure train step before jit: what `train_step` compiles, for tools that trace it (benchmarks/product_bound.py).
    self.train_step_fn = self.trainer.train_step_fn
    self.train_step = self.in_mesh(LazyStep(self.trainer.train_step, name="fine-tuning step"))

  def init_state(self, params) -> dict[str, Any]:
    """{"step": 0, "params", "opt_state"} around `params`, placed like the train step's outputs."""
    return self.trainer.state_from(params)


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


def run_trial(config: ml_collections.ConfigDict, trial_dir: str, seed: int, steps: Steps,
              train: Mapping[str, np.ndarray], eval_sets: Sequence[EvalSet], total_steps: int,
              init: Callable[[], dict[str, np.ndarray]]) -> dict[str, Any]:
  """Fine-tunes one seed (resuming from trial_dir/checkpoints if present), then scores and writes predictions.

  A trial whose last checkpoint is already the final step (killed while scoring) is scored again; its train loss
  comes from metrics.jsonl, and the dev scores are written there unless they already are.
  """
  ckpt = _checkpointer(os.path.join(trial_dir, checkpointing.CHECKPOINTS_SUBDIR), steps.spec,
                      int(config.keep_checkpoints), tokenizer_meta(config),
                      bool(config.get("restart_from_scratch", False)), task_meta(steps.adapter))
  run = {"batch_size": int(config.batch_size), "seed": seed}
  try:
    trainer = steps.trainer
    restored = trainer.restore(ckpt)
    if restored is not None:
      check_run(restored, run, ckpt.directory)
    state, step = trainer.start(ckpt, restored, trial_dir, lambda: steps.init_state(
        steps.overwrite(steps.init_params(seed), init())), label=f"seed {seed}")
    if restored is not None:
      logging.info("seed %d: resuming at step %d of %d", seed, step, total_steps)
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

    save = trainer.saver(ckpt, lambda: {"seed": seed, "run": run, "loader": stream.state()}, host_copies=True)

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


def task_meta(adapter) -> dict[str, Any]:
  """What a fine-tuned checkpoint records of its task: the name and the label names (a run of another task into the
  same workdir, or an evaluation with another task, is refused)."""
  labels = getattr(getattr(adapter, "task", None), "label_names", None)
  return {"name": adapter.name, "labels": list(labels) if labels else None}


def model_identity(meta: Mapping[str, Any]) -> dict[str, Any]:
  """model_config without what does not change the model (the tokenizer, label names), plus the task."""
  out = {k: v for k, v in meta.items() if k != "tokenizer"}
  if isinstance(out.get("config"), Mapping):
    out["config"] = {k: v for k, v in out["config"].items() if k not in ("id2label", "label2id")}
  return out


def _checkpointer(directory: str, spec: ModelSpec, keep: int, tokenizer: Mapping[str, Any] | None = None,
                  restart_from_scratch: bool = False, task: Mapping[str, Any] | None = None
                  ) -> checkpointing.Checkpointer:
  """The trial's Checkpointer; a directory that already holds checkpoints of another model or task refuses the run
  (before anything in it changes) with a one-line CheckpointError instead of a shape error or a silent resume."""
  meta = {**spec.meta(), **({"tokenizer": dict(tokenizer)} if tokenizer else {}), **({"task": dict(task)} if task
                                                                                        else {})}
  return checkpointing.Checkpointer(directory, keep=keep, model_meta=json.loads(json.dumps(meta)),
                                    restart_from_scratch=restart_from_scratch, identity=model_identity)


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
