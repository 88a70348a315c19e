"""Building a pretraining dataset: sources resolved and fingerprinted, documents sharded over processes, written to a staging folder and swapped in; `ensure_dataset` reuses a matching one."""

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
import shutil
import uuid
from collections.abc import Sequence
from typing import Any

from electra_jax import errors, paths
from electra_jax.data.tokenization import CLS, SEP, load_tokenizer
from electra_jax.data.pretraining.corpus import (BuildOptions, ExampleBuilder, Source, TextFile, TfdsSource,
                                                 _open_tfds, iter_documents, split_sentences)
from electra_jax.data.pretraining.records import (_SHARD_RE, FORMAT_NAME, FORMAT_VERSION, MANIFEST, PARTIAL,
                                                  SENTENCE_SPLITTER, WRITER_OPTIONS, CorpusError, EmptyCorpusError,
                                                  IncompleteDatasetError, RecordError, encode_example, id_dtype_for,
                                                  shard_name)

log = logging.getLogger(__name__)



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
    raise CorpusError(f"max_seq_length must be in [5, 65535], got {max_seq_length}")
  if not 1 <= num_shards <= 99999:
    raise CorpusError(f"num_shards must be in [1, 99999], got {num_shards}")
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
  shard_paths = {s: os.path.join(job.output_dir, shard_name(s, opts.num_shards)) for s in mine}
  writers = {s: ArrayRecordWriter(shard_paths[s] + PARTIAL, WRITER_OPTIONS) for s in mine}
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
    os.replace(shard_paths[s] + PARTIAL, shard_paths[s])
  return {"shards": counts, **stats}


def _clear_dataset_files(output_dir: str) -> None:
  """Removes the manifest first (the directory stops being a dataset), then shards and partial files of ours."""
  for name in (MANIFEST, MANIFEST + PARTIAL):
    if os.path.exists(os.path.join(output_dir, name)):
      os.remove(os.path.join(output_dir, name))
  for name in os.listdir(output_dir):
    if _SHARD_RE.match(name):
      os.remove(os.path.join(output_dir, name))


def _build(plan: _Plan, output_dir: str, num_processes: int) -> dict[str, Any]:
  if num_processes < 1:
    raise CorpusError(f"num_processes must be at least 1, got {num_processes}")
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
  paths.write_json_atomically(os.path.join(output_dir, MANIFEST), manifest, tmp_suffix=PARTIAL)
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
  except (OSError, RuntimeError) as e:   # array_record reports a full disk as a RuntimeError
    if errors.is_disk_full(e):
      raise errors.disk_full(output_dir, "building the pretraining dataset", e) from e
    raise
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
      raise RecordError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
    raise RecordError(f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}, "
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
  except (OSError, RuntimeError) as e:   # array_record reports a full disk as a RuntimeError
    if errors.is_disk_full(e):
      raise errors.disk_full(cache_dir, "building the pretraining dataset", e) from e
    raise
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return final, read_manifest(final)


