"""The fine-tuning trainer for GLUE and SQuAD: one library behind the finetune/squad/evaluate binaries.

    from electra_jax.train import finetune_lib
    results = finetune_lib.train_and_evaluate(config, workdir)       # config: configs/glue.py or configs/squad.py
    results["summary"]["dev/accuracy"]                                # {"median", "mean", "std", "min", "max", ...}
    results = finetune_lib.evaluate_checkpoint(config, "/tmp/mrpc/seed_0", "/tmp/mrpc_eval")   # no training

A run does `config.num_trials` fine-tuning runs (seeds seed, seed+1, ...), each in WORKDIR/seed_<s>/:
  checkpoints/            Orbax (params, optimizer state, step); a restarted run resumes from the latest step
  metrics.jsonl, events*  TensorBoard and JSON lines: loss, learning_rate, grad_norm, throughput, ETA, dev scores
  predictions/            GLUE: <TASK>_<split>.tsv for dev sets and the leaderboard files (MRPC.tsv, MNLI-m.tsv, AX.tsv)
                          SQuAD: predictions.json, null_odds.json (v2.0), predictions_thresholded.json (v2.0),
                          nbest_predictions.json
  results.json            this run's dev scores
and WORKDIR/results.json holds every trial plus median, mean, std (sample), min and max of each dev metric; the same
summary is printed as a table.

Initialisation (`config.init_checkpoint`): "" trains from scratch; an HF folder (config.json + model.safetensors)
loads its encoder, and with head="hf" its task head when it has one (else a fresh head, as HF's from_pretrained);
an Orbax checkpoint of this project loads the encoder of its discriminator (pretraining) or of its head (fine-tuning).
The train step is one jax.jit of (params, opt_state, batch, step, rng) with donated state and rng = fold_in(rng, step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
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

from electra_jax import convert, paths, sharding
from electra_jax.convert import flatten, params_from_hf, read_hf_weights, unflatten
from electra_jax.data import glue, squad
from electra_jax.data.tokenization import load_tokenizer
from electra_jax.eval import glue as glue_eval
from electra_jax.eval import squad as squad_eval
from electra_jax.modeling import ElectraConfig, head_class
from electra_jax.modeling import original_heads
from electra_jax.train import checkpointing, compiling, distributed, flops, metrics, optim

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
ORIGINAL_HEADS = original_heads.ORIGINAL_HEADS
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "kernels")
ARCH_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob")


class FinetuneError(ValueError):
  """A fine-tuning configuration or checkpoint that cannot be used; the message says which and why."""


# ================================================================================================ task adapters
@dataclasses.dataclass
class EvalSet:
  """One dev or test set, featurized. `payload` is what the task's scorer needs (examples, features, gold JSON)."""
  name: str                         # "dev", "dev_matched", "test", "ax_test", ...
  arrays: dict[str, np.ndarray]     # per-row model inputs
  labelled: bool
  payload: Any


class GlueAdapter:
  """GLUE classification / regression: data, loss, predictions, scores and leaderboard files."""

  family = "glue"
  hf_head = "ElectraForSequenceClassification"
  original_kind = "OriginalElectraForSequenceClassification"

  def __init__(self, config: ml_collections.ConfigDict, tokenizer):
    self.config = config
    self.tokenizer = tokenizer
    self.task = glue.get_task(config.task)
    self.num_labels = self.task.num_labels
    self.train_keys = INPUT_KEYS + ("labels",)
    self.main_metric = self.task.main_metric
    self.read_summaries: list[str] = []

  @property
  def name(self) -> str:
    return self.task.name

  def head_overrides(self) -> dict[str, Any]:
    regression = self.task.is_regression
    labels = {i: name for i, name in enumerate(self.task.labels)} if not regression else None
    return {"num_labels": self.num_labels, "id2label": labels,
            "problem_type": "regression" if regression else "single_label_classification"}

  def original_options(self) -> dict[str, Any]:
    return {}

  def _read(self, task: str, split: str) -> list[glue.Example]:
    c = self.config
    if c.data_source == "tfds":
      return glue.read_tfds(task, split, data_dir=c.tfds_data_dir or None)
    if c.data_source != "tsv":
      raise FinetuneError(f"config.data_source={c.data_source!r}: must be 'tsv' or 'tfds'")
    examples, summary = glue.read_split_with_summary(task, c.data_dir or None, split,
                                                     skip_malformed=bool(c.skip_malformed))
    self.read_summaries.append(str(summary))
    return examples

  def _featurize(self, examples, double_unordered=False) -> dict[str, np.ndarray]:
    arrays = glue.featurize(examples, self.tokenizer, self.config.max_seq_length, double_unordered=double_unordered,
                            regression=self.task.is_regression)
    return arrays

  def train_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    examples = _limit(self._read(self.task.name, "train"), self.config.max_train_examples)
    arrays = self._featurize(examples, double_unordered=bool(self.config.double_unordered))
    return {k: arrays[k] for k in self.train_keys}, {"train_examples": len(examples),
                                                      "train_rows": int(arrays["input_ids"].shape[0])}

  def eval_sets(self, include_test: bool) -> list[EvalSet]:
    t, limit = self.task, self.config.max_eval_examples
    wanted = [(t.name, s, True) for s in t.splits if s != "train" and not t.is_test(s)]
    if include_test and self.config.get("predict_test", True):
      wanted += [(t.name, s, False) for s in t.submissions]
      if t.name == "mnli":
        wanted.append(("ax", "test", False))
    out = []
    for task, split, labelled in wanted:
      examples = _limit(self._read(task, split), limit)
      arrays = self._featurize(examples)
      name = split if task == t.name else f"{task}_{split}"
      out.append(EvalSet(name, {k: arrays[k] for k in INPUT_KEYS}, labelled, (task, split, examples)))
    return out

  def loss(self, model, batch, rng):
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], labels=batch["labels"],
                 dropout_rng=rng).loss

  def predict(self, model, batch) -> dict[str, jax.Array]:
    return {"logits": model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits}

  def score(self, eval_set: EvalSet, outputs: Mapping[str, np.ndarray], out_dir: str | None
            ) -> tuple[dict[str, float], dict[str, str]]:
    task, split, examples = eval_set.payload
    logits = np.asarray(outputs["logits"])
    preds = logits[:, 0] if self.task.is_regression else np.argmax(logits, axis=-1)
    by_idx = {ex.idx: p for ex, p in zip(examples, preds.tolist())}
    files = {}
    if out_dir is not None:
      t = glue.get_task(task)
      fname = (glue.submission_filename(task, split) if t.is_test(split) else f"{t.folder}_{split}.tsv")
      path = os.path.join(out_dir, fname)
      glue.write_predictions(task, by_idx, path)
      files[eval_set.name] = path
    if not eval_set.labelled:
      return {}, files
    scored = glue_eval.score(task, examples, by_idx)
    return {k: float(v) for k, v in scored.items() if isinstance(v, float)}, files


