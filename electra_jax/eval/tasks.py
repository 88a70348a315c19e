"""Fine-tuning tasks: what a task reads, how its model is scored, what files it writes (GLUE and SQuAD).

    adapter = make_adapter(config, tokenizer)      # config: configs/glue.py or configs/squad.py
    train, info = adapter.train_arrays()           # featurized training rows (numpy)
    eval_sets = adapter.eval_sets(include_test=True)
    loss = adapter.loss(model, batch, rng)         # the head's training loss
    outputs = adapter.predict(model, batch)        # what scoring needs
    scores, files = adapter.score(eval_set, outputs, out_dir)   # official-equivalent scores + prediction files

Both the fine-tuning trainer (train/) and checkpoint evaluation (eval/evaluation.py) use these adapters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from electra_jax import errors
from electra_jax import checkpointing, convert, paths
from electra_jax.data import glue, squad
from electra_jax.data.tokenization import load_tokenizer
from electra_jax.eval import glue as glue_eval
from electra_jax.eval import squad as squad_eval
from electra_jax.modeling import original_heads
from electra_jax.runtime import distributed

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class TaskError(errors.Error, ValueError):
  """A task configuration or input that cannot be used; the message says which and why."""


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
    labels = {i: name for i, name in enumerate(self.task.label_names)} if not regression else None
    return {"num_labels": self.num_labels, "id2label": labels,
            "problem_type": "regression" if regression else "single_label_classification"}

  def original_options(self) -> dict[str, Any]:
    return {}

  def _read(self, task: str, split: str) -> list[glue.Example]:
    c = self.config
    if c.data_source == "tfds":
      return glue.read_tfds(task, split, data_dir=c.tfds_data_dir or None)
    if c.data_source != "tsv":
      raise TaskError(f"config.data_source={c.data_source!r}: must be 'tsv' or 'tfds'")
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


# Default SQuAD files under <data dir>/squad, first found wins: the official names, then the shared data folder's
# v2.0 dev subset (data/README.md). No training set ships with the data: fine-tuning needs config.train_file.
DEFAULT_FILES = {("train", "1.1"): ("train-v1.1.json",), ("train", "2.0"): ("train-v2.0.json",),
                 ("dev", "1.1"): ("dev-v1.1.json",), ("dev", "2.0"): ("dev-v2.0.json", "dev-v2.0.cs224n-dev-half.json")}


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
    """config.<field>, else the first of the data folder's files for this split and version (DEFAULT_FILES)."""
    path = self.config.get(field) or ""
    folder = paths.data_dir() / "squad"
    if not path:
      candidates = [os.fspath(folder / name) for name in DEFAULT_FILES[(kind, self.version)]]
      path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    if not os.path.isfile(path):
      there = sorted(os.listdir(folder)) if folder.is_dir() else []
      raise FileNotFoundError(f"SQuAD {kind} file {path} does not exist; pass --config.{field}=<the official "
                              f"{kind}-v{self.version}.json, or any file in its format> ({folder} holds "
                              f"{', '.join(there) or 'nothing'})")
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
      raise TaskError(f"config.data_source={source!r}: must be 'json' or 'tfds'")
    path = self._file("train_file" if kind == "train" else "eval_file", kind)
    data, examples = self._load(path)
    return data, examples, path

  def _load(self, path: str) -> tuple[dict[str, Any], list[squad.SquadExample]]:
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise squad.SquadFormatError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
      raise squad.SquadFormatError(errors.utf8_location(path, e)) from None
    version, examples = squad.parse_squad(data, path)
    if version != self.version:
      raise TaskError(f"{path} is SQuAD v{version} data but config.version is {self.version}")
    self.read_summaries.append(f"{path}: {len(examples)} questions (v{version})")
    return data, examples

  def _featurize(self, examples, is_training: bool, source: str) -> squad.SquadFeatures:
    c = self.config
    return squad.featurize_squad(examples, self.tokenizer, max_seq_length=c.max_seq_length, doc_stride=c.doc_stride,
                                 max_query_length=c.max_query_length, is_training=is_training,
                                 drop_unrecoverable=is_training and bool(c.drop_unrecoverable), source=source)

  def train_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    _, examples, path = self._read("train")
    examples = _limit(examples, self.config.max_train_examples)
    feats = self._featurize(examples, is_training=True, source=path)
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
    feats = self._featurize(examples, is_training=False, source=path)
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
      files["predictions"] = write_json(os.path.join(out_dir, "predictions.json"), predictions)
      files["nbest_predictions"] = write_json(os.path.join(out_dir, "nbest_predictions.json"), nbest)
      if self.v2:
        files["null_odds"] = write_json(os.path.join(out_dir, "null_odds.json"), null_odds)
        thresholded = {q: ("" if null_odds[q] > thresh else text) for q, text in predictions.items()}
        files["predictions_thresholded"] = write_json(os.path.join(out_dir, "predictions_thresholded.json"),
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
  raise TaskError(f"config.family={family!r}: must be 'glue' (configs/glue.py) or 'squad' (configs/squad.py)")


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


def _strict(obj: Any) -> Any:
  """obj with NaN and Inf floats replaced by None, so that it is strict JSON."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, Mapping):
    return {k: _strict(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_strict(v) for v in obj]
  return obj


def write_json(path: str, obj: Any) -> str:
  """Writes `obj` as strict JSON (NaN and Inf as null) on process 0; returns the path."""
  if distributed.is_primary():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    paths.write_json_atomically(path, _strict(obj), indent=None if len(obj) > 100 else 2, sort_keys=False,
                                allow_nan=False)
  return path


def resolve_vocab(config: ml_collections.ConfigDict) -> str:
  """config.vocab_file, else the init checkpoint's vocab (an HF folder's vocab.txt, or the vocab a checkpoint of this
  project records), else the BERT uncased vocab."""
  if config.vocab_file:
    return config.vocab_file
  init = config.get("init_checkpoint", "")
  if init and convert.is_hf_folder(init) and os.path.isfile(os.path.join(init, "vocab.txt")):
    return os.path.join(init, "vocab.txt")
  if init and os.path.isdir(init):
    try:
      recorded = (checkpointing.read_model_config(init).get("tokenizer") or {}).get("vocab_file")
    except (checkpointing.CheckpointError, OSError, ValueError):
      recorded = None
    if recorded and os.path.isfile(recorded):
      return recorded
  return os.fspath(paths.default_vocab())


def load_task(config: ml_collections.ConfigDict):
  """(tokenizer, adapter) of a task config."""
  tokenizer = load_tokenizer(resolve_vocab(config), lowercase=bool(config.do_lower_case))
  return tokenizer, make_adapter(config, tokenizer)
