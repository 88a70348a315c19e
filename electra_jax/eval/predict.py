r"""Predictions from the command line, one JSON line per input line.

    echo "a gripping, funny film" | python -m electra_jax.eval.predict --model=DIR --task=text-classification
    printf 'first sentence\tsecond sentence\n' | python -m electra_jax.eval.predict --model=DIR --task=text-classification
    echo "John lives in Paris" | python -m electra_jax.eval.predict --model=DIR --task=token-classification
    printf 'Who lives in Paris?\tJohn lives in Paris.\n' | python -m electra_jax.eval.predict --model=DIR \
        --task=question-answering

DIR is a Hugging Face folder (config.json + model.safetensors + vocab.txt, as `to_hf(..., vocab_file=...)` writes it)
or a checkpoint directory of this project (with `--vocab_file` when the checkpoint does not record its vocab), or
a Hugging Face Hub model id (ID or ID@REVISION), resolved through the Hugging Face cache (electra_jax/convert/hub.py).
Outputs follow `transformers.pipeline`: text-classification {"label", "score"} (softmax, sigmoid for one label,
raw value for regression); token-classification a list of {"entity", "score", "index", "word", "start", "end"} per
line, "O" left out; question-answering {"answer", "score", "start", "end"} (score = p(start) * p(end) over context
tokens, spans of at most --max_answer_length tokens, long contexts in windows of --doc_stride).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags
from flax import nnx

from electra_jax import errors
from electra_jax.data.tokenization import load_tokenizer

TASK_HEADS = {
    "text-classification": "ElectraForSequenceClassification",
    "token-classification": "ElectraForTokenClassification",
    "question-answering": "ElectraForQuestionAnswering",
}


class PredictError(errors.Error, ValueError):
  """Input the prediction command cannot use (the message says which line and why)."""


# ------------------------------------------------------------------------------------------------ loading
def load_model(model_dir: str, task: str, vocab_file: str | None = None, lowercase: bool | None = None):
  """(model, tokenizer) for an HF folder or a checkpoint of this project."""
  head = TASK_HEADS[task]
  from electra_jax.convert import (from_hf, hub, is_hf_folder,  # pylint: disable=import-outside-toplevel
                                   read_tokenizer_settings)
  model_dir = hub.resolve(model_dir)   # a Hub model id -> its folder in the Hugging Face cache
  if is_hf_folder(model_dir):
    model = from_hf(model_dir)
    settings = read_tokenizer_settings(model_dir) if vocab_file is None else {
        "vocab_file": vocab_file, "lowercase": True, "strip_accents": None}
  else:
    model, settings = _load_project_checkpoint(model_dir, vocab_file)
  if type(model).__name__ != head:
    raise PredictError(f"{model_dir} holds an {type(model).__name__}; task {task} needs an {head}")
  if lowercase is not None:
    settings["lowercase"] = lowercase
  tok = load_tokenizer(settings["vocab_file"], lowercase=settings["lowercase"],
                       strip_accents=settings.get("strip_accents"))
  return model, tok


def _load_project_checkpoint(path: str, vocab_file: str | None):
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  meta, params = checkpointing.load_params(path)
  if meta.get("kind") == "pretraining":
    raise PredictError(f"{path} is a pretraining checkpoint (generator + discriminator): it has no task head; "
                       f"fine-tune it first")
  graphdef, state = nnx.split(checkpointing.build_model(meta, abstract=True))
  nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, params))
  tok_meta = meta.get("tokenizer") or {}
  vocab = vocab_file or tok_meta.get("vocab_file")
  if not vocab:
    raise PredictError(f"{path} does not record its vocab file; pass --vocab_file")
  return nnx.merge(graphdef, state), {"vocab_file": vocab, "lowercase": tok_meta.get("lowercase", True),
                                      "strip_accents": tok_meta.get("strip_accents")}


# ------------------------------------------------------------------------------------------------ batching
def _forward_fn(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, ids, mask, types):
    return nnx.merge(graphdef, state)(ids, attention_mask=mask, token_type_ids=types)

  return lambda ids, mask, types: forward(state, ids, mask, types)


def _pad(rows: Sequence[Sequence[int]], multiple: int = 16) -> np.ndarray:
  length = max(len(r) for r in rows)
  length = -(-length // multiple) * multiple   # few distinct shapes, few compilations
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _encode(tok, lines: list[str], max_length: int, pairs: bool) -> list[Any]:
  encodings = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      raise PredictError(f"line {lineno} is empty: give one input per line")
    parts = line.split("\t") if pairs else [line]
    if len(parts) > 2:
      raise PredictError(f"line {lineno} has {len(parts)} tab-separated fields; give a text or a text<TAB>pair")
    enc = tok.encode(*parts)
    if len(enc.ids) > max_length:
      print(f"predict: line {lineno} is {len(enc.ids)} tokens long; truncated to {max_length}", file=sys.stderr)
      tok.enable_truncation(max_length)
      enc = tok.encode(*parts)
      tok.no_truncation()
    encodings.append(enc)
  return encodings


def _batched_logits(model, encodings, batch_size: int):
  """Yields (encodings, float64 logits) batch by batch, through one jitted forward."""
  forward = _forward_fn(model)
  for start in range(0, len(encodings), batch_size):
    chunk = encodings[start:start + batch_size]
    ids, types, mask = (_pad([getattr(e, a) for e in chunk]) for a in ("ids", "type_ids", "attention_mask"))
    yield chunk, np.asarray(forward(ids, mask, types).logits, np.float64)


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ tasks
def classify(model, tok, lines: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
  config = model.config
  encodings = _encode(tok, lines, config.max_position_embeddings, pairs=True)
  labels = config.labels
  out = []
  for _, logits in _batched_logits(model, encodings, batch_size):
    for row in logits:
      if config.problem_type == "regression":
        scores = row
      elif config.problem_type == "multi_label_classification" or config.num_labels == 1:
        scores = 1.0 / (1.0 + np.exp(-row))
      else:
        scores = _softmax(row)
      best = int(np.argmax(scores))
      out.append({"label": labels[best], "score": float(scores[best])})
  return out


def tag(model, tok, lines: list[str], batch_size: int = 32, ignore_labels: Sequence[str] = ("O",)):
  config = model.config
  encodings = _encode(tok, lines, config.max_position_embeddings, pairs=False)
  labels = config.labels
  out = []
  for chunk, logits in _batched_logits(model, encodings, batch_size):
    for enc, p in zip(chunk, _softmax(logits)):
      entities = []
      for i, (token, special, (s, e)) in enumerate(zip(enc.tokens, enc.special_tokens_mask, enc.offsets)):
        if special:
          continue
        best = int(np.argmax(p[i]))
        if labels[best] in ignore_labels:
          continue
        entities.append({"entity": labels[best], "score": float(p[i, best]), "index": i, "word": token,
                         "start": s, "end": e})
      out.append(entities)
  return out


def answer(model, tok, lines: list[str], max_answer_length: int = 15, doc_stride: int = 128,
           max_length: int | None = None, max_query_length: int = 64) -> list[dict[str, Any]]:
  """Extractive QA over `question<TAB>context` lines; long contexts are read in overlapping windows."""
  config = model.config
  max_length = max_length or min(384, config.max_position_embeddings)
  forward = _forward_fn(model)
  out = []
  for lineno, line in enumerate(lines, 1):
    parts = line.split("\t")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
      raise PredictError(f"line {lineno}: give 'question<TAB>context' (both non-empty)")
    question, context = parts
    q_ids = tok.encode(question, add_special_tokens=False).ids
    if len(q_ids) > max_query_length:
      raise PredictError(f"line {lineno}: the question is {len(q_ids)} tokens long; at most {max_query_length}")
    ctx = tok.encode(context, add_special_tokens=False)
    room = max_length - len(q_ids) - 3
    best = None
    windows = range(0, max(1, len(ctx.ids) - room + doc_stride), doc_stride) if len(ctx.ids) > room else [0]
    for w in windows:
      c_ids = ctx.ids[w:w + room]
      ids = [tok.token_to_id("[CLS]")] + q_ids + [tok.token_to_id("[SEP]")] + c_ids + [tok.token_to_id("[SEP]")]
      first = len(q_ids) + 2
      types = [0] * first + [1] * (len(c_ids) + 1)
      res = forward(_pad([ids]), _pad([[1] * len(ids)]), _pad([types]))
      start = np.asarray(res.start_logits, np.float64)[0, :len(ids)]
      end = np.asarray(res.end_logits, np.float64)[0, :len(ids)]
      is_ctx = np.zeros(len(ids), bool)
      is_ctx[first:first + len(c_ids)] = True
      ps = _softmax(np.where(is_ctx, start, -10000.0))
      pe = _softmax(np.where(is_ctx, end, -10000.0))
      scores = np.triu(np.tril(np.outer(ps, pe), max_answer_length - 1))
      scores[~is_ctx] = 0
      scores[:, ~is_ctx] = 0
      s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
      if best is None or scores[s, e] > best[0]:
        cs, ce = ctx.offsets[w + s - first][0], ctx.offsets[w + e - first][1]
        best = (float(scores[s, e]), cs, ce)
    score, cs, ce = best
    out.append({"answer": context[cs:ce], "score": score, "start": int(cs), "end": int(ce)})
  return out


def check_model_dir(model_dir: str) -> str:
  """Fails fast (before reading the input) on a --model that is neither an HF folder (or a Hub model id, resolved
  through the Hugging Face cache) nor a checkpoint of ours; returns the local folder."""
  import os  # pylint: disable=import-outside-toplevel
  from electra_jax.convert import hub, is_hf_folder  # pylint: disable=import-outside-toplevel
  model_dir = hub.resolve(model_dir)
  if not os.path.exists(model_dir):
    raise PredictError(f"--model={model_dir} does not exist: give a Hugging Face folder (config.json + "
                       f"model.safetensors) or a fine-tuned checkpoint of this project")
  if not is_hf_folder(model_dir):
    from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
    try:
      checkpointing.read_model_config(model_dir)
    except checkpointing.CheckpointError as e:
      raise PredictError(str(e)) from None
  return model_dir


def predict(model_dir: str, task: str, lines: list[str], vocab_file: str | None = None, **kw):
  if task not in TASK_HEADS:
    raise PredictError(f"unknown task {task!r}; tasks: {sorted(TASK_HEADS)}")
  model_dir = check_model_dir(model_dir)
  lines = [l.rstrip("\n").rstrip("\r") for l in lines]
  if not lines or not any(l.strip() for l in lines):
    raise PredictError("no input: give one text per line on standard input")
  model, tok = load_model(model_dir, task, vocab_file)
  if task == "text-classification":
    return classify(model, tok, lines)
  if task == "token-classification":
    return tag(model, tok, lines)
  return answer(model, tok, lines, **kw)


def read_lines(stream, name: str = "standard input") -> list[str]:
  """The lines of a binary stream decoded as UTF-8; bytes that are not (binary input) are an error naming the line."""
  lines = []
  for lineno, raw in enumerate(stream, start=1):
    try:
      lines.append(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise PredictError(f"{name}, line {lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); give text, one "
                         f"input per line") from None
  return lines


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The binary's flags, defined when it runs (importing this module for its functions defines none, so another
  binary's flags of the same names can live in the same process)."""
  flags.DEFINE_string("model", None, "HF folder, Hub model id (ID or ID@REVISION) or checkpoint directory of this "
                      "project.")
  flags.DEFINE_enum("task", None, sorted(TASK_HEADS), "What to predict.")
  flags.DEFINE_string("vocab_file", None, "vocab.txt, when the model folder does not carry one.")
  flags.DEFINE_integer("max_answer_length", 15, "question-answering: longest answer in tokens.")
  flags.DEFINE_integer("doc_stride", 128, "question-answering: stride between context windows.")

def main(argv):
  del argv
  kw = dict(max_answer_length=FLAGS.max_answer_length, doc_stride=FLAGS.doc_stride) \
      if FLAGS.task == "question-answering" else {}
  model_dir = check_model_dir(FLAGS.model)
  results = predict(model_dir, FLAGS.task, read_lines(sys.stdin.buffer), FLAGS.vocab_file, **kw)  # bad: exit 2
  for r in results:
    print(json.dumps(r))


if __name__ == "__main__":
  from electra_jax.runtime import cli  # pylint: disable=import-outside-toplevel
  define_flags()
  cli.run(main, required=("model", "task"), error_status=2)
