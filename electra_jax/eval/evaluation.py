"""Scoring a model on a task's dev (and test) sets: predictions batched over the mesh, official-equivalent scores.

    predictor = Predictor(spec, adapter, mesh, rules)           # jitted predict of one model, parameters sharded
    params = predictor.overwrite(predictor.init_params(0), values)
    dev, files = evaluate_sets(predictor, params, adapter.eval_sets(include_test=True), batch_size=32, out_dir=...)
    results = evaluate_checkpoint(config, "/tmp/mrpc/seed_0", "/tmp/mrpc_eval")    # a saved model, no training

The fine-tuning trainer (train/finetune_lib.py) builds its train step on a Predictor and scores with evaluate_sets.
"""

from __future__ import annotations

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
from electra_jax.convert import flatten, params_from_hf, read_hf_weights, unflatten
from electra_jax.eval import baselines
from electra_jax.eval.tasks import EvalSet, TaskError, load_task, write_json
from electra_jax.modeling import ElectraConfig
from electra_jax.modeling.config import RUNTIME_FIELDS
from electra_jax.runtime import distributed


def runtime_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The ElectraConfig runtime fields (dtype, remat, scan, kernels, ...) a task config sets under config.model."""
  return {k: config.model[k] for k in RUNTIME_FIELDS if k in config.model}


def check_batch(name: str, size: int, mesh, rules) -> None:
  shards = sharding.batch_shards(mesh, rules)
  if size % shards:
    raise TaskError(f"config.{name}={size} is not divisible by the {shards} batch shards of the mesh "
                    f"{dict(mesh.shape)}")


def check_vocab(tokenizer, electra_config: ElectraConfig, source: str) -> None:
  size = tokenizer.get_vocab_size()
  if size > electra_config.vocab_size:
    raise TaskError(f"the vocab has {size} tokens but the model ({source}) only {electra_config.vocab_size} "
                    f"embeddings; set config.vocab_file to the model's vocab")


class Predictor:
  """One model's jitted predict function on a mesh, with its parameters' shapes and shardings."""

  def __init__(self, spec: ModelSpec, adapter, mesh, rules):
    self.spec, self.adapter, self.mesh, self.rules = spec, adapter, mesh, rules
    abstract = nnx.eval_shape(lambda: spec.build(0))
    self.graphdef, abstract_state = nnx.split(abstract)
    self.param_shardings = nnx.to_pure_dict(sharding.logical_to_sharding(abstract_state, mesh, rules))
    self.abstract_params = nnx.to_pure_dict(abstract_state)
    self.shapes = {k: tuple(v.shape) for k, v in flatten(self.abstract_params).items()}
    graphdef = self.graphdef

    def predict(params, batch):
      return adapter.predict(nnx.merge(graphdef, params), batch)

    self.predict = self.in_mesh(jax.jit(predict, out_shardings=sharding.replicated(mesh)))
    self._init = None

  def in_mesh(self, fn: Callable) -> Callable:
    """fn run under this mesh and rules (activations' sharding constraints are resolved while tracing)."""

    def wrapped(*args):
      with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
        return fn(*args)

    return wrapped

  def init_params(self, seed: int) -> dict[str, Any]:
    """Freshly initialised parameters, created directly in their shards (one compilation for every seed)."""
    if self._init is None:
      spec = self.spec
      self._init = self.in_mesh(jax.jit(lambda s: nnx.to_pure_dict(nnx.state(spec.build(s))),
                                        out_shardings=self.param_shardings))
    return self._init(jax.random.key(seed))  # nnx.Rngs(key(seed)) draws what nnx.Rngs(seed) draws

  def check_values(self, values: Mapping[str, np.ndarray], source: str, prefix: str = "") -> None:
    """Every parameter under `prefix` present in `values` with the model's shape, and nothing else."""
    wanted = {k: v for k, v in self.shapes.items() if k.startswith(prefix)}
    missing = sorted(k for k in wanted if k not in values)
    unknown = sorted(k for k in values if k not in self.shapes)
    if missing or unknown:
      raise TaskError(f"{source}: parameters do not match {self.spec.kind}: missing {missing[:5]}, "
                      f"unexpected {unknown[:5]}")
    for k, v in values.items():
      if tuple(v.shape) != tuple(self.shapes[k]):
        raise TaskError(f"{source}: parameter {k} has shape {tuple(v.shape)} but the model expects "
                        f"{self.shapes[k]}")

  @staticmethod
  def overwrite(params: dict[str, Any], values: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """params (nested, sharded) with the leaves named in `values` replaced, placed like the leaves they replace."""
    if not values:
      return params
    flat = flatten(params)
    for k, v in values.items():
      old = flat[k]
      flat[k] = jax.device_put(np.asarray(v).astype(old.dtype), old.sharding)
    return unflatten(flat)


def run_predictions(predictor: Predictor, params, arrays: Mapping[str, np.ndarray], batch_size: int
                    ) -> dict[str, np.ndarray]:
  """Model outputs for every row of `arrays` (padded to whole batches by repeating row 0; padding dropped)."""
  n = int(arrays["input_ids"].shape[0])
  chunks: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    rows = np.where(rows < n, rows, 0)
    batch = sharding.put_batch({k: v[rows] for k, v in arrays.items()}, predictor.mesh, predictor.rules)
    out = jax.device_get(predictor.predict(params, batch))
    keep = min(batch_size, n - start)
    for k, v in out.items():
      chunks.setdefault(k, []).append(np.asarray(v)[:keep])
  return {k: np.concatenate(v) for k, v in chunks.items()}


def evaluate_sets(predictor: Predictor, params, eval_sets: Sequence[EvalSet], batch_size: int, out_dir: str | None,
                  labelled_only: bool = False) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
  """{set name: metrics} for the labelled sets (prediction files written to out_dir when given)."""
  results, files = {}, {}
  for es in eval_sets:
    if labelled_only and not es.labelled:
      continue
    outputs = run_predictions(predictor, params, es.arrays, batch_size)
    scores, written = predictor.adapter.score(es, outputs, out_dir)
    files.update(written)
    if es.labelled:
      results[es.name] = scores
  return results, files


def _spec_of_checkpoint(config: ml_collections.ConfigDict, adapter, checkpoint: str) -> ModelSpec:
  runtime = runtime_options(config)
  if convert.is_hf_folder(checkpoint):
    if config.head != "hf":
      raise TaskError(f"{checkpoint} is an HF folder: only HF heads load from it; evaluate it with head=hf "
                      f"(--config=...:head=hf)")
    base = ElectraConfig.from_json_file(os.path.join(checkpoint, "config.json"), **runtime)
    return ModelSpec(adapter.hf_head, base.replace(architectures=(adapter.hf_head,)))
  meta = checkpointing.read_model_config(checkpoint)
  kind = meta.get("kind")
  if kind not in (adapter.hf_head, adapter.original_kind):
    raise TaskError(f"{checkpoint}: a {kind!r} checkpoint cannot be scored on {adapter.name} (needs "
                    f"{adapter.hf_head} or {adapter.original_kind})")
  _check_task(meta, adapter, checkpoint)
  options = dict(meta.get("head_options") or {})
  if kind == adapter.original_kind and adapter.family == "squad":  # inference-time options follow the config
    options["beam_size"] = int(config.beam_size)
  return ModelSpec(kind, checkpointing.electra_config_from_meta(meta, checkpoint, runtime), options)


def _check_task(meta: Mapping[str, Any], adapter, checkpoint: str) -> None:
  """A checkpoint fine-tuned on another task (its recorded task, or its label names) is refused: its head would
  score the wrong labels without an error."""
  task = dict(meta.get("task") or {})
  if task.get("name") and task["name"] != adapter.name:
    raise TaskError(f"{checkpoint} was fine-tuned on {task['name']} (labels {task.get('labels')}), not "
                    f"{adapter.name}: evaluate it with task={task['name']}")
  wanted = list(getattr(getattr(adapter, "task", None), "label_names", None) or [])
  saved = [str(v) for _, v in sorted((int(k), v) for k, v in ((meta.get("config") or {}).get("id2label") or {}).items())]
  if wanted and saved and not all(v.startswith("LABEL_") for v in saved) and saved != [str(w) for w in wanted]:
    raise TaskError(f"{checkpoint} has the labels {saved}, but {adapter.name} has {wanted}: it was fine-tuned on "
                    f"another task")


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, workdir: str) -> dict[str, Any]:
  """Scores a fine-tuned checkpoint (an Orbax checkpoint of this project, or an HF folder with the task's head) on
  the dev sets, writes predictions (and test-set files) to WORKDIR/predictions and WORKDIR/results.json."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_checkpoint = checkpoint
  tokenizer, adapter = load_task(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  check_batch("eval_batch_size", int(config.eval_batch_size), mesh, rules)
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
  spec = _spec_of_checkpoint(config, adapter, checkpoint)
  check_vocab(tokenizer, spec.config, checkpoint)
  start = time.time()
  predictor = Predictor(spec, adapter, mesh, rules)
  if convert.is_hf_folder(checkpoint):
    values, _ = params_from_hf(spec.kind, predictor.shapes, read_hf_weights(checkpoint), source=checkpoint)
  else:
    _, tree = checkpointing.load_params(checkpoint)
    values = {k: np.asarray(v) for k, v in flatten(tree).items()}
    predictor.check_values(values, checkpoint)
  params = predictor.overwrite(predictor.init_params(0), values)
  eval_sets = adapter.eval_sets(include_test=True)
  dev, files = evaluate_sets(predictor, params, eval_sets, int(config.eval_batch_size),
                             os.path.join(workdir, "predictions"))
  base = baselines.of_sets(adapter, eval_sets)
  results = {"task": adapter.name, "family": adapter.family, "head": spec.kind, "checkpoint": checkpoint,
             "data": adapter.read_summaries, "main_metric": adapter.main_metric, "metrics": dev, "files": files,
             "seconds": time.time() - start, "summary": summarize([{"metrics": dev}], base)}
  with_baselines(results, base)
  write_json(os.path.join(workdir, "results.json"), results)
  if distributed.is_primary():
    print(format_summary(results), flush=True)
  return results


def summarize(trials: Sequence[Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]] | None = None
              ) -> dict[str, dict[str, Any]]:
  """{"<set>/<metric>": {"median", "mean", "std" (sample; 0 for one trial), "min", "max", "n", "values"}}, plus
  "baseline" (the trivial baseline's value, eval/baselines.py) and "beats_baseline" (median > baseline) for every
  score that `base` ({set: baselines.of_set(...)}) covers."""
  values: dict[str, list[float]] = {}
  for t in trials:
    for name, m in t["metrics"].items():
      for k, v in m.items():
        values.setdefault(f"{name}/{k}", []).append(float(v))
  out = {}
  for key, vs in values.items():
    a = np.asarray(vs, np.float64)
    out[key] = {"median": float(np.median(a)), "mean": float(np.mean(a)),
                "std": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0, "min": float(np.min(a)),
                "max": float(np.max(a)), "n": len(vs), "values": vs}
    name, _, metric = key.rpartition("/")
    floor = ((base or {}).get(name) or {}).get("metrics", {}).get(metric)
    if floor is not None and baselines.is_score(metric):
      out[key]["baseline"] = float(floor)
      out[key]["beats_baseline"] = bool(out[key]["median"] > floor)
  return out


def with_baselines(results: dict[str, Any], base: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """results + "baselines" (per set: what the trivial predictor is, its metrics) and "beats_baseline" (per set: the
  median main metric against the baseline's; eval/baselines.py), for results.json and the printed summary."""
  medians = {}
  for key, s in results["summary"].items():
    name, _, metric = key.rpartition("/")
    medians.setdefault(name, {})[metric] = s["median"]
  results["baselines"] = dict(base)
  results["beats_baseline"] = baselines.compare(medians, base, str(results.get("main_metric")))
  return results


def format_summary(results: Mapping[str, Any]) -> str:
  """The final table: one row per dev metric (question counts left out), the paper's metric marked with *."""
  summary = results["summary"]
  n = max((s["n"] for s in summary.values()), default=0)
  lines = [f"{results['task']} ({results['head']}, {n} run{'s' if n != 1 else ''})"]
  lines.append(f"{'metric':34s} {'median':>10s} {'mean':>10s} {'std':>10s} {'min':>10s} {'max':>10s} "
               f"{'baseline':>10s}")
  main = results.get("main_metric")
  for key in sorted(k for k in summary if not k.endswith("total")):
    s = summary[key]
    mark = "*" if key.endswith("/" + str(main)) else " "
    floor = f"{s['baseline']:10.4f}" if "baseline" in s else f"{'-':>10s}"
    flag = "" if "beats_baseline" not in s or s["beats_baseline"] else "  (not above the baseline)"
    lines.append(f"{mark}{key:33s} {s['median']:10.4f} {s['mean']:10.4f} {s['std']:10.4f} {s['min']:10.4f} "
                 f"{s['max']:10.4f} {floor}{flag}")
  lines += baselines.verdict_lines(results.get("beats_baseline") or {})
  return "\n".join(lines)
