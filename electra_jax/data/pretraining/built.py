"""Built datasets handed to a training run: found by length, checked against the run's tokenizer settings.

    path = find_dataset("/data/owt", 128)        # /data/owt when it is a dataset, else /data/owt/seq128
    manifest = check_dataset(path, vocab_file="vocab.txt", lower_case=True, strip_accents=None, max_seq_length=128)

A folder is a dataset when it holds a manifest.json (written last by the builder). `python -m
electra_jax.data.pretraining --max_seq_length=128,512 --output_dir=OUT` writes one dataset per length, in
OUT/seq128 and OUT/seq512 (with one length: in OUT itself); a run finds each length it needs in either layout.
"""

from __future__ import annotations

import os
import re
from typing import Any

from electra_jax import errors
from electra_jax.data.pretraining.build import _sha256_file, read_manifest
from electra_jax.data.pretraining.records import MANIFEST, IncompleteDatasetError

_LENGTH_DIR = re.compile(r"^seq(\d+)$")


class DatasetMismatchError(errors.Error, ValueError):
  """A built dataset made with other settings than the run's (length, vocab, casing)."""


def is_dataset(path: str | os.PathLike) -> bool:
  return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def length_dir(root: str | os.PathLike, max_seq_length: int) -> str:
  """Where a multi-length build puts the dataset of one length."""
  return os.path.join(os.fspath(root), f"seq{int(max_seq_length)}")


def built_lengths(root: str | os.PathLike) -> list[int]:
  """The lengths a folder holds datasets of: [] when it holds none."""
  root = os.fspath(root)
  if is_dataset(root):
    return [int(read_manifest(root)["max_seq_length"])]
  if not os.path.isdir(root):
    return []
  return sorted(int(m.group(1)) for m in map(_LENGTH_DIR.match, os.listdir(root))
                if m and is_dataset(os.path.join(root, m.group(0))))


def find_dataset(root: str | os.PathLike, max_seq_length: int) -> str:
  """`root` when it is a dataset, else `root/seq<max_seq_length>`; IncompleteDatasetError naming what is there."""
  root = os.fspath(root)
  if is_dataset(root):
    return root
  sub = length_dir(root, max_seq_length)
  if is_dataset(sub):
    return sub
  if not os.path.isdir(root):
    raise IncompleteDatasetError(f"config.data.dataset_dir={root} does not exist")
  have = built_lengths(root)
  raise IncompleteDatasetError(
      f"{root} holds no pretraining dataset of max_seq_length {max_seq_length} (no {MANIFEST} there or in "
      f"seq{max_seq_length}/; lengths found: {have or 'none'}); build it with python -m electra_jax.data.pretraining "
      f"--max_seq_length={max_seq_length} --output_dir={root}")


def _strip(lower_case: bool, strip_accents: bool | None) -> bool:
  return lower_case if strip_accents is None else bool(strip_accents)


def check_dataset(dataset_dir: str, *, vocab_file: str, lower_case: bool, strip_accents: bool | None,
                  max_seq_length: int) -> dict[str, Any]:
  """The manifest of `dataset_dir` when it was built for these settings; DatasetMismatchError saying what differs."""
  manifest = read_manifest(dataset_dir)
  differ = []
  if int(manifest["max_seq_length"]) != int(max_seq_length):
    differ.append(f"max_seq_length {manifest['max_seq_length']} vs {max_seq_length}")
  vocab_sha = _sha256_file(vocab_file)
  if manifest.get("vocab_sha256") != vocab_sha:
    differ.append(f"vocab {manifest.get('vocab_file')} (sha256 {str(manifest.get('vocab_sha256'))[:12]}) vs "
                  f"{vocab_file} (sha256 {vocab_sha[:12]})")
  if bool(manifest.get("lower_case")) != bool(lower_case):
    differ.append(f"lower_case {manifest.get('lower_case')} vs {lower_case}")
  built = _strip(bool(manifest.get("lower_case")), manifest.get("strip_accents"))
  if built != _strip(lower_case, strip_accents):
    differ.append(f"strip_accents {built} vs {_strip(lower_case, strip_accents)}")
  if differ:
    raise DatasetMismatchError(f"{dataset_dir} was built for other settings (dataset vs run): {'; '.join(differ)}; "
                               "rebuild it with those of the run or change the run's config")
  return manifest