class SquadAdapter:
  """SQuAD v1.1 / v2.0 with the HF span head or the original beam-search head (+ answerability classifier)."""

  family = "squad"
  hf_head = "ElectraForQuestionAnswering"
  original_kind = "OriginalElectraForQuestionAnswering"

  def __init__(self, config: ml_collections.ConfigDict, tokenizer):
    self.config = config
    self.tokenizer = tokenizer
    self.version = str(config.version)
    self.v2 = self.version == "2.0"
    self.num_labels = 2
    original = config.head == "original"
    self.train_keys = INPUT_KEYS + ("start_positions", "end_positions") + (
        ("is_impossible",) if original and config.answerable_classifier else ())
    self.main_metric = "f1"
    self.read_summaries: list[str] = []

  @property
  def name(self) -> str:
    return f"squad{self.version}"

  def head_overrides(self) -> dict[str, Any]:
    return {"num_labels": 2}

  def original_options(self) -> dict[str, Any]:
    c = self.config
    return {"beam_size": int(c.beam_size), "answerable_classifier": bool(c.answerable_classifier),
            "answerable_weight": float(c.answerable_weight)}

  def _file(self, field: str, kind: str) -> str:
    path = self.config.get(field) or ""
    if not path:
      path = os.fspath(paths.data_dir() / "squad" / f"{kind}-v{self.version}.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"SQuAD {kind} file {path} does not exist (set config.{field}; the official "
                              f"{kind}-v{self.version}.json, or any file in the official format)")
    return path

  def _read(self, kind: str) -> tuple[dict[str, Any], list[squad.SquadExample], str]:
    """(official-format JSON, examples, source) of the train or dev data, from a JSON file or a prepared TFDS."""
    c = self.config
    source = c.get("data_source", "json")
    if source == "tfds":
      split = "train" if kind == "train" else "validation"
      examples = squad.read_squad_tfds(f"v{self.version}", split, data_dir=c.get("tfds_data_dir") or None)
      name = f"TFDS squad/v{self.version} {split}"
      self.read_summaries.append(f"{name}: {len(examples)} questions")
      return squad_json_from_examples(examples, self.version), examples, name
    if source != "json":
      raise FinetuneError(f"config.data_source={source!r}: must be 'json' or 'tfds'")
    path = self._file("train_file" if kind == "train" else "eval_file", kind)
    data, examples = self._load(path)
    return data, examples, path

  def _load(self, path: str) -> tuple[dict[str, Any], list[squad.SquadExample]]:
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise squad.SquadFormatError(f"{path}: not valid JSON ({e})") from None
    version, examples = squad.parse_squad(data, path)
    if version != self.version:
      raise FinetuneError(f"{path} is SQuAD v{version} data but config.version is {self.version}")
    self.read_summaries.append(f"{path}: {len(examples)} questions (v{version})")
    return data, examples

  def _featurize(self, examples, is_training: bool) -> squad.SquadFeatures:
    c = self.config
    return squad.featurize_squad(examples, self.tokenizer, max_seq_length=c.max_seq_length, doc_stride=c.doc_stride,
                                 max_query_length=c.max_query_length, is_training=is_training,
                                 drop_unrecoverable=is_training and bool(c.drop_unrecoverable))

  def train_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    _, examples, path = self._read("train")
    examples = _limit(examples, self.config.max_train_examples)
    feats = self._featurize(examples, is_training=True)
    s = feats.summary
    if s.unrecoverable:
      logging.warning("%s: %d training answers are not recoverable at token boundaries (%s; e.g. %s)", path,
                      len(s.unrecoverable), "dropped" if s.dropped else "kept", s.unrecoverable[:3])
    arrays = feats.arrays()
    return {k: arrays[k] for k in self.train_keys}, {
        "train_examples": len(examples), "train_rows": len(feats), "train_unrecoverable": len(s.unrecoverable),
        "train_dropped": len(s.dropped)}

  def eval_sets(self, include_test: bool) -> list[EvalSet]:
    del include_test  # SQuAD test sets are hidden; the dev set is the evaluation
    data, examples, path = self._read("dev")
    limit = self.config.max_eval_examples
    if limit and limit > 0 and limit < len(examples):
      examples = examples[:limit]
      data = subset_squad(data, {ex.qid for ex in examples})
    feats = self._featurize(examples, is_training=False)
    arrays = feats.arrays()
    return [EvalSet("dev", {k: arrays[k] for k in INPUT_KEYS}, True, (data, examples, feats, path))]

  def loss(self, model, batch, rng):
    kw = dict(start_positions=batch["start_positions"], end_positions=batch["end_positions"], dropout_rng=rng)
    if "is_impossible" in batch:
      kw["is_impossible"] = batch["is_impossible"]
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kw).loss

  def predict(self, model, batch) -> dict[str, jax.Array]:
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    if isinstance(out, original_heads.OriginalQAOutput):
      return {"start_top_log_probs": out.start_top_log_probs, "start_top_index": out.start_top_index,
              "end_top_log_probs": out.end_top_log_probs, "end_top_index": out.end_top_index,
              "answerable_logit": out.answerable_logit}
    return {"start_logits": out.start_logits, "end_logits": out.end_logits}

  def decode(self, examples, feats, outputs: Mapping[str, np.ndarray]):
    """(predictions = best non-null span per question, null_odds (v2.0; {} for v1.1), nbest)."""
    c = self.config
    if "start_top_index" in outputs:
      candidates = original_heads.beam_candidates(outputs["start_top_log_probs"], outputs["start_top_index"],
                                                  outputs["end_top_log_probs"], outputs["end_top_index"])
      null_scores = np.asarray(outputs["answerable_logit"], np.float64) if self.v2 else None
      return squad.decode_candidates(examples, feats, candidates, null_scores=null_scores, null_odds_relative=False,
                                     n_best_size=c.n_best_size, max_answer_length=c.max_answer_length,
                                     null_threshold=math.inf)
    return squad.postprocess(examples, feats, outputs["start_logits"], outputs["end_logits"],
                             n_best_size=c.n_best_size, max_answer_length=c.max_answer_length, version_2=self.v2,
                             null_threshold=math.inf)

  def score(self, eval_set: EvalSet, outputs: Mapping[str, np.ndarray], out_dir: str | None
            ) -> tuple[dict[str, float], dict[str, str]]:
    data, examples, feats, source = eval_set.payload
    predictions, null_odds, nbest = self.decode(examples, feats, outputs)
    thresh = float(self.config.na_threshold)
    files = {}
    if out_dir is not None:
      files["predictions"] = _write_json(os.path.join(out_dir, "predictions.json"), predictions)
      files["nbest_predictions"] = _write_json(os.path.join(out_dir, "nbest_predictions.json"), nbest)
      if self.v2:
        files["null_odds"] = _write_json(os.path.join(out_dir, "null_odds.json"), null_odds)
        thresholded = {q: ("" if null_odds[q] > thresh else text) for q, text in predictions.items()}
        files["predictions_thresholded"] = _write_json(os.path.join(out_dir, "predictions_thresholded.json"),
                                                       thresholded)
    if self.v2:
      scores = squad_eval.evaluate(data, predictions, na_probs=null_odds, na_prob_thresh=thresh, version="2.0",
                                   source=source)
    else:
      scores = squad_eval.evaluate(data, predictions, version="1.1", source=source)
    return {k: float(v) for k, v in scores.items()}, files


