"""Pretraining data: raw text -> packed ELECTRA examples in ArrayRecord shards, plus the CLI that builds them.

    python -m electra_jax.data.pretraining --corpus=../shared/data/corpus/wikitext-2-raw \
        --vocab_file=../shared/data/vocab/bert-base-uncased-vocab.txt --output_dir=/tmp/wt2 \
        --max_seq_length=128 --num_processes=2 [--no_lower_case] [--strip_accents] [--tfds_data_dir=...]

    manifest = build_dataset("corpus/", "vocab.txt", "out/", max_seq_length=128, num_processes=2)
    path, manifest = ensure_dataset("corpus/", "vocab.txt", cache_dir="cache/")   # builds once, then reuses

`--corpus` takes files, folders (read recursively), globs, or `tfds:NAME` (e.g. `tfds:wikipedia/20230601.en`, or a bare
NAME with --tfds_data_dir) for a TFDS text dataset prepared as array_record; several specs may be comma-separated.

Documents: in text files a blank line ends a document (`blanks_separate_docs`, as in the original) and so does the end
of a file; with `wikitext_markup` (on by default) a WikiText title line ` = Title = ` also starts a new document,
heading markup (`= = Section = =`) is reduced to its text and the ` @-@ `, ` @,@ `, ` @.@ ` escapes are joined again.
The default `blanks_separate_docs=None` means True except in WikiText files (first non-blank line a title), where
blank lines only surround headings, so that only titles separate documents (True there would make every section, and
every heading line, a document of its own). A TFDS record is one document. Lines are cut into sentences by
`split_sentences` (rules below), sentences are WordPiece-tokenized and packed by `ExampleBuilder`, which follows
google-research/electra build_pretraining_dataset.py:
  * sentences are accumulated until their length reaches the target length, which is max_seq_length, except that 5% of
    examples draw a target uniformly from [5, max_seq_length]; the sentence that crosses the target is kept and cut;
  * 10% of examples are single-segment; otherwise segment A aims at (target - 3) // 2 tokens: a sentence joins A while
    A is empty or stays under that length, or (B still empty, A still short) on a fair coin; the rest go to B;
  * A is cut to max_seq_length - 2 and B to what is left; `[CLS] A [SEP] B [SEP]` (no B part when B is empty),
    segment ids 0 then 1; the end of a document flushes what has been gathered, so no example crosses documents.
Deliberate differences from the original: (1) sentences come from the rule-based splitter instead of one line per
sentence; (2) randomness is seeded: document d uses `random.Random(f"{seed}:{d}")`, and its first example draws its
target length by the 5% rule itself instead of inheriting the previous document's draw (same distribution), so the
output does not depend on how documents are spread over processes; (3) sentences that tokenize to nothing are dropped.

Output layout (`output_dir`): `pretrain-SSSSS-of-NNNNN.array_record` shards and `manifest.json`. Document d goes to
shard d % num_shards, in document order, so the shards are byte-identical for any `num_processes` (worker j writes the
shards s with s % num_processes == j). Every file is written under a `.partial` name and renamed when complete; the
manifest is written last, so a directory without `manifest.json` is never a dataset. `build_dataset` builds in a
staging folder inside `output_dir` and swaps the result in only when the build succeeded, so a failed rebuild (a bad
corpus, an empty one, a kill) leaves the dataset that was there intact. Each record (format version 1) is
    uint16 little-endian n          number of real tokens ([CLS] A [SEP] B [SEP], 0 < n <= max_seq_length)
    uint16 little-endian n_a        tokens with segment id 0 ([CLS] A [SEP])
    n token ids, little-endian `manifest["id_dtype"]` (uint16 when the vocab has at most 65536 entries, else uint32)
`decode_records` pads it back to input_ids / input_mask / segment_ids of length max_seq_length.

Sentence rule (`split_sentences`): a sentence ends at `.`, `!` or `?` (closing quotes/brackets may follow) when
whitespace and then an upper-case letter, a digit or an opening quote/bracket come next, unless the word before the
period is a single letter (an initial: `H. gammarus`), contains a period itself (`U.S.`, `e.g.`), or is a common
abbreviation (`Mr.`, `Dr.`, `St.`, `No.`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from electra_jax.data.tokenization import CLS, SEP, load_tokenizer

FORMAT_NAME = "electra_jax.pretraining"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial"
SENTENCE_SPLITTER = "rules-v1"
# Small chunks for random access: a read decompresses 16 records (~4 KB at 128 tokens). Measured on 5000 records of
# ~115 uint16 ids: group_size:16 gives 9% size overhead and ~1.1 us a random read, group_size:1 37% and ~2.1 us.
WRITER_OPTIONS = "group_size:16"
_HEADER = struct.Struct("<HH")
_SHARD_RE = re.compile(r"^pretrain-\d{5}-of-\d{5}\.array_record(\.partial)?$")

log = logging.getLogger(__name__)


class CorpusError(ValueError):
  """A corpus that cannot be read or that yields no examples."""


class EmptyCorpusError(CorpusError):
  """A corpus that exists but yields no examples."""


class RecordError(ValueError):
  """A malformed record; `index` is its position in the list being decoded."""

  def __init__(self, index: int, message: str):
    super().__init__(f"record {index}: {message}")
    self.index = index
    self.detail = message


class IncompleteDatasetError(FileNotFoundError):
  """A dataset directory without a complete manifest (never built, or a build that did not finish)."""


# ----------------------------------------------------------------------------------------------------------------------
# Record format.


def shard_name(index: int, num_shards: int) -> str:
  return f"pretrain-{index:05d}-of-{num_shards:05d}.array_record"


def id_dtype_for(vocab_size: int) -> str:
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def encode_example(input_ids: Sequence[int], num_segment_a: int, id_dtype: str) -> bytes:
  """One record: header (n, n_a) then the n real token ids."""
  ids = np.asarray(input_ids, dtype=np.dtype(id_dtype).newbyteorder("<"))
  return _HEADER.pack(len(input_ids), num_segment_a) + ids.tobytes()


def decode_records(records: Sequence[bytes], id_dtype: str, max_seq_length: int) -> dict[str, np.ndarray]:
  """Pads records to int32 `input_ids`, `input_mask`, `segment_ids` of shape [len(records), max_seq_length].

  Raises RecordError naming the record's position in `records` when one is malformed.
  """
  dtype = np.dtype(id_dtype).newbyteorder("<")
  ids = np.zeros((len(records), max_seq_length), np.int32)
  mask = np.zeros_like(ids)
  segments = np.zeros_like(ids)
  for i, record in enumerate(records):
    if len(record) < _HEADER.size:
      raise RecordError(i, f"{len(record)} bytes, shorter than its header")
    n, n_a = _HEADER.unpack_from(record)
    if not 0 < n <= max_seq_length or not 0 < n_a <= n or len(record) != _HEADER.size + n * dtype.itemsize:
      raise RecordError(i, f"malformed (n={n}, n_a={n_a}, {len(record)} bytes, max_seq_length={max_seq_length})")
    ids[i, :n] = np.frombuffer(record, dtype, count=n, offset=_HEADER.size)
    mask[i, :n] = 1
    segments[i, n_a:n] = 1
  return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}


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
      raise ValueError(f"max_seq_length must be at least 5, got {max_seq_length}")
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


# ----------------------------------------------------------------------------------------------------------------------
# Sources, manifest, build.


def _sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _text_file(path: str, root: str) -> TextFile:
  st = os.stat(path)
  return TextFile(os.path.abspath(path), os.path.relpath(path, root), st.st_size, st.st_mtime_ns)


def _walk_files(folder: str) -> list[str]:
  found = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
  return found


def resolve_sources(corpus: str | Sequence[str], tfds_data_dir: str | None = None, tfds_split: str = "train",
                    tfds_text_key: str = "text") -> list[Source]:
  """Turns corpus specs (file, folder, glob, `tfds:NAME`; a string may hold several, comma-separated) into sources."""
  specs = [s.strip() for s in corpus.split(",")] if isinstance(corpus, str) else [os.fspath(s) for s in corpus]
  specs = [s for s in specs if s]
  if not specs:
    raise CorpusError("no corpus given")
  sources: list[Source] = []
  for spec in specs:
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
      sources.append(_text_file(path, os.path.dirname(os.path.abspath(path))))
    elif os.path.isdir(path):
      files = _walk_files(path)
      if not files:
        raise EmptyCorpusError(f"corpus folder {spec} holds no files")
      sources += [_text_file(f, path) for f in files]
    elif glob.has_magic(path):
      files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
      if not files:
        raise CorpusError(f"corpus glob {spec} matches no files")
      root = path[:min(path.find(c) for c in "*?[" if c in path)]
      root = root if root.endswith(os.sep) else os.path.dirname(root)
      sources += [_text_file(f, root or ".") for f in files]
    elif spec.startswith("tfds:") or tfds_data_dir:
      name = spec.removeprefix("tfds:")
      if not tfds_data_dir:
        raise CorpusError(f"corpus {spec} is a TFDS dataset: pass tfds_data_dir (--tfds_data_dir), the folder where "
                          "it was prepared")
      data_dir = os.path.abspath(os.path.expanduser(tfds_data_dir))
      num = len(_open_tfds(name, tfds_split, data_dir))
      sources.append(TfdsSource(name, tfds_split, data_dir, tfds_text_key, num))
    else:
      raise FileNotFoundError(f"corpus path {spec} does not exist (for a TFDS dataset write tfds:NAME and pass "
                              "--tfds_data_dir)")
  return sources


def _source_entry(source: Source, content_only: bool) -> dict[str, Any]:
  if isinstance(source, TextFile):
    if content_only:
      return {"file": source.relpath, "bytes": source.size}
    return {"file": source.path, "bytes": source.size, "mtime_ns": source.mtime_ns}
  entry = {"tfds": source.name, "split": source.split, "text_key": source.text_key, "num_records": source.num_records}
  return entry if content_only else {**entry, "data_dir": source.data_dir}


def _digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Plan:
  opts: BuildOptions
  sources: list[Source]
  settings: dict[str, Any]  # content-deciding settings, without sources
  request: dict[str, Any]   # settings + sources with absolute paths and mtimes: what a cached dataset must match

  @property
  def request_key(self) -> str:
    return _digest(self.request)


def _plan(corpus: str | Sequence[str], vocab_file: str | os.PathLike, max_seq_length: int, lower_case: bool,
          strip_accents: bool | None, blanks_separate_docs: bool | None, wikitext_markup: bool, seed: int,
          num_shards: int, tfds_data_dir: str | None, tfds_split: str, tfds_text_key: str) -> tuple[_Plan, Any]:
  if not 5 <= max_seq_length <= 65535:
    raise ValueError(f"max_seq_length must be in [5, 65535], got {max_seq_length}")
  if not 1 <= num_shards <= 99999:
    raise ValueError(f"num_shards must be in [1, 99999], got {num_shards}")
  vocab_file = os.path.abspath(os.fspath(vocab_file))
  tok = load_tokenizer(vocab_file, lowercase=lower_case, strip_accents=strip_accents)  # raises naming the file
  sources = resolve_sources(corpus, tfds_data_dir, tfds_split, tfds_text_key)
  opts = BuildOptions(vocab_file, max_seq_length, lower_case, strip_accents, blanks_separate_docs, wikitext_markup,
                      seed, num_shards)
  settings = {
      "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "vocab_sha256": _sha256_file(vocab_file),
      "vocab_size": tok.get_vocab_size(), "lower_case": lower_case, "strip_accents": strip_accents,
      "max_seq_length": max_seq_length, "blanks_separate_docs": blanks_separate_docs,
      "wikitext_markup": wikitext_markup, "sentence_splitter": SENTENCE_SPLITTER, "seed": seed,
      "num_shards": num_shards,
  }
  request = {**settings, "sources": [_source_entry(s, content_only=False) for s in sources]}
  return _Plan(opts, sources, settings, request), tok


@dataclasses.dataclass(frozen=True)
class _Job:
  job_id: int
  num_jobs: int
  opts: BuildOptions
  sources: list[Source]
  output_dir: str


def _is_mine(job: _Job, d: int) -> bool:
  return d % job.opts.num_shards % job.num_jobs == job.job_id


def _run_job(job: _Job) -> dict[str, Any]:
  """One worker: builds the shards s with s % num_jobs == job_id. Returns its counts."""
  opts = job.opts
  if job.num_jobs > 1:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
  tok = load_tokenizer(opts.vocab_file, lowercase=opts.lower_case, strip_accents=opts.strip_accents)
  builder = ExampleBuilder(opts.max_seq_length, tok.token_to_id(CLS), tok.token_to_id(SEP))
  id_dtype = id_dtype_for(tok.get_vocab_size())
  mine = [s for s in range(opts.num_shards) if s % job.num_jobs == job.job_id]
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=import-outside-toplevel
  paths = {s: os.path.join(job.output_dir, shard_name(s, opts.num_shards)) for s in mine}
  writers = {s: ArrayRecordWriter(paths[s] + PARTIAL, WRITER_OPTIONS) for s in mine}
  counts = dict.fromkeys(mine, 0)
  stats = {"num_documents": 0, "num_tokens": 0, "num_single_segment": 0}
  try:
    for d, lines in iter_documents(job.sources, opts, functools.partial(_is_mine, job)):
      if lines is None:
        continue
      sentences = [s for line in lines for s in split_sentences(line)]
      ids = [e.ids for e in tok.encode_batch(sentences, add_special_tokens=False)] if sentences else []
      shard = d % opts.num_shards
      stats["num_documents"] += 1
      for input_ids, num_a in builder.build(ids, random.Random(f"{opts.seed}:{d}")):
        writers[shard].write(encode_example(input_ids, num_a, id_dtype))
        counts[shard] += 1
        stats["num_tokens"] += len(input_ids)
        stats["num_single_segment"] += num_a == len(input_ids)
  finally:
    for w in writers.values():
      w.close()
  for s in mine:
    os.replace(paths[s] + PARTIAL, paths[s])
  return {"shards": counts, **stats}


def _clear_dataset_files(output_dir: str) -> None:
  """Removes the manifest first (the directory stops being a dataset), then shards and partial files of ours."""
  for name in (MANIFEST, MANIFEST + PARTIAL):
    if os.path.exists(os.path.join(output_dir, name)):
      os.remove(os.path.join(output_dir, name))
  for name in os.listdir(output_dir):
    if _SHARD_RE.match(name):
      os.remove(os.path.join(output_dir, name))


def _write_json_atomically(path: str, obj: Any) -> None:
  with open(path + PARTIAL, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + PARTIAL, path)


def _build(plan: _Plan, output_dir: str, num_processes: int) -> dict[str, Any]:
  if num_processes < 1:
    raise ValueError(f"num_processes must be at least 1, got {num_processes}")
  opts = plan.opts
  os.makedirs(output_dir, exist_ok=True)
  _clear_dataset_files(output_dir)
  num_jobs = min(num_processes, opts.num_shards)
  if num_jobs < num_processes:
    log.warning("only %d shards: using %d processes instead of %d", opts.num_shards, num_jobs, num_processes)
  jobs = [_Job(j, num_jobs, opts, plan.sources, output_dir) for j in range(num_jobs)]
  try:
    if num_jobs == 1:
      results = [_run_job(jobs[0])]
    else:
      # spawn, not fork: the parent may hold JAX or tokenizer threads.
      with multiprocessing.get_context("spawn").Pool(num_jobs) as pool:
        results = pool.map(_run_job, jobs, chunksize=1)
  except BaseException:
    _clear_dataset_files(output_dir)
    raise
  counts = {s: n for r in results for s, n in r["shards"].items()}
  total = sum(counts.values())
  if total == 0:
    _clear_dataset_files(output_dir)
    raise EmptyCorpusError(f"corpus {[_source_entry(s, False) for s in plan.sources]} gave no examples "
                           "(all documents are empty after cleaning)")
  shards = [{"file": shard_name(s, opts.num_shards), "num_examples": counts[s]} for s in range(opts.num_shards)]
  content = {**plan.settings, "sources": [_source_entry(s, content_only=True) for s in plan.sources],
             "shards": shards}
  manifest = {
      **plan.settings,
      "record_layout": ("uint16le n, uint16le n_a (tokens with segment id 0), then n token ids of id_dtype (little "
                        "endian): [CLS] A [SEP] (B [SEP]); padding, input_mask and segment_ids are implied"),
      "id_dtype": id_dtype_for(plan.settings["vocab_size"]),
      "vocab_file": opts.vocab_file,
      "sources": [_source_entry(s, content_only=False) for s in plan.sources],
      "shards": shards,
      "num_examples": total,
      "num_documents": sum(r["num_documents"] for r in results),
      "num_tokens": sum(r["num_tokens"] for r in results),
      "num_single_segment": sum(r["num_single_segment"] for r in results),
      "request_key": plan.request_key,
      "fingerprint": _digest(content),
  }
  _write_json_atomically(os.path.join(output_dir, MANIFEST), manifest)
  log.info("wrote %d examples from %d documents in %d shards to %s", total, manifest["num_documents"],
           opts.num_shards, output_dir)
  return manifest


def build_dataset(corpus: str | Sequence[str], vocab_file: str | os.PathLike, output_dir: str | os.PathLike,
                  max_seq_length: int = 128, *, lower_case: bool = True, strip_accents: bool | None = None,
                  blanks_separate_docs: bool | None = None, wikitext_markup: bool = True, seed: int = 0,
                  num_shards: int = 16, num_processes: int = 1, tfds_data_dir: str | None = None,
                  tfds_split: str = "train", tfds_text_key: str = "text") -> dict[str, Any]:
  """Builds shards + manifest in `output_dir` and returns the manifest. A dataset already there is replaced only
  when the new one is complete: the build runs in `output_dir/.building-*` and is swapped in at the end."""
  plan, _ = _plan(corpus, vocab_file, max_seq_length, lower_case, strip_accents, blanks_separate_docs,
                  wikitext_markup, seed, num_shards, tfds_data_dir, tfds_split, tfds_text_key)
  output_dir = os.fspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  staging = os.path.join(output_dir, f".building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    manifest = _build(plan, staging, num_processes)
    _swap_in(staging, output_dir)
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return manifest


def _swap_in(staging: str, output_dir: str) -> None:
  """Replaces the dataset files of `output_dir` by those of `staging`: the old manifest goes first (the folder stops
  being a dataset), the new one comes last (it becomes one again); other files in `output_dir` are left alone."""
  _clear_dataset_files(output_dir)
  for name in sorted(os.listdir(staging)):
    if _SHARD_RE.match(name):
      os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
  os.replace(os.path.join(staging, MANIFEST), os.path.join(output_dir, MANIFEST))


def read_manifest(dataset_dir: str | os.PathLike) -> dict[str, Any]:
  """The manifest of a complete dataset; raises IncompleteDatasetError when there is none."""
  path = os.path.join(os.fspath(dataset_dir), MANIFEST)
  if not os.path.isfile(path):
    raise IncompleteDatasetError(f"{dataset_dir} holds no complete pretraining dataset ({MANIFEST} is missing)")
  with open(path, encoding="utf-8") as f:
    try:
      manifest = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, "
                     f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}")
  return manifest


def ensure_dataset(corpus: str | Sequence[str], vocab_file: str | os.PathLike, cache_dir: str | os.PathLike,
                   max_seq_length: int = 128, *, lower_case: bool = True, strip_accents: bool | None = None,
                   blanks_separate_docs: bool | None = None, wikitext_markup: bool = True, seed: int = 0,
                   num_shards: int = 16, num_processes: int = 1, tfds_data_dir: str | None = None,
                   tfds_split: str = "train", tfds_text_key: str = "text") -> tuple[str, dict[str, Any]]:
  """Returns (dataset_dir, manifest) of `cache_dir/pretrain-<request key>`, building it first unless a complete
  dataset for the same request (corpus files with their sizes and mtimes, vocab hash, settings, seed) is there.

  The build happens in a private `.partial-*` folder renamed into place at the end, so concurrent callers never see
  a half-built dataset; when two build at once, the first rename wins and the other's copy is discarded.
  """
  plan, _ = _plan(corpus, vocab_file, max_seq_length, lower_case, strip_accents, blanks_separate_docs,
                  wikitext_markup, seed, num_shards, tfds_data_dir, tfds_split, tfds_text_key)
  cache_dir = os.fspath(cache_dir)
  final = os.path.join(cache_dir, f"pretrain-{plan.request_key[:20]}")

  def existing() -> dict[str, Any] | None:
    try:
      manifest = read_manifest(final)
    except (IncompleteDatasetError, ValueError):
      return None
    return manifest if manifest.get("request_key") == plan.request_key else None

  manifest = existing()
  if manifest is not None:
    log.info("reusing pretraining dataset %s (%d examples)", final, manifest["num_examples"])
    return final, manifest
  os.makedirs(cache_dir, exist_ok=True)
  staging = f"{final}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    manifest = _build(plan, staging, num_processes)
    if os.path.isdir(final) and existing() is None:
      shutil.rmtree(final)  # a stale or foreign folder under our name: replace it
    try:
      os.rename(staging, final)
    except OSError:
      if existing() is None:
        raise
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return final, read_manifest(final)


# ----------------------------------------------------------------------------------------------------------------------
# CLI.


def main(argv: Sequence[str]) -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  f = flags.FLAGS
  manifest = build_dataset(   # bad input (OSError, ValueError): one line and exit status 1 (runtime.cli)
      f.corpus, f.vocab_file, f.output_dir, f.max_seq_length, lower_case=not f.no_lower_case,
      strip_accents=f.strip_accents, blanks_separate_docs=f.blanks_separate_docs,
      wikitext_markup=f.wikitext_markup, seed=f.seed, num_shards=f.num_shards, num_processes=f.num_processes,
      tfds_data_dir=f.tfds_data_dir, tfds_split=f.tfds_split, tfds_text_key=f.tfds_text_key)
  print(json.dumps({k: manifest[k] for k in ("num_examples", "num_documents", "num_tokens", "num_single_segment",
                                              "fingerprint")}))


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("corpus", None, "Text file, folder, glob or tfds:NAME (comma-separated for several).")
  flags.DEFINE_string("vocab_file", None, "WordPiece vocab.txt.")
  flags.DEFINE_string("output_dir", None, "Where the shards and manifest.json go.")
  flags.DEFINE_integer("max_seq_length", 128, "Tokens per example.")
  flags.DEFINE_integer("num_processes", 1, "Worker processes.")
  flags.DEFINE_integer("num_shards", 16, "Output shards (independent of num_processes).")
  flags.DEFINE_integer("seed", 0, "Seed of the packing randomness.")
  flags.DEFINE_bool("no_lower_case", False, "Keep case (for a cased vocab).")
  flags.DEFINE_bool("strip_accents", None, "Strip accents (--nostrip_accents keeps them); default: follows lower "
                    "casing, as BERT does.")
  flags.DEFINE_bool("blanks_separate_docs", None, "A blank line ends a document (--noblanks_separate_docs: only the "
                    "end of a file does). Default: yes, except in WikiText files, where titles separate documents.")
  flags.DEFINE_bool("wikitext_markup", True, "WikiText titles start documents; heading markup and @-@ escapes cleaned.")
  flags.DEFINE_string("tfds_data_dir", None, "Folder of prepared TFDS datasets (for a TFDS corpus).")
  flags.DEFINE_string("tfds_split", "train", "TFDS split.")
  flags.DEFINE_string("tfds_text_key", "text", "TFDS feature holding the text.")


if __name__ == "__main__":
  from electra_jax.runtime import cli  # pylint: disable=ungrouped-imports
  _define_flags()
  cli.run(main, required=("corpus", "vocab_file", "output_dir"))
