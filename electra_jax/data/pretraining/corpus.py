"""Pretraining text: sentence splitting, text files and TFDS datasets as documents, examples packed as ELECTRA does."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np


from electra_jax.data.pretraining.records import CorpusError


# ----------------------------------------------------------------------------------------------------------------------
# Sentences and documents.

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc inc ltd co corp no nos vol vols pp fig figs gen col lt sgt capt cmdr adm "
    "gov rev hon mt ft jan feb apr aug sep sept oct nov dec approx ca cf al ed eds est dept univ".split())
_BOUNDARY_RE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(\s+)")
_OPENERS = "\"'\u201c\u2018(["
_LAST_WORD_RE = re.compile(r"\S*$")
_TITLE_RE = re.compile(r"^\s*= [^=].* =\s*$")
_HEADING_RE = re.compile(r"^\s*(?:=+\s)+(?P<text>.*?)(?:\s=+)+\s*$")
_WIKI_ESCAPE_RE = re.compile(r" @([-,.])@ ")


def split_sentences(text: str) -> list[str]:
  """Cuts a line of text into sentences by the rule in the module docstring."""
  sentences, start = [], 0
  for m in _BOUNDARY_RE.finditer(text):
    nxt = m.end()
    if nxt >= len(text):
      break
    c = text[nxt]
    if not (c.isupper() or c.isdigit() or (c in _OPENERS)):
      continue
    word = _LAST_WORD_RE.search(text, start, m.start()).group()  # the characters glued to the punctuation
    if text[m.start()] == "." and (len(word) == 1 and word.isalpha() or "." in word or word.lower() in _ABBREVIATIONS):
      continue
    sentence = text[start:m.start(1)].strip()
    if sentence:
      sentences.append(sentence)
    start = nxt
  tail = text[start:].strip()
  if tail:
    sentences.append(tail)
  return sentences


@dataclasses.dataclass(frozen=True)
class TextFile:
  path: str       # absolute
  relpath: str    # relative to the corpus spec's root (content identity does not depend on where the corpus lies)
  size: int
  mtime_ns: int


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  name: str
  split: str
  data_dir: str
  text_key: str
  num_records: int


Source = TextFile | TfdsSource


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """Everything that decides the content of a built dataset (workers receive it pickled)."""
  vocab_file: str
  max_seq_length: int = 128
  lower_case: bool = True
  strip_accents: bool | None = None
  blanks_separate_docs: bool | None = None
  wikitext_markup: bool = True
  seed: int = 0
  num_shards: int = 16


def text_file_documents(path: str, blanks_separate_docs: bool | None = None,
                        wikitext_markup: bool = True) -> Iterator[list[str]]:
  """Yields the documents of a text file, each a list of its non-empty (cleaned) lines.

  blanks_separate_docs=None (auto) means True, except for a WikiText file (wikitext_markup on and the first non-blank
  line a ` = Title = ` line), where titles alone separate documents: WikiText puts blank lines around every heading.
  """
  doc: list[str] = []
  blanks = blanks_separate_docs
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8").rstrip("\r\n")
      except UnicodeDecodeError as e:
        raise CorpusError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
      if blanks is None and line.strip():
        blanks = not (wikitext_markup and _TITLE_RE.match(line))
      if wikitext_markup:
        if _TITLE_RE.match(line) and doc:
          yield doc
          doc = []
        heading = _HEADING_RE.match(line)
        if heading:
          line = heading.group("text")
        line = _WIKI_ESCAPE_RE.sub(r"\1", line)
      line = line.strip()
      if not line:
        if blanks and doc:
          yield doc
          doc = []
        continue
      doc.append(line)
  if doc:
    yield doc


def _open_tfds(name: str, split: str, data_dir: str):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CorpusError(f"corpus tfds:{name} needs tensorflow-datasets ({e})") from None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
      hint = ""
    except ImportError:
      hint = (" TensorFlow is not installed, so only datasets prepared with file_format=array_record can be read "
              "(`tfds build --file_format=array_record`); a tfrecord-prepared dataset needs TensorFlow.")
    first_line = (str(e).strip().splitlines() or [""])[0][:300]  # TFDS appends the whole catalogue
    raise CorpusError(f"cannot open TFDS dataset {name!r} split {split!r} in {data_dir}: "
                      f"{type(e).__name__}: {first_line}{hint}") from None


def _tfds_text(record: Any, source: TfdsSource, index: int) -> str:
  if not isinstance(record, dict) or source.text_key not in record:
    keys = list(record) if isinstance(record, dict) else type(record).__name__
    raise CorpusError(f"TFDS {source.name}[{source.split}] record {index}: no text feature {source.text_key!r} "
                      f"(has {keys})")
  text = record[source.text_key]
  if isinstance(text, np.ndarray):
    text = text.item()
  return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def iter_documents(sources: Sequence[Source], opts: BuildOptions,
                   wanted: Callable[[int], bool] = lambda d: True) -> Iterator[tuple[int, list[str] | None]]:
  """Yields (global document index, lines) over all sources in order; lines is None for documents not `wanted`."""
  d = 0
  for source in sources:
    if isinstance(source, TextFile):
      for doc in text_file_documents(source.path, opts.blanks_separate_docs, opts.wikitext_markup):
        yield d, (doc if wanted(d) else None)
        d += 1
    else:
      data = _open_tfds(source.name, source.split, source.data_dir)
      for i in range(source.num_records):
        if wanted(d):
          lines = [l.strip() for l in _tfds_text(data[i], source, i).split("\n")]
          yield d, [l for l in lines if l]
        else:
          yield d, None
        d += 1


# ----------------------------------------------------------------------------------------------------------------------
# Packing.


class ExampleBuilder:
  """Packs one document's tokenized sentences into examples (the original ExampleBuilder's rules, per document)."""

  def __init__(self, max_seq_length: int, cls_id: int, sep_id: int):
    if max_seq_length < 5:
      raise CorpusError(f"max_seq_length must be at least 5, got {max_seq_length}")
    self.max_seq_length = max_seq_length
    self.cls_id = cls_id
    self.sep_id = sep_id

  def _draw_target(self, rng: random.Random) -> int:
    # Small chance of a random-length example instead of a max_seq_length one.
    return rng.randint(5, self.max_seq_length) if rng.random() < 0.05 else self.max_seq_length

  def build(self, sentences: Sequence[Sequence[int]], rng: random.Random) -> list[tuple[list[int], int]]:
    """Returns [(input_ids without padding, number of segment-0 tokens)] for one document."""
    examples = []
    target = self._draw_target(rng)
    current: list[Sequence[int]] = []
    length = 0
    for sentence in sentences:
      if not sentence:
        continue
      current.append(sentence)
      length += len(sentence)
      if length >= target:
        examples.append(self._make_example(current, target, rng))
        current, length = [], 0
        target = self._draw_target(rng)
    if current:  # the end of the document flushes
      examples.append(self._make_example(current, target, rng))
    return examples

  def _make_example(self, sentences: Sequence[Sequence[int]], target: int, rng: random.Random) -> tuple[list[int], int]:
    # 10% single segment, as in classification tasks; -3 for the [CLS] and two [SEP] not yet added.
    first_target = 100000 if rng.random() < 0.1 else (target - 3) // 2
    first: list[int] = []
    second: list[int] = []
    for sentence in sentences:
      # Into A when A is empty, when it keeps A under target, or on a coin flip when it would cross the target
      # while B is still empty (the same short-circuit order as the original, so the coin is drawn in the same cases).
      if (not first or len(first) + len(sentence) < first_target or
          (not second and len(first) < first_target and rng.random() < 0.5)):
        first.extend(sentence)
      else:
        second.extend(sentence)
    first = first[:self.max_seq_length - 2]
    second = second[:max(0, self.max_seq_length - len(first) - 3)]
    input_ids = [self.cls_id, *first, self.sep_id]
    num_a = len(input_ids)
    if second:
      input_ids += [*second, self.sep_id]
    return input_ids, num_a


