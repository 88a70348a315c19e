"""Params-only checkpoints for tools (conversion, prediction, fine-tuning initialisation): read the latest verified
step of any checkpoint of this project, or write one.

    meta, params = load_params("workdir")    # latest complete step; params: nested dict of numpy arrays
    save_params("out_dir", {"kind": "ElectraForPreTraining", "config": cfg.to_hf_dict()}, params)
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from collections.abc import Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from electra_jax import paths
from electra_jax.checkpointing import integrity
from electra_jax.checkpointing.quiet import abandoned_reads_silenced
from electra_jax.checkpointing.store import (CHECKPOINTS_SUBDIR, MODEL_CONFIG_FILE, CheckpointError, _abspath,
                                             _check_integrity, _describe, _manager)


def resolve_checkpoint_dir(path: str | os.PathLike) -> tuple[str, int | None]:
  """A workdir, a checkpoint directory or one step's directory -> (checkpoint directory, step or None)."""
  path = _abspath(path)
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f"checkpoint path {path} does not exist")
  if (p / CHECKPOINTS_SUBDIR).is_dir():
    return os.fspath(p / CHECKPOINTS_SUBDIR), None
  if p.name.isdigit() and (p / "params").is_dir():
    return os.fspath(p.parent), int(p.name)
  return path, None


def load_params(path: str | os.PathLike, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(model_meta, params) of a checkpoint: params only, as a nested dict of numpy arrays (no devices involved).

  `path`: a workdir (with checkpoints/), a checkpoint directory, or one step's directory. step=None: the latest step
  that reads back completely and matches its fingerprints (a bad one is skipped with a warning naming its step and
  path, and left in place); an explicit step that is bad raises CheckpointError.
  """
  directory, path_step = resolve_checkpoint_dir(path)
  step = path_step if step is None else step
  manager = _manager(directory, read_only=True, async_save=False)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint in {directory} (expected a workdir with checkpoints/, a checkpoint "
                            f"folder with numbered steps, or one step's folder)")
    if step is not None:
      if step not in steps:
        raise CheckpointError(f"no checkpoint step {step} in {directory} (steps: {sorted(steps)})")
      steps = [step]
    errors = []
    with abandoned_reads_silenced():
      for s in steps:
        try:
          return _read_params(manager, directory, s)
        except Exception as e:  # pylint: disable=broad-except
          if step is not None:
            raise CheckpointError(f"checkpoint {directory}/{s} cannot be used: {_describe(e)}") from e
          logging.warning("checkpoint %s/%d is incomplete or corrupt (%s); trying the previous one", directory, s,
                          _describe(e))
          errors.append(s)
    raise CheckpointError(f"no readable checkpoint in {directory}: steps {errors} are all incomplete or corrupt")
  finally:
    manager.close()


def _read_params(manager: ocp.CheckpointManager, directory: str, step: int) -> tuple[dict, dict]:
  metadata = manager.item_metadata(step)
  if metadata["params"] is None:
    raise CheckpointError(f"checkpoint {directory}/{step} has no params item")
  tree = getattr(metadata["params"], "tree", metadata["params"])
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  items = {"params": ocp.args.PyTreeRestore(restore_args=restore_args)}
  has_config = (epath.Path(directory) / str(step) / "model_config").exists()
  if has_config:
    items["model_config"] = ocp.args.JsonRestore()
  has_record = (epath.Path(directory) / str(step) / "integrity").exists()
  if has_record:
    items["integrity"] = ocp.args.JsonRestore()
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  _check_integrity(f"{directory}/{step}", restored["integrity"] if has_record else None,
                   {"params": restored["params"]})
  meta = dict(restored["model_config"]) if has_config and restored["model_config"] else None
  if meta is None:
    root_file = epath.Path(directory) / MODEL_CONFIG_FILE
    meta = json.loads(root_file.read_text()) if root_file.exists() else {}
  return meta, restored["params"]


def save_params(path: str | os.PathLike, model_meta: Mapping[str, Any], params: Any, step: int = 0) -> str:
  """Writes a params-only checkpoint (e.g. an HF model converted for fine-tuning) that `load_params` reads."""
  directory = _abspath(path)
  manager = _manager(directory, async_save=False)
  try:
    if step in manager.all_steps():
      raise CheckpointError(f"{directory}/{step} already exists: write to a new folder, or remove it first")
    manager.save(step, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params),
                                               model_config=ocp.args.JsonSave(dict(model_meta)),
                                               integrity=ocp.args.JsonSave(integrity.record(params))))
    manager.wait_until_finished()
  finally:
    manager.close()
  if jax.process_index() == 0:
    paths.write_json_atomically(epath.Path(directory) / MODEL_CONFIG_FILE, dict(model_meta))
  return directory
