"""SQuAD readers: the official JSON (v1.1 and v2.0) and prepared TFDS squad datasets, as SquadExamples."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from electra_jax import errors

PathLike = str | os.PathLike


class SquadFormatError(errors.Error, ValueError):
  """A SQuAD record that cannot be used; the message names the file and the question id."""


class Answer(NamedTuple):
  text: str
  start: int  # character offset of the answer in the context


@dataclasses.dataclass(frozen=True)
class SquadExample:
  """One question. `answers` is empty for unanswerable (v2.0) questions, which may carry `plausible_answers`."""
  qid: str
  question: str
  context: str
  answers: tuple[Answer, ...]
  is_impossible: bool = False
  plausible_answers: tuple[Answer, ...] = ()
  title: str = ""


# ----------------------------------------------------------------------------------------------------------------------
# Reading


def detect_version(dataset_json: Mapping[str, Any]) -> str:
  """"1.1" or "2.0": from the `version` field ("1.1", "v2.0"), else "2.0" if any question has `is_impossible`."""
  version = str(dataset_json.get("version", "")).lower().lstrip("v")
  if version.startswith("2"):
    return "2.0"
  if version.startswith("1"):
    return "1.1"
  for article in dataset_json.get("data", []):
    for paragraph in article.get("paragraphs", []):
      if any("is_impossible" in qa for qa in paragraph.get("qas", [])):
        return "2.0"
  return "1.1"


def _answers(raw: Any, context: str, where: str, field: str) -> tuple[Answer, ...]:
  if not isinstance(raw, list):
    raise SquadFormatError(f"{where}: '{field}' is not a list")
  out = []
  for k, ans in enumerate(raw):
    if not isinstance(ans, Mapping) or "text" not in ans or "answer_start" not in ans:
      raise SquadFormatError(f"{where}: {field}[{k}] lacks 'text' or 'answer_start'")
    text, start = ans["text"], ans["answer_start"]
    if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
      raise SquadFormatError(f"{where}: {field}[{k}] has a non-string text or a non-integer answer_start")
    if start < 0 or context[start:start + len(text)] != text:
      found = context[max(start, 0):max(start, 0) + len(text)]
      raise SquadFormatError(f"{where}: {field}[{k}] text {text!r} does not match the context at answer_start "
                             f"{start} (context has {found!r} there)")
    out.append(Answer(text, start))
  return tuple(out)


def example_from_qa(qa: Mapping[str, Any], context: str, title: str, version: str, source: str) -> SquadExample:
  """Validates one official-format question record (`qas` entry) and returns it as a SquadExample."""
  qid = qa.get("id")
  if not isinstance(qid, str) or not qid:
    raise SquadFormatError(f"{source}: a question in article {title!r} has no 'id'")
  where = f"{source}: question {qid}"
  question = qa.get("question")
  if not isinstance(question, str):
    raise SquadFormatError(f"{where}: no 'question' text")
  if "answers" not in qa:
    raise SquadFormatError(f"{where}: no 'answers' field")
  answers = _answers(qa["answers"], context, where, "answers")
  impossible = qa.get("is_impossible", False)
  if not isinstance(impossible, bool):
    raise SquadFormatError(f"{where}: 'is_impossible' is not a boolean")
  plausible = _answers(qa.get("plausible_answers", []), context, where, "plausible_answers")
  if version == "1.1" and impossible:
    raise SquadFormatError(f"{where}: 'is_impossible' in a v1.1 file")
  if impossible and answers:
    raise SquadFormatError(f"{where}: is_impossible is true but 'answers' is not empty")
  if not impossible and not answers:
    raise SquadFormatError(f"{where}: no answers (and not marked is_impossible)")
  return SquadExample(qid, question, context, answers, impossible, plausible, title)


def parse_squad(dataset_json: Mapping[str, Any], source: str = "<json>") -> tuple[str, list[SquadExample]]:
  """Validates an official SQuAD JSON object; returns (version, examples). Errors name `source` and question id."""
  if not isinstance(dataset_json, Mapping) or not isinstance(dataset_json.get("data"), list):
    raise SquadFormatError(f"{source}: not a SQuAD file (no top-level 'data' list)")
  version = detect_version(dataset_json)
  examples: list[SquadExample] = []
  seen: set[str] = set()
  for i, article in enumerate(dataset_json["data"]):
    title = str(article.get("title", f"#{i}")) if isinstance(article, Mapping) else f"#{i}"
    paragraphs = article.get("paragraphs") if isinstance(article, Mapping) else None
    if not isinstance(paragraphs, list):
      raise SquadFormatError(f"{source}: article {i} ({title!r}) has no 'paragraphs' list")
    for j, paragraph in enumerate(paragraphs):
      qas = paragraph.get("qas") if isinstance(paragraph, Mapping) else None
      if not isinstance(qas, list):
        raise SquadFormatError(f"{source}: paragraph {j} of article {title!r} has no 'qas' list")
      context = paragraph.get("context")
      if not isinstance(context, str) or not context.strip():
        ids = [qa.get("id") for qa in qas if isinstance(qa, Mapping)]
        raise SquadFormatError(f"{source}: paragraph {j} of article {title!r} (questions {ids[:3]}) has no "
                               f"'context' text")
      for qa in qas:
        if not isinstance(qa, Mapping):
          raise SquadFormatError(f"{source}: paragraph {j} of article {title!r} has a question that is not an object")
        ex = example_from_qa(qa, context, title, version, source)
        if ex.qid in seen:
          raise SquadFormatError(f"{source}: question {ex.qid}: id appears twice")
        seen.add(ex.qid)
        examples.append(ex)
  return version, examples


def load_squad(path: PathLike) -> tuple[str, list[SquadExample]]:
  """Reads an official SQuAD v1.1 or v2.0 JSON file; returns (version, examples)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"SQuAD file {path} does not exist")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise SquadFormatError(f"{path}: not valid JSON ({e})") from None
  except UnicodeDecodeError as e:
    raise SquadFormatError(errors.utf8_location(path, e)) from None
  return parse_squad(data, str(path))