def make_adapter(config: ml_collections.ConfigDict, tokenizer) -> GlueAdapter | SquadAdapter:
  family = config.get("family", "")
  if family == "glue":
    return GlueAdapter(config, tokenizer)
  if family == "squad":
    return SquadAdapter(config, tokenizer)
  raise FinetuneError(f"config.family={family!r}: must be 'glue' (configs/glue.py) or 'squad' (configs/squad.py)")


def _limit(items: list, n: int | None) -> list:
  return items[:n] if n and n > 0 else items


def subset_squad(data: Mapping[str, Any], qids: set[str]) -> dict[str, Any]:
  """The SQuAD JSON restricted to the questions `qids` (articles and paragraphs without any are left out)."""
  articles = []
  for article in data["data"]:
    paragraphs = []
    for p in article["paragraphs"]:
      qas = [qa for qa in p["qas"] if qa.get("id") in qids]
      if qas:
        paragraphs.append({**p, "qas": qas})
    if paragraphs:
      articles.append({**article, "paragraphs": paragraphs})
  return {**data, "data": articles}


def squad_json_from_examples(examples: Sequence[squad.SquadExample], version: str) -> dict[str, Any]:
  """The official SQuAD JSON layout of `examples` (e.g. read from TFDS), for the official-equivalent scorer."""
  articles: dict[str, dict[str, dict[str, Any]]] = {}
  for ex in examples:
    paragraphs = articles.setdefault(ex.title, {})
    paragraph = paragraphs.setdefault(ex.context, {"context": ex.context, "qas": []})
    qa: dict[str, Any] = {"id": ex.qid, "question": ex.question,
                          "answers": [{"text": a.text, "answer_start": a.start} for a in ex.answers]}
    if version == "2.0":
      qa["is_impossible"] = ex.is_impossible
      qa["plausible_answers"] = [{"text": a.text, "answer_start": a.start} for a in ex.plausible_answers]
    paragraph["qas"].append(qa)
  data = [{"title": t, "paragraphs": list(ps.values())} for t, ps in articles.items()]
  return {"version": version if version == "1.1" else "v2.0", "data": data}


