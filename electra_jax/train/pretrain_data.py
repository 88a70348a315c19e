"""Pretraining's data: the tokenizer of config.data, the datasets of each sequence length, their loaders.

A run reads either a dataset built beforehand (`config.data.dataset_dir`, or `config.data.corpus` naming a folder that
`python -m electra_jax.data.pretraining --output_dir=...` wrote), checked against the run's length, vocab and casing,
or raw text (`config.data.corpus`), built once per length into config.data.cache_dir (WORKDIR/data by default) and
reused while the corpus, vocab and settings stay the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from electra_jax import errors, sharding
from electra_jax.data import pretraining, tokenization
from electra_jax.data.loader import PretrainingLoader
from electra_jax.runtime import distributed


class DataConfigError(errors.Error, ValueError):
  """config.data fields that are missing or contradict each other."""


def strip_accents(value: Any) -> bool | None:
  """config.data.strip_accents: "" / None follows lower casing; true/false (or "true"/"false") forces it."""
  if value in ("", None):
    return None
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ("1", "true", "yes"):
    return True
  if text in ("0", "false", "no"):
    return False
  raise DataConfigError(f"config.data.strip_accents={value!r}: expected '', 'true' or 'false'")


def built_root(config: Any) -> str | None:
  """The built dataset (or folder of per-length datasets) the run reads, or None when it builds from text."""
  data = config.data
  root = data.get("dataset_dir", "") or ""
  if root:
    return os.path.abspath(os.path.expanduser(root))
  corpus = (data.get("corpus") or "").strip()
  if corpus and "," not in corpus and os.path.isdir(corpus) and pretraining.built_lengths(corpus):
    logging.info("config.data.corpus=%s is a built dataset: reading it as config.data.dataset_dir", corpus)
    return os.path.abspath(corpus)
  return None


def vocab_file(config: Any) -> str:
  """config.data.vocab_file, or (left empty) the vocab a built dataset was made with."""
  data = config.data
  if data.get("vocab_file"):
    return data.vocab_file
  root = built_root(config)
  if root is None:
    raise DataConfigError("config.data.vocab_file is empty: pass --config.data.vocab_file=...")
  lengths = pretraining.built_lengths(root)
  if not lengths:
    raise pretraining.IncompleteDatasetError(f"config.data.dataset_dir={root} holds no pretraining dataset")
  built = pretraining.read_manifest(pretraining.find_dataset(root, lengths[0])).get("vocab_file", "")
  if not os.path.isfile(built):
    raise DataConfigError(f"config.data.vocab_file is empty and {root}'s vocab {built} does not exist: pass "
                          "--config.data.vocab_file=...")
  return built


def load_tokenizer(config: Any):
  """(tokenizer, special ids) of config.data, checked (the vocab exists and has the special tokens)."""
  data = config.data
  if built_root(config) is None and not data.get("corpus"):
    raise DataConfigError("config.data.corpus is empty: pass --config.data.corpus=... (raw text) or "
                          "--config.data.dataset_dir=... (a dataset built by python -m electra_jax.data.pretraining)")
  tok = tokenization.load_tokenizer(vocab_file(config), lowercase=bool(data.lower_case),
                                    strip_accents=strip_accents(data.get("strip_accents", "")))
  return tok, tokenization.special_ids(tok)


def prepare_datasets(config: Any, workdir: str, seq_lens: Sequence[int]) -> dict[int, str]:
  """{length: dataset folder} for each length: a built dataset checked against the run, or raw text built once per
  process 0 (the others wait, then reuse it)."""
  data = config.data
  strip = strip_accents(data.get("strip_accents", ""))
  root = built_root(config)
  out = {}
  if root is not None:
    vocab = os.path.abspath(vocab_file(config))
    for length in seq_lens:
      path = pretraining.find_dataset(root, length)
      manifest = pretraining.check_dataset(path, vocab_file=vocab, lower_case=bool(data.lower_case),
                                           strip_accents=strip, max_seq_length=int(length))
      logging.info("pretraining data %s (built): %d examples of %d tokens", path, manifest["num_examples"], length)
      out[int(length)] = path
    return out
  cache_dir = data.get("cache_dir") or os.path.join(workdir, "data")
  kwargs = dict(lower_case=bool(data.lower_case), strip_accents=strip, seed=int(data.get("build_seed", 0)),
                num_shards=int(data.get("num_shards", 16)), num_processes=int(data.get("num_build_processes", 1)),
                tfds_data_dir=data.get("tfds_data_dir") or None)
  for length in seq_lens:
    if distributed.is_primary():
      path, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, int(length), **kwargs)
    distributed.barrier(f"electra_pretraining_data_{length}")
    if not distributed.is_primary():
      path, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, int(length), **kwargs)
    logging.info("pretraining data %s: %d examples, %d tokens", path, manifest["num_examples"],
                 manifest.get("num_tokens", -1))
    out[int(length)] = path
  return out


def make_loader(config: Any, dataset_dir: str, setup: Any, *, batch_size: int | None = None,
                start_step: int = 0) -> PretrainingLoader:
  """The batches of `dataset_dir`, split over the mesh axes that the rules map activation_batch to."""
  return PretrainingLoader(dataset_dir, int(batch_size or config.batch_size), setup.mesh, seed=int(config.seed),
                           batch_axes=sharding.batch_axes(setup.mesh, setup.rules),
                           prefetch=int(config.data.get("prefetch", 2)), start_step=start_step)


def prepare_data(config: Any, workdir: str, tokenizer: tuple[Any, Any] | None = None):
  """(dataset folder of config.max_seq_length, tok, ids); `tokenizer`: the (tok, ids) the run already loaded (else
  loaded and checked here)."""
  tok, ids = tokenizer if tokenizer is not None else load_tokenizer(config)
  length = int(config.max_seq_length)
  return prepare_datasets(config, workdir, [length])[length], tok, ids
