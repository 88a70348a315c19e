"""Pretraining data for a run: the tokenizer of config.data and the ArrayRecord shards the loader reads.

    tok, ids = pretrain_data.load_tokenizer(config)                     # loaded once per run
    dataset_dir = pretrain_data.prepare_data(config, workdir)           # built once (process 0), then reused
    loader = pretrain_data.make_loader(config, dataset_dir, mesh, rules)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from electra_jax import sharding
from electra_jax.data import pretraining, tokenization
from electra_jax.data.loader import PretrainingLoader
from electra_jax.runtime import distributed


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
  raise ValueError(f"config.data.strip_accents={value!r}: expected '', 'true' or 'false'")


def load_tokenizer(config: Any):
  """(tokenizer, special ids) of config.data, checked (the vocab exists and has the special tokens)."""
  data = config.data
  for field in ("corpus", "vocab_file"):
    if not data.get(field):
      raise ValueError(f"config.data.{field} is empty: pass --config.data.{field}=...")
  strip = strip_accents(data.get("strip_accents", ""))
  tok = tokenization.load_tokenizer(data.vocab_file, lowercase=bool(data.lower_case), strip_accents=strip)
  return tok, tokenization.special_ids(tok)


def prepare_data(config: Any, workdir: str, tokenizer: tuple[Any, Any] | None = None):
  """The ArrayRecord shards (built once per process 0, then reused). Returns (dir, tok, ids); `tokenizer`: the
  (tok, ids) the run already loaded (else loaded and checked here)."""
  data = config.data
  tok, ids = tokenizer if tokenizer is not None else load_tokenizer(config)
  strip = strip_accents(data.get("strip_accents", ""))
  cache_dir = data.get("cache_dir") or os.path.join(workdir, "data")
  kwargs = dict(max_seq_length=int(config.max_seq_length), lower_case=bool(data.lower_case), strip_accents=strip,
                seed=int(data.get("build_seed", 0)), num_shards=int(data.get("num_shards", 16)),
                num_processes=int(data.get("num_build_processes", 1)),
                tfds_data_dir=data.get("tfds_data_dir") or None)
  if distributed.is_primary():
    dataset_dir, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, **kwargs)
  distributed.barrier("electra_pretraining_data")
  if not distributed.is_primary():
    dataset_dir, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, **kwargs)
  logging.info("pretraining data %s: %d examples, %d tokens", dataset_dir, manifest["num_examples"],
               manifest.get("num_tokens", -1))
  return dataset_dir, tok, ids


def make_loader(config: Any, dataset_dir: str, setup: Any):
  """The global batches of `dataset_dir` (setup: anything with .mesh and .rules), split over the mesh axes that the
  rules map activation_batch to."""
  return PretrainingLoader(dataset_dir, int(config.batch_size), setup.mesh, seed=int(config.seed),
                           batch_axes=sharding.batch_axes(setup.mesh, setup.rules),
                           prefetch=int(config.data.get("prefetch", 2)))