def _write_json(path: str, obj: Any) -> str:
  if distributed.is_primary():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=None if len(obj) > 100 else 2)
      f.write("\n")
  return path


# ================================================================================================ model and init
@dataclasses.dataclass
class ModelSpec:
  """Which module to build (an HF head class or an original head), with what config and head options."""
  kind: str
  config: ElectraConfig
  options: dict[str, Any] = dataclasses.field(default_factory=dict)

  def module_class(self):
    return head_class(self.kind)

  def build(self, seed: int | jax.Array) -> nnx.Module:
    return self.module_class()(self.config, rngs=nnx.Rngs(seed), **self.options)

  def meta(self) -> dict[str, Any]:
    """The checkpoint's model_config (checkpointing.head_meta, plus head options for original heads)."""
    meta = checkpointing.head_meta(self.kind, self.config)
    if self.options:
      meta["head_options"] = dict(self.options)
    return meta


def runtime_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {k: config.model[k] for k in RUNTIME_FIELDS if k in config.model}


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
  meta = read_checkpoint_meta(path)
  return electra_config_from_meta(meta, path, runtime), "orbax", meta


def read_checkpoint_meta(path: str) -> dict[str, Any]:
  """model_config.json of an Orbax checkpoint directory (a workdir, its checkpoints/ or one step)."""
  directory, _ = checkpointing.resolve_checkpoint_dir(path)
  meta_file = os.path.join(directory, checkpointing.MODEL_CONFIG_FILE)
  if not os.path.isfile(meta_file):
    raise FinetuneError(f"{path}: neither an HF folder (no config.json) nor an Orbax checkpoint of this project "
                        f"(no {meta_file})")
  with open(meta_file, encoding="utf-8") as f:
    return json.load(f)


def electra_config_from_meta(meta: Mapping[str, Any], source: str, runtime: Mapping[str, Any]) -> ElectraConfig:
  kind = meta.get("kind")
  if kind == "pretraining":
    return ElectraConfig.from_hf_dict(meta["discriminator"], source=source, **runtime)
  if kind and "config" in meta:
    return ElectraConfig.from_hf_dict(meta["config"], source=source, **runtime)
  raise FinetuneError(f"{source}: model_config has no usable 'kind'/'config' (keys {sorted(meta)})")


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
    if spec.kind in ORIGINAL_HEADS:
      body, _ = params_from_hf("ElectraModel", body_shapes, tensors, source=path)
      values = {f"electra/{k}": v for k, v in body.items()}
    else:
      values, missing = params_from_hf(spec.kind, dict(shapes), tensors, source=path, new_head_ok=True)
      if missing:
        logging.info("%s has no %s head weights; the head starts fresh: %s", path, spec.kind, missing)
  else:
    _, params = checkpointing.load_params(path)
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


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in flatten(tree).items()}