def read_squad(path: PathLike) -> list[SquadExample]:
  """The examples of an official SQuAD v1.1 or v2.0 JSON file (see `load_squad` for the version too)."""
  return load_squad(path)[1]


def _text(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_answers(rec: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
  if key not in rec:
    return []
  texts, starts = rec[key]["text"], rec[key]["answer_start"]
  return [{"text": _text(t), "answer_start": int(s)} for t, s in zip(texts, starts)]


def read_squad_tfds(version: str = "v1.1", split: str = "validation", data_dir: PathLike | None = None
                    ) -> list[SquadExample]:
  """Examples of a prepared TFDS `squad/v1.1` or `squad/v2.0`, validated like the JSON reader.

  Random access through `tfds.data_source` works without TensorFlow when the data was prepared as array_record;
  tfrecord data needs TensorFlow (the error says so).
  """
  from electra_jax.data.glue import tfds_records  # pylint: disable=import-outside-toplevel
  v = version.lower().lstrip("v")
  if v not in ("1.1", "2.0"):
    raise SquadFormatError(f"SQuAD version must be v1.1 or v2.0, got {version!r}")
  split = {"dev": "validation"}.get(split, split)
  name = f"squad/v{v}"
  source = f"TFDS {name} {split}"
  examples, seen = [], set()
  for n, rec in enumerate(tfds_records(name, split, data_dir)):
    try:
      qa = {"id": _text(rec["id"]), "question": _text(rec["question"]), "answers": _tfds_answers(rec, "answers")}
      context, title = _text(rec["context"]), _text(rec.get("title", ""))
    except KeyError as e:
      raise SquadFormatError(f"{source}: record {n} lacks feature {e}") from None
    if "is_impossible" in rec:
      qa["is_impossible"] = bool(rec["is_impossible"])
      qa["plausible_answers"] = _tfds_answers(rec, "plausible_answers")
    if not context.strip():
      raise SquadFormatError(f"{source}: question {qa['id']}: no 'context' text")
    ex = example_from_qa(qa, context, title, v, source)
    if ex.qid in seen:
      raise SquadFormatError(f"{source}: question {ex.qid}: id appears twice")
    seen.add(ex.qid)
    examples.append(ex)
  return examples


