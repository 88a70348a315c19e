"""The replication harness: pretrain every variant of the chosen suites for the same pretraining FLOPs, fine-tune
each checkpoint on the GLUE subset with several seeds, and write results.json, results.md and the plots.

    from electra_jax.experiments import harness
    results = harness.run(["efficiency"], hc, "/tmp/rep")     # hc: configs/replicate.py's config; resumes

WORKDIR layout (every stage is resumable; a finished stage is skipped when the command runs again):
  data/                                the pretraining dataset, built once for all variants
  variants/<key>/pretrain/             pretrain_lib.train_and_evaluate's workdir (checkpoints, metrics.jsonl)
  variants/<key>/pretrain/done.json    steps, FLOPs and seconds of the finished run
  variants/<key>/glue_<step>/<task>/   finetune_lib.train_and_evaluate's workdir (seed_<s>/, results.json)
  stages.jsonl                         one line per finished stage: what, seconds
  results.json, results.md, *.png      the report (rewritten after every stage, so a partial run shows its results)

Budget rule: the ELECTRA variant (configs/pretrain.py's electra objective at the harness's size) trains
`budget.electra_steps` steps; its FLOPs (electra_jax.train.flops.train_flops_per_step: what the step computes, backward
= 2 x forward, gathered embeddings) are every variant's budget, so variant v trains round(budget / FLOPs per step of v)
steps. Every variant warms up over `budget.warmup_proportion` of its own steps and decays linearly to 0 at its end.
Pretraining uses one seed (config.pretrain.seed); the spread reported is over fine-tuning seeds.

size=micro runs on a CPU (E64 H128, 2 layers, generator H32, batch 32 x 128; the budget is ELECTRA's 1,200 steps x
21.2 GFLOP = 25.5 TFLOP per variant; fine-tuning 5 tasks x 3 seeds x 200 steps); the measured time of every stage and
suite is in benchmarks/replication/README.md. size=small needs an accelerator (125k ELECTRA-Small steps per variant).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from electra_jax.experiments import ExperimentError, report, suites
from electra_jax import paths
from electra_jax.experiments.run_configs import (finetune_config, finetune_dir, flops_per_step, pretrain_config,
                                                 vocab_size)

# ------------------------------------------------------------------------------------------------ the plan
@dataclasses.dataclass
class PlannedVariant:
  variant: suites.Variant
  config: ml_collections.ConfigDict
  flops_per_step: float
  steps: int
  eval_steps: tuple[int, ...]          # the checkpoints that get fine-tuned
  workdir: str
  kept_steps: tuple[int, ...] = ()     # the checkpoints kept after pretraining (every curve fraction's)

  @property
  def key(self) -> str:
    return self.variant.key


@dataclasses.dataclass(frozen=True)
class Stage:
  kind: str                            # "pretrain" or "finetune"
  variant: str
  step: int = 0                        # finetune: the pretraining checkpoint's step
  task: str = ""

  @property
  def name(self) -> str:
    if self.kind == "pretrain":
      return f"pretrain {self.variant}"
    return f"finetune {self.variant}@{self.step} {self.task}"


def plan(suite_list: Sequence[str], hc: ml_collections.ConfigDict, workdir: str
         ) -> tuple[dict[str, PlannedVariant], list[Stage], dict[str, Any]]:
  """(variants by key, stages in run order, budget) for the suites."""
  vocab = vocab_size(hc.vocab_file)
  reference = pretrain_config(hc, suites.VARIANTS["electra"], workdir)
  ref_fps = flops_per_step(reference, vocab)
  electra_steps = int(hc.budget.electra_steps)
  budget = {"reference": "electra", "electra_steps": electra_steps, "flops": ref_fps * electra_steps,
            "match": str(hc.budget.match)}
  if budget["match"] not in ("flops", "steps"):
    raise ExperimentError(f"budget.match={budget['match']!r}: must be 'flops' or 'steps'")
  fractions = sorted({float(f) for f in hc.curve_fractions} | {1.0})
  if any(not 0 < f <= 1 for f in fractions):
    raise ExperimentError(f"curve_fractions={tuple(hc.curve_fractions)}: each must be in (0, 1]")
  curve_keys = {k for s in suite_list for k in suites.SUITES[s].variants if suites.SUITES[s].curve}
  variants: dict[str, PlannedVariant] = {}
  for name in suite_list:
    for key in suites.SUITES[name].variants:
      if key in variants:
        continue
      v = suites.VARIANTS[key]
      config = pretrain_config(hc, v, workdir)
      if not v.pretrain:
        variants[key] = PlannedVariant(v, config, 0.0, 0, (0,), os.path.join(workdir, "variants", key, "pretrain"))
        continue
      fps = flops_per_step(config, vocab)
      steps = electra_steps if budget["match"] == "steps" else max(1, round(budget["flops"] / fps))
      # checkpoints exactly at every curve fraction (for every variant, whichever suites run now, so that a later run
      # of another suite in the same WORKDIR finds them) and at least every quarter (an interrupted run resumes near
      # where it stopped): every `unit` steps, with steps a multiple of it
      grain = max(1, round(1 / min(fractions)))
      if steps >= 16:
        grain = max(grain, 4)
      unit = max(1, round(steps / grain))
      steps = unit * grain
      kept = tuple(sorted({max(unit, round(f * grain) * unit) for f in fractions}))
      eval_steps = kept if key in curve_keys else (steps,)
      config.num_train_steps = steps
      config.checkpoint_every_steps = unit
      config.keep_checkpoints = grain + 1
      variants[key] = PlannedVariant(v, config, fps, steps, eval_steps,
                                     os.path.join(workdir, "variants", key, "pretrain"), kept)
  stages: list[Stage] = []
  for key, pv in variants.items():
    if pv.variant.pretrain:
      stages.append(Stage("pretrain", key))
    for step in pv.eval_steps:
      stages.extend(Stage("finetune", key, step, task) for task in hc.finetune.tasks)
  return variants, stages, budget


def checkpoint_dir(pv: PlannedVariant, step: int) -> str:
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  return os.path.join(pv.workdir, checkpointing.CHECKPOINTS_SUBDIR, str(step))


def stage_done(stage: Stage, variants: Mapping[str, PlannedVariant]) -> bool:
  pv = variants[stage.variant]
  if stage.kind == "pretrain":
    return os.path.isfile(os.path.join(pv.workdir, "done.json"))
  path = os.path.join(finetune_dir(pv, stage.step, stage.task), "results.json")
  if not os.path.isfile(path):
    return False
  with open(path, encoding="utf-8") as f:   # a preempted task writes its results so far: not done
    return not any(t.get("preempted") for t in json.load(f).get("trials", []))


# ------------------------------------------------------------------------------------------------ running
def run_pretrain(pv: PlannedVariant) -> dict[str, Any]:
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  start = time.time()
  result = pretrain_lib.train_and_evaluate(pv.config, pv.workdir)
  if result.preempted:
    raise KeyboardInterrupt(f"pretraining of {pv.key} stopped at step {result.step} (preemption); rerun to resume")
  done = {"steps": pv.steps, "flops_per_step": pv.flops_per_step, "flops": pv.flops_per_step * pv.steps,
          "seconds": time.time() - start, "last_metrics": result.last_metrics}
  _write_json(os.path.join(pv.workdir, "done.json"), done)
  for step in _checkpoint_steps(pv.workdir):   # the checkpoints kept only to resume
    if step not in pv.kept_steps:
      shutil.rmtree(checkpoint_dir(pv, step), ignore_errors=True)
  return done


def _checkpoint_steps(workdir: str) -> list[int]:
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  directory = os.path.join(workdir, checkpointing.CHECKPOINTS_SUBDIR)
  return sorted(int(d) for d in (os.listdir(directory) if os.path.isdir(directory) else []) if d.isdigit())


def run_finetune(hc: ml_collections.ConfigDict, pv: PlannedVariant, step: int, task: str) -> dict[str, Any]:
  from electra_jax.train import finetune_lib  # pylint: disable=import-outside-toplevel
  if pv.variant.pretrain:
    config = finetune_config(hc, task, checkpoint_dir(pv, step))
  else:
    config = finetune_config(hc, task, "", architecture=pv.config)
  workdir = finetune_dir(pv, step, task)
  results = finetune_lib.train_and_evaluate(config, workdir)
  stopped = [t for t in results.get("trials", []) if t.get("preempted")]
  if stopped:   # as for pretraining: stop the suite here; the rerun resumes this trial from its checkpoint
    raise KeyboardInterrupt(f"fine-tuning {pv.key}@{step} {task} stopped in seed {stopped[0]['seed']} at step "
                            f"{stopped[0]['steps']} (preemption); rerun to resume")
  # the fine-tuned weights are not part of the report (scores and metrics.jsonl stay): free the disk
  for trial in results.get("trials", []):
    shutil.rmtree(os.path.join(trial["workdir"], "checkpoints"), ignore_errors=True)
  return results


class Progress:
  """A bar and an ETA over the stages. Pretraining cost = FLOPs / FLOP rate; fine-tuning cost = overhead + seeds x
  (steps x seconds per step at the task's length + evaluation). The rates are config.estimate's until a stage of the
  kind has run, then the measured ones."""

  def __init__(self, stages: Sequence[Stage], variants: Mapping[str, PlannedVariant], hc: ml_collections.ConfigDict,
               out: Callable[[str], None] = print):
    self.stages, self.variants, self.out, self.hc = list(stages), variants, out, hc
    e = hc.estimate
    self.flop_rate = float(e.pretrain_flops_per_second)
    self.ft_step = float(e.finetune_seconds_per_step)
    self.ft_overhead = float(e.finetune_overhead_seconds)
    self.measured: dict[str, list[tuple[float, float]]] = {"pretrain": [], "finetune": []}   # (work, seconds)
    self.start = time.time()

  def _work(self, stage: Stage) -> float:
    """Pretraining: FLOPs. Fine-tuning: seconds at the assumed rates (rescaled by the measured ones later)."""
    if stage.kind == "pretrain":
      pv = self.variants[stage.variant]
      return pv.flops_per_step * pv.steps
    f = self.hc.finetune
    length = int(f.get("max_seq_length_per_task", {}).get(stage.task, f.max_seq_length))
    steps = int(f.num_train_steps) if int(f.num_train_steps) > 0 else 1000
    return self.ft_overhead + int(f.seeds) * steps * self.ft_step * length / 128

  def estimate(self, stage: Stage) -> float:
    m = self.measured[stage.kind]
    scale = sum(s for _, s in m) / sum(w for w, _ in m) if m else None
    if stage.kind == "pretrain":
      return self._work(stage) / (self.flop_rate if scale is None else 1 / scale)
    return self._work(stage) * (1.0 if scale is None else scale)

  def eta(self, remaining: Sequence[Stage]) -> float:
    return sum(self.estimate(s) for s in remaining)

  def record(self, stage: Stage, seconds: float) -> None:
    self.measured[stage.kind].append((self._work(stage), seconds))

  def show(self, index: int, stage: Stage | None, remaining: Sequence[Stage], note: str = "") -> None:
    n = len(self.stages)
    width = 30
    filled = int(round(width * index / max(n, 1)))
    bar = "#" * filled + "." * (width - filled)
    what = stage.name if stage is not None else "done"
    self.out(f"[{bar}] {index}/{n} {what}{note} | elapsed {_duration(time.time() - self.start)} | "
             f"ETA {_duration(self.eta(remaining))}")


def run(suite_list: Sequence[str], hc: ml_collections.ConfigDict, workdir: str, *,
        out: Callable[[str], None] = print, command: str = "") -> dict[str, Any]:
  """Runs (or resumes) the suites and writes the report; returns the results dict."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if bool(hc.get("compilation_cache", False)):
    _enable_compilation_cache(os.path.join(workdir, "jax_cache"))
  variants, stages, budget = plan(suite_list, hc, workdir)
  _check_same_plan(workdir, hc, budget)
  progress = Progress(stages, variants, hc, out)
  pending = [s for s in stages if not stage_done(s, variants)]
  out(f"{len(stages)} stages ({len(stages) - len(pending)} already done) for suites {', '.join(suite_list)}: "
      f"{len(variants)} pretraining runs of {budget['flops']:.3g} FLOPs each ({budget['match']}-matched), "
      f"fine-tuning on {', '.join(hc.finetune.tasks)} x {int(hc.finetune.seeds)} seeds; first estimate "
      f"{_duration(progress.eta(pending))}")
  for pv in variants.values():
    out(f"  {pv.key:22s} {pv.config.objective:15s} {pv.steps:7d} steps x {pv.flops_per_step / 1e9:8.2f} GFLOP; "
        f"fine-tuned at steps {list(pv.eval_steps)}")
  results: dict[str, Any] = {}
  index = len(stages) - len(pending)
  for i, stage in enumerate(pending):
    progress.show(index, stage, pending[i:])
    start = time.time()
    if stage.kind == "pretrain":
      run_pretrain(variants[stage.variant])
    else:
      run_finetune(hc, variants[stage.variant], stage.step, stage.task)
    seconds = time.time() - start
    progress.record(stage, seconds)
    _append_jsonl(os.path.join(workdir, "stages.jsonl"), {"stage": stage.name, "kind": stage.kind,
                                                          "variant": stage.variant, "step": stage.step,
                                                          "task": stage.task, "seconds": seconds,
                                                          "finished": time.time()})
    index += 1
    results = report.write(workdir, suite_list, hc, variants, budget, command=command)
  progress.show(index, None, [])
  if not pending:
    results = report.write(workdir, suite_list, hc, variants, budget, command=command)
  out(f"wrote {os.path.join(workdir, 'results.json')}, results.md and plots")
  return results


def publish(workdir: str, target: str) -> int:
  """Copies the report (results.json, results.md, stages.jsonl, harness_config.json, *.png) to `target`."""
  os.makedirs(target, exist_ok=True)
  names = [n for n in sorted(os.listdir(workdir))
           if n in ("results.json", "results.md", "stages.jsonl", "harness_config.json") or n.endswith(".png")]
  for n in names:
    shutil.copyfile(os.path.join(workdir, n), os.path.join(target, n))
  return len(names)


def _check_same_plan(workdir: str, hc: ml_collections.ConfigDict, budget: Mapping[str, Any]) -> None:
  """A WORKDIR belongs to one harness config: resuming with another one would mix incomparable runs."""
  path = os.path.join(workdir, "harness_config.json")
  current = json.loads(hc.to_json_best_effort(sort_keys=True))
  current.pop("estimate", None)
  current.pop("log_every_steps", None)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    saved.pop("estimate", None)
    saved.pop("log_every_steps", None)
    if saved != current:
      changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
      raise ExperimentError(f"{workdir} holds runs of another harness config (differs in {changed}); use a new "
                            f"--workdir")
  else:
    _write_json(path, current)
  del budget


def _enable_compilation_cache(directory: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  try:
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except (AttributeError, ValueError) as e:   # an older JAX: run without it
    logging.warning("no persistent compilation cache: %s", e)


def _write_json(path: str, obj: Any) -> None:
  paths.write_json_atomically(path, obj, default=_jsonable)


def _append_jsonl(path: str, obj: Mapping[str, Any]) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(obj, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
  if hasattr(x, "item"):
    return x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return str(x)


def _duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