def _overwrite(params: dict[str, Any], values: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """params (nested, sharded) with the leaves named in `values` replaced, placed like the leaves they replace."""
  if not values:
    return params
  flat = flatten(params)
  for k, v in values.items():
    old = flat[k]
    flat[k] = jax.device_put(np.asarray(v).astype(old.dtype), old.sharding)
  return unflatten(flat)


# ================================================================================================ batches
class TrainStream:
  """Training batches by step: each epoch a fresh seeded permutation, epochs chained (so any step can resume).

  Row p of the endless stream is perm_e[p mod N] with e = p // N and perm_e = default_rng([seed, e]).permutation(N).
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int):
    self.arrays = dict(arrays)
    self.n = int(next(iter(arrays.values())).shape[0])
    if self.n == 0:
      raise FinetuneError("no training examples")
    self.batch_size = batch_size
    self.seed = seed
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
      self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
    return self._perms[epoch]

  def rows(self, step: int) -> np.ndarray:
    pos = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    return np.asarray([self._perm(int(p // self.n))[p % self.n] for p in pos])

  def batch(self, step: int) -> dict[str, np.ndarray]:
    rows = self.rows(step)
    return {k: v[rows] for k, v in self.arrays.items()}


def put_batch(batch: Mapping[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
  """Host arrays (the same global batch on every process) -> global jax.Arrays sharded over the batch axes."""
  out = {}
  for k, x in batch.items():
    sh = sharding.batch_sharding(mesh, rules, ndim=x.ndim)
    out[k] = jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx])
  return out


def batch_shards(mesh, rules) -> int:
  """How many ways a batch is split (the mesh axes that activation_batch maps to)."""
  spec = sharding.batch_sharding(mesh, rules).spec[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


# ================================================================================================ steps
class Steps:
  """The jitted train step and predict function of one model (shared by every trial of a run)."""

  def __init__(self, spec: ModelSpec, adapter, mesh, rules, *, config: ml_collections.ConfigDict | None = None,
               num_train_steps: int | None = None):
    self.spec, self.adapter, self.mesh, self.rules = spec, adapter, mesh, rules
    abstract = nnx.eval_shape(lambda: spec.build(0))
    self.graphdef, abstract_state = nnx.split(abstract)
    self.param_shardings = nnx.to_pure_dict(sharding.logical_to_sharding(abstract_state, mesh, rules))
    self.abstract_params = nnx.to_pure_dict(abstract_state)
    self.shapes = _flat_shapes(self.abstract_params)
    replicated = sharding.replicated(mesh)
    graphdef = self.graphdef

    def predict(params, batch):
      return adapter.predict(nnx.merge(graphdef, params), batch)

    self.predict = self._in_mesh(jax.jit(predict, out_shardings=replicated))
    self.tx = self.schedule = self._train_step_jit = self._compiled_train_step = self._init = None
    # The pure train step (params, opt_state, batch, step, rng) -> (params, opt_state, stats), before jit: what
    # train_step compiles, for tools that trace it (benchmarks/product_bound.py).
    self.train_step_fn = None
    if config is not None:
      self.tx, self.schedule = optim.create(config.optimizer, self.abstract_params,
                                            learning_rate=float(config.learning_rate),
                                            num_train_steps=int(num_train_steps))
      tx, schedule = self.tx, self.schedule

      def train_step(params, opt_state, batch, step, rng):
        rng = jax.random.fold_in(rng, step)

        def loss_fn(p):
          return adapter.loss(nnx.merge(graphdef, p), batch, rng)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(step)}
        return params, opt_state, stats

      self.train_step_fn = train_step

  def _in_mesh(self, fn: Callable) -> Callable:
    """fn run under this mesh and rules (activations' sharding constraints are resolved while tracing)."""

    def wrapped(*args):
      with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
        return fn(*args)

    return wrapped

  def init_params(self, seed: int) -> dict[str, Any]:
    """Freshly initialised parameters, created directly in their shards (one compilation for every seed)."""
    if self._init is None:
      spec = self.spec
      self._init = self._in_mesh(jax.jit(lambda s: nnx.to_pure_dict(nnx.state(spec.build(s))),
                                         out_shardings=self.param_shardings))
    return self._init(jax.random.key(seed))  # nnx.Rngs(key(seed)) draws what nnx.Rngs(seed) draws

  def init_opt_state(self, params):
    with jax.set_mesh(self.mesh):
      opt_state = jax.jit(self.tx.init)(params)
    if self._train_step_jit is None:
      opt_shardings = jax.tree.map(lambda x: x.sharding, opt_state)
      self._train_step_jit = jax.jit(
          self.train_step_fn, donate_argnums=(0, 1),
          out_shardings=(self.param_shardings, opt_shardings, sharding.replicated(self.mesh)))
    return opt_state

  def train_step(self, params, opt_state, batch, step, rng):
    """(params, opt_state, stats) after one step; params and opt_state are donated. Compiled ahead of the first call
    (then the compiler's host memory is released) and reused by every trial: batches have one fixed shape."""
    if self._train_step_jit is None:
      raise RuntimeError("Steps.train_step before init_opt_state (which builds the step for the optimizer state)")
    with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
      if self._compiled_train_step is None:
        self._compiled_train_step = compiling.compile_step(self._train_step_jit, params, opt_state, batch, step, rng,
                                                           name="fine-tuning step")
      return self._compiled_train_step(params, opt_state, batch, step, rng)


def run_predictions(steps: Steps, params, arrays: Mapping[str, np.ndarray], batch_size: int
                    ) -> dict[str, np.ndarray]:
  """Model outputs for every row of `arrays` (padded to whole batches by repeating row 0; padding dropped)."""
  n = int(arrays["input_ids"].shape[0])
  chunks: dict[str, list[np.ndarray]] = {}
  for start in range(0, n, batch_size):
    rows = np.arange(start, start + batch_size)
    rows = np.where(rows < n, rows, 0)
    batch = put_batch({k: v[rows] for k, v in arrays.items()}, steps.mesh, steps.rules)
    out = jax.device_get(steps.predict(params, batch))
    compiling.between_steps()
    keep = min(batch_size, n - start)
    for k, v in out.items():
      chunks.setdefault(k, []).append(np.asarray(v)[:keep])
  return {k: np.concatenate(v) for k, v in chunks.items()}


def evaluate_sets(steps: Steps, params, eval_sets: Sequence[EvalSet], batch_size: int, out_dir: str | None,
                  labelled_only: bool = False) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
  """{set name: metrics} for the labelled sets (prediction files written to out_dir when given)."""
  results, files = {}, {}
  for es in eval_sets:
    if labelled_only and not es.labelled:
      continue
    outputs = run_predictions(steps, params, es.arrays, batch_size)
    scores, written = steps.adapter.score(es, outputs, out_dir)
    files.update(written)
    if es.labelled:
      results[es.name] = scores
  return results, files


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
  """Fine-tunes one seed (resuming from trial_dir/checkpoints if present), then scores and writes predictions."""
  ckpt = _checkpointer(os.path.join(trial_dir, checkpointing.CHECKPOINTS_SUBDIR), steps.spec,
                      int(config.keep_checkpoints))
  try:
    params = steps.init_params(seed)
    opt_state = steps.init_opt_state(params)
    abstract = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), t)
    restored = ckpt.restore(abstract(params), abstract(opt_state))
    if restored is not None:
      step, params, opt_state = restored.step, restored.params, restored.opt_state
      logging.info("seed %d: resuming at step %d of %d", seed, step, total_steps)
    else:
      step = 0
      params = _overwrite(params, init())
    finished_before = restored is not None and restored.step >= total_steps
    writer = metrics.MetricWriter(trial_dir, resume_step=step if restored is not None else None)
    stream = TrainStream(train, int(config.batch_size), seed)
    rng = jax.random.key(seed)
    seq_len = int(next(iter(train.values())).shape[1])
    meter = metrics.Throughput(
        tokens_per_step=int(config.batch_size) * seq_len,
        flops_per_step=3.0 * int(config.batch_size) * flops.discriminator_forward_flops(
            flops.Dims.from_config(steps.spec.config, seq_len), sparse_embed_lookup=True),
        num_devices=jax.device_count(), peak_flops_per_device=flops.peak_flops_per_device(),
        total_steps=total_steps)
    pending: list[dict[str, jax.Array]] = []
    last_loss = float("nan")
    preempted = False
    meter.start(step)
    timed = False
    log_every, eval_every = int(config.log_every_steps), int(config.eval_every_steps)
    ckpt_every = int(config.checkpoint_every_steps)
    while step < total_steps:
      batch = put_batch(stream.batch(step), steps.mesh, steps.rules)
      params, opt_state, stats = steps.train_step(params, opt_state, batch, jnp.int32(step), rng)
      pending.append(stats)
      step += 1
      if not timed:  # restart the clock after the first step, so compilation does not count in rates and ETA
        jax.block_until_ready(stats)
        meter.start(step)
        timed = True
      if step % max(log_every, 1) == 0 or step == total_steps:
        host = jax.device_get(pending)
        pending = []
        scalars = {k: float(np.mean([h[k] for h in host])) for k in ("loss", "grad_norm")}
        scalars["learning_rate"] = float(host[-1]["learning_rate"])
        if not math.isfinite(scalars["loss"]):
          raise FloatingPointError(f"seed {seed}: loss is {scalars['loss']} at step {step}")
        last_loss = scalars["loss"]
        scalars.update(meter.update(step))
        writer.write_scalars(step, scalars)
        logging.info("[%s seed %d] %s", steps.adapter.name, seed, metrics.format_step_line(step, total_steps, scalars))
      if eval_every > 0 and step % eval_every == 0 and step < total_steps:
        dev, _ = evaluate_sets(steps, params, eval_sets, int(config.eval_batch_size), None, labelled_only=True)
        writer.write_scalars(step, {f"{name}/{k}": v for name, m in dev.items() for k, v in m.items()})
        logging.info("[%s seed %d] step %d dev: %s", steps.adapter.name, seed, step, _brief(dev))
      if ckpt.preemption_requested(step):
        _save(ckpt, step, params, opt_state, seed)
        preempted = True
        break
      if ckpt_every > 0 and step % ckpt_every == 0 and step < total_steps:
        _save(ckpt, step, params, opt_state, seed)
    if not preempted:
      _save(ckpt, step, params, opt_state, seed)
    if preempted:
      writer.close()
      return {"seed": seed, "workdir": trial_dir, "steps": step, "preempted": True}
    out_dir = os.path.join(trial_dir, "predictions") if config.get("write_predictions", True) else None
    dev, files = evaluate_sets(steps, params, eval_sets, int(config.eval_batch_size), out_dir)
    if not finished_before:  # (a finished run re-evaluated: its metrics.jsonl has these scores already)
      writer.write_scalars(step, {f"{name}/{k}": v for name, m in dev.items() for k, v in m.items()})
    writer.close()
    result = {"seed": seed, "workdir": trial_dir, "steps": step, "final_train_loss": last_loss, "metrics": dev,
              "files": files}
    _write_json(os.path.join(trial_dir, "results.json"), result)
    return result
  finally:
    ckpt.close()


def _save(ckpt: checkpointing.Checkpointer, step: int, params, opt_state, seed: int) -> None:
  """Saves a step. One process: host copies (Orbax would otherwise compile a slice per replicated array shape,
  seconds of XLA compilation for a small model); several processes: the sharded arrays themselves."""
  if jax.process_count() == 1:
    params, opt_state = jax.device_get((params, opt_state))
  ckpt.save(step, params, opt_state, {"seed": seed})


def _checkpointer(directory: str, spec: ModelSpec, keep: int) -> checkpointing.Checkpointer:
  """The trial's Checkpointer. A directory that already holds a model_config.json (a run being resumed) must describe
  the same model, so that a changed config is refused with a clear message instead of a shape error."""
  meta = json.loads(json.dumps(spec.meta()))
  meta_file = os.path.join(directory, checkpointing.MODEL_CONFIG_FILE)
  if os.path.isfile(meta_file):
    with open(meta_file, encoding="utf-8") as f:
      existing = json.load(f)
    if existing != meta:
      changed = sorted(k for k in set(existing) | set(meta) if existing.get(k) != meta.get(k))
      raise FinetuneError(f"{directory} holds checkpoints of another model (model_config differs in {changed}); "
                          f"use a new workdir")
    return checkpointing.Checkpointer(directory, keep=keep)
  return checkpointing.Checkpointer(directory, keep=keep, model_meta=meta)


def _brief(dev: Mapping[str, Mapping[str, float]]) -> str:
  return "; ".join(f"{name} " + " ".join(f"{k} {v:.4f}" for k, v in m.items()) for name, m in dev.items())


# ================================================================================================ runs
def resolve_vocab(config: ml_collections.ConfigDict) -> str:
  if config.vocab_file:
    return config.vocab_file
  init = config.init_checkpoint
  if init and convert.is_hf_folder(init) and os.path.isfile(os.path.join(init, "vocab.txt")):
    return os.path.join(init, "vocab.txt")
  return os.fspath(paths.default_vocab())


def _setup(config: ml_collections.ConfigDict):
  tokenizer = load_tokenizer(resolve_vocab(config), lowercase=bool(config.do_lower_case))
  adapter = make_adapter(config, tokenizer)
  mesh = sharding.make_mesh(dict(config.mesh))
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  return tokenizer, adapter, mesh, rules


def _check_vocab(tokenizer, electra_config: ElectraConfig, source: str) -> None:
  size = tokenizer.get_vocab_size()
  if size > electra_config.vocab_size:
    raise FinetuneError(f"the vocab has {size} tokens but the model ({source}) only {electra_config.vocab_size} "
                        f"embeddings; set config.vocab_file to the model's vocab")


def _check_batch(name: str, size: int, mesh, rules) -> None:
  shards = batch_shards(mesh, rules)
  if size % shards:
    raise FinetuneError(f"config.{name}={size} is not divisible by the {shards} batch shards of the mesh "
                        f"{dict(mesh.shape)}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every trial of `config` in WORKDIR/seed_<s>, writes WORKDIR/results.json and prints the summary table."""
  tokenizer, adapter, mesh, rules = _setup(config)
  _check_batch("batch_size", int(config.batch_size), mesh, rules)
  _check_batch("eval_batch_size", int(config.eval_batch_size), mesh, rules)
  spec, init_kind, meta = model_spec(config, adapter)
  _check_vocab(tokenizer, spec.config, config.init_checkpoint or "config.model")
  start = time.time()
  train, data_info = adapter.train_arrays()
  eval_sets = adapter.eval_sets(include_test=True)
  for line in adapter.read_summaries:
    logging.info("read %s", line)
  total = num_train_steps(config, data_info["train_rows"])
  logging.info("%s: %s; %d steps of %d (head %s, init %s)", adapter.name, data_info, total, config.batch_size,
               spec.kind, init_kind)
  steps = Steps(spec, adapter, mesh, rules, config=config, num_train_steps=total)
  logging.info("parameters:\n%s", sharding.describe(
      nnx.split(nnx.eval_shape(lambda: spec.build(0)))[1], mesh, rules))
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
      "trials": trials, "summary": summarize([t for t in trials if "metrics" in t]),
      "seconds": time.time() - start}
  _write_json(os.path.join(workdir, "results.json"), results)
  if distributed.is_primary() and not trials[-1].get("preempted"):
    print(format_summary(results), flush=True)
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, workdir: str) -> dict[str, Any]:
  """Scores a fine-tuned checkpoint (an Orbax checkpoint of this trainer, or an HF folder with the task's head) on
  the dev sets, writes predictions (and test-set files) to WORKDIR/predictions and WORKDIR/results.json."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.init_checkpoint = checkpoint
  tokenizer, adapter, mesh, rules = _setup(config)
  _check_batch("eval_batch_size", int(config.eval_batch_size), mesh, rules)
  if not os.path.exists(checkpoint):
    raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
  runtime = runtime_options(config)
  if convert.is_hf_folder(checkpoint):
    if config.head != "hf":
      raise FinetuneError(f"{checkpoint} is an HF folder: only HF heads load from it; evaluate it with head=hf "
                          f"(--config=...:head=hf)")
    base = ElectraConfig.from_json_file(os.path.join(checkpoint, "config.json"), **runtime)
    spec = ModelSpec(adapter.hf_head, base.replace(architectures=(adapter.hf_head,)))
  else:
    meta = read_checkpoint_meta(checkpoint)
    kind = meta.get("kind")
    if kind not in (adapter.hf_head, adapter.original_kind):
      raise FinetuneError(f"{checkpoint}: a {kind!r} checkpoint cannot be scored on {adapter.name} (needs "
                          f"{adapter.hf_head} or {adapter.original_kind})")
    options = dict(meta.get("head_options") or {})
    if kind == adapter.original_kind and adapter.family == "squad":  # inference-time options follow the config
      options["beam_size"] = int(config.beam_size)
    spec = ModelSpec(kind, electra_config_from_meta(meta, checkpoint, runtime), options)
  _check_vocab(tokenizer, spec.config, checkpoint)
  start = time.time()
  steps = Steps(spec, adapter, mesh, rules)
  params = steps.init_params(0)
  if convert.is_hf_folder(checkpoint):
    values, _ = params_from_hf(spec.kind, steps.shapes, read_hf_weights(checkpoint), source=checkpoint)
  else:
    _, tree = checkpointing.load_params(checkpoint)
    values = {k: np.asarray(v) for k, v in flatten(tree).items()}
    missing = sorted(set(steps.shapes) - set(values))
    unknown = sorted(set(values) - set(steps.shapes))
    if missing or unknown:
      raise FinetuneError(f"{checkpoint}: parameters do not match {spec.kind}: missing {missing[:5]}, "
                          f"unexpected {unknown[:5]}")
    for k, v in values.items():
      if tuple(v.shape) != steps.shapes[k]:
        raise FinetuneError(f"{checkpoint}: parameter {k} has shape {tuple(v.shape)}, the model expects "
                            f"{steps.shapes[k]}")
  params = _overwrite(params, values)
  eval_sets = adapter.eval_sets(include_test=True)
  dev, files = evaluate_sets(steps, params, eval_sets, int(config.eval_batch_size),
                             os.path.join(workdir, "predictions"))
  results = {"task": adapter.name, "family": adapter.family, "head": spec.kind, "checkpoint": checkpoint,
             "data": adapter.read_summaries, "main_metric": adapter.main_metric, "metrics": dev, "files": files,
             "seconds": time.time() - start, "summary": summarize([{"metrics": dev}])}
  _write_json(os.path.join(workdir, "results.json"), results)
  if distributed.is_primary():
    print(format_summary(results), flush=True)
  return results


# ================================================================================================ summaries
def summarize(trials: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """{"<set>/<metric>": {"median", "mean", "std" (sample; 0 for one trial), "min", "max", "n", "values"}}."""
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
  return out


def format_summary(results: Mapping[str, Any]) -> str:
  """The final table: one row per dev metric (question counts left out), the paper's metric marked with *."""
  summary = results["summary"]
  n = max((s["n"] for s in summary.values()), default=0)
  lines = [f"{results['task']} ({results['head']}, {n} run{'s' if n != 1 else ''})"]
  lines.append(f"{'metric':34s} {'median':>10s} {'mean':>10s} {'std':>10s} {'min':>10s} {'max':>10s}")
  main = results.get("main_metric")
  for key in sorted(k for k in summary if not k.endswith("total")):
    s = summary[key]
    mark = "*" if key.endswith("/" + str(main)) else " "
    lines.append(f"{mark}{key:33s} {s['median']:10.4f} {s['mean']:10.4f} {s['std']:10.4f} {s['min']:10.4f} "
                 f"{s['max']:10.4f}")
  return "\n".join(lines)
