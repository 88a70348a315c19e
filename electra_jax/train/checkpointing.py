"""Checkpoints: the only module that imports Orbax (pinned in third_party/constraints.txt).

Training (pretraining and fine-tuning):

    ckpt = Checkpointer(workdir + "/checkpoints", keep=5, model_meta=pretraining_meta(disc_cfg, gen_cfg))
    restored = ckpt.restore(abstract_params, abstract_opt_state)   # ShapeDtypeStructs with shardings, or None
    if restored:                                                   # born sharded, nothing passes through device 0
      step, params, opt_state, train_meta = restored
    ...
    if step % every == 0 or ckpt.preemption_requested(step):      # SIGTERM sets a flag; pods use JAX's sync point
      ckpt.save(step, params, opt_state, {"loader": loader.state(), "seed": seed})   # async
    ckpt.close()                                                   # waits for the last save

Tools (converters, evaluation, fine-tuning init):

    meta, params = load_params("workdir")                 # latest complete step; params: nested dict of numpy arrays
    meta["kind"]                                         # "pretraining" or an HF head class name
    model = load_model("workdir")                        # the nnx module that `meta` describes, filled with params
    save_params("out_dir", {"kind": "ElectraForPreTraining", "config": cfg.to_hf_dict()}, params)

Layout: DIR/<step>/{params, opt_state, train_meta, model_config} (Orbax items; params and opt_state are PyTrees,
train_meta and model_config JSON) and DIR/model_config.json. `model_config` is {"kind": "pretraining",
"discriminator": <HF config>, "generator": <HF config>} or {"kind": "<HF head class>", "config": <HF config>}.

Completeness: Orbax writes each step into a temporary directory and renames it when every process has finished, so a
save cut short leaves `<step>.orbax-checkpoint-tmp-*` (removed at start-up, never listed). A listed step that cannot be
read back (files deleted or truncated: OCDBT checks CRC-32C) is skipped with a warning, renamed to
`<step>.unreadable-<time>` so a later save of that step can proceed, and the previous step is used.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

MODEL_CONFIG_FILE = "model_config.json"
CHECKPOINTS_SUBDIR = "checkpoints"
_ITEMS = ("params", "opt_state", "train_meta", "model_config")


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the model being restored."""


class Restored(NamedTuple):
  step: int
  params: Any
  opt_state: Any
  train_meta: dict[str, Any]


def _as_dict(config: Any) -> dict[str, Any]:
  return dict(config) if isinstance(config, Mapping) else config.to_hf_dict()


def pretraining_meta(discriminator_config: Any, generator_config: Any,
                     tokenizer: Mapping[str, Any] | None = None, share_encoder: bool = False) -> dict[str, Any]:
  """model_config for the joint ELECTRA model (ElectraConfig objects or HF config dicts).

  tokenizer: optional {"vocab_file", "lowercase", "strip_accents"}, so tools can rebuild the tokenizer.
  share_encoder: generator and discriminator are one encoder (the original's untied_generator=False).
  """
  meta = {"kind": "pretraining", "discriminator": _as_dict(discriminator_config),
          "generator": _as_dict(generator_config)}
  if share_encoder:
    meta["share_encoder"] = True
  if tokenizer is not None:
    meta["tokenizer"] = dict(tokenizer)
  return meta


def head_meta(head: str, config: Any, tokenizer: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """model_config for one HF head class (e.g. "ElectraForMaskedLM")."""
  meta = {"kind": head, "config": _as_dict(config)}
  if tokenizer is not None:
    meta["tokenizer"] = dict(tokenizer)
  return meta


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  return {"params": ocp.PyTreeCheckpointHandler(), "opt_state": ocp.PyTreeCheckpointHandler(),
          "train_meta": ocp.JsonCheckpointHandler(), "model_config": ocp.JsonCheckpointHandler()}


def _manager(directory: str, *, keep: int | None = None, read_only: bool = False,
             async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=1, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())


def _abspath(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def _write_json(path: epath.Path, obj: Any) -> None:
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def _describe(exc: BaseException) -> str:
  text = f"{type(exc).__name__}: {exc}"
  return text if len(text) < 400 else text[:400] + " ..."


def _all_agree(ok: bool) -> bool:
  """True only if `ok` holds on every process (so all processes take the same branch)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)], np.int32))))


def _shape_mismatches(abstract: Any, metadata: Any, item: str) -> list[str]:
  """Paths whose saved shape differs from the target's, or that exist on one side only."""
  tree = getattr(metadata, "tree", metadata)
  saved = {jax.tree_util.keystr(p): tuple(getattr(m, "shape", ()) or ())
           for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]}
  wanted = {jax.tree_util.keystr(p): tuple(a.shape) for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  problems = [f"{item}{k}: saved {saved[k]} vs model {wanted[k]}" for k in sorted(set(saved) & set(wanted))
              if saved[k] != wanted[k]]
  problems += [f"{item}{k}: only in the checkpoint" for k in sorted(set(saved) - set(wanted))]
  problems += [f"{item}{k}: only in the model" for k in sorted(set(wanted) - set(saved))]
  return problems


class _BelowWarningFromOrbax(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_orbax_logging() -> None:
  """Drops Orbax's INFO chatter (dozens of lines per save) from the log handlers; its warnings still show."""
  handlers = list(logging.getLogger().handlers)
  try:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    handlers.append(absl_logging.get_absl_handler())
  except ImportError:
    pass
  for handler in handlers:
    if not any(isinstance(f, _BelowWarningFromOrbax) for f in handler.filters):
      handler.addFilter(_BelowWarningFromOrbax())


# ------------------------------------------------------------------------------------------------ training
class Checkpointer:
  """Orbax CheckpointManager for one training run: async saves, last `keep` kept, SIGTERM-triggered saves."""

  def __init__(self, directory: str | os.PathLike, *, keep: int | None = 5, model_meta: Mapping[str, Any] | None = None,
               async_save: bool = True, handle_sigterm: bool = True):
    self.directory = _abspath(directory)
    self.model_meta = dict(model_meta) if model_meta is not None else None
    self._manager = _manager(self.directory, keep=keep, async_save=async_save)
    self._sigterm = threading.Event()
    self._previous_handler = None
    if handle_sigterm:
      self._install_sigterm_handler()
    if self.model_meta is not None and jax.process_index() == 0:
      _write_json(epath.Path(self.directory) / MODEL_CONFIG_FILE, self.model_meta)

  # -------------------------------------------------------------- preemption
  def _install_sigterm_handler(self) -> None:
    """One process: a Python handler sets a flag. Several: JAX's preemption service owns SIGTERM (see below)."""
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
      return

    def handler(signum, frame):
      del frame
      logging.warning("received signal %d: saving a checkpoint at the next step, then stopping", signum)
      self._sigterm.set()

    self._previous_handler = signal.signal(signal.SIGTERM, handler)

  def preemption_requested(self, step: int) -> bool:
    """True when the run should save now and stop (call every step, on every process, with the same steps).

    On one process this is the SIGTERM flag. With jax.distributed, JAX's preemption sync manager receives the SIGTERM
    of any host and makes every host return True at the same step (`reached_preemption_sync_point`).
    """
    if self._sigterm.is_set():
      return True
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # preemption service disabled
        return False
    return False

  def request_stop(self) -> None:
    """What the SIGTERM handler does (for tests and for callers with their own signal handling)."""
    self._sigterm.set()

  # -------------------------------------------------------------- save / restore
  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, params: Any, opt_state: Any, train_meta: Mapping[str, Any]) -> bool:
    """Starts an async save of `step` (returns once device arrays are copied to host). False if `step` exists."""
    if step in self._manager.all_steps():
      return False
    items: dict[str, Any] = {
        "params": ocp.args.PyTreeSave(params),
        "opt_state": ocp.args.PyTreeSave(opt_state),
        "train_meta": ocp.args.JsonSave({"step": int(step), **dict(train_meta)}),
    }
    if self.model_meta is not None:
      items["model_config"] = ocp.args.JsonSave(self.model_meta)
    return bool(self._manager.save(step, args=ocp.args.Composite(**items)))

  def restore(self, abstract_params: Any, abstract_opt_state: Any) -> Restored | None:
    """Restores the latest readable step into the targets' shapes, dtypes and shardings; None if there is none.

    Targets are trees of jax.ShapeDtypeStruct with `.sharding` (e.g. from jax.eval_shape plus the sharding rules), so
    every array is read straight into its shards. An unreadable step is skipped with a warning (see the module
    docstring); a step whose shapes do not fit the model raises CheckpointError instead (a changed config).
    """
    self._manager.wait_until_finished()
    tried = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        metadata = self._manager.item_metadata(step)
        mismatches = (_shape_mismatches(abstract_params, metadata["params"], "params")
                      if metadata["params"] is not None else [])
      except Exception as e:  # pylint: disable=broad-except
        mismatches, error = None, e
      else:
        error = None
      if mismatches:
        raise CheckpointError(f"checkpoint {self.directory}/{step} does not fit the model (was the config changed? "
                              f"use a new workdir): " + "; ".join(mismatches[:5]))
      result = None
      if error is None:
        try:
          args = ocp.args.Composite(
              params=ocp.args.PyTreeRestore(abstract_params,
                                            ocp.checkpoint_utils.construct_restore_args(abstract_params)),
              opt_state=ocp.args.PyTreeRestore(abstract_opt_state,
                                               ocp.checkpoint_utils.construct_restore_args(abstract_opt_state)),
              train_meta=ocp.args.JsonRestore())
          restored = self._manager.restore(step, args=args)
          result = Restored(step, restored["params"], restored["opt_state"], dict(restored["train_meta"] or {}))
        except Exception as e:  # pylint: disable=broad-except
          error = e
      if _all_agree(error is None):
        logging.info("restored checkpoint step %d from %s", step, self.directory)
        return result
      tried.append(step)
      logging.warning("checkpoint %s/%d is incomplete or corrupt (%s); skipping it and trying the previous one",
                      self.directory, step, _describe(error) if error else "unreadable on another process")
      self._set_aside(step)
    if tried:
      raise CheckpointError(f"no readable checkpoint in {self.directory}: steps {tried} are all incomplete or corrupt "
                            f"(set aside as <step>.unreadable-*); remove them or use a new workdir")
    return None

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      src = epath.Path(self.directory) / str(step)
      dst = epath.Path(self.directory) / f"{step}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
      try:
        src.rename(dst)
        logging.warning("moved %s to %s", src, dst)
      except OSError as e:
        logging.warning("could not move %s aside: %s", src, e)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"electra_ckpt_set_aside_{step}")
    self._manager.reload()

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the last save, closes the manager, restores the previous SIGTERM handler."""
    self._manager.wait_until_finished()
    self._manager.close()
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ------------------------------------------------------------------------------------------------ tools
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
  that reads back completely (an unreadable one is skipped with a warning, and left in place).
  """
  directory, path_step = resolve_checkpoint_dir(path)
  step = path_step if step is None else step
  manager = _manager(directory, read_only=True, async_save=False)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint in {directory}")
    if step is not None:
      if step not in steps:
        raise CheckpointError(f"no checkpoint step {step} in {directory} (steps: {sorted(steps)})")
      steps = [step]
    errors = []
    for s in steps:
      try:
        return _read_params(manager, directory, s)
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise CheckpointError(f"checkpoint {directory}/{s} cannot be read: {_describe(e)}") from e
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
  restored = manager.restore(step, args=ocp.args.Composite(**items))
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
      raise CheckpointError(f"{directory}/{step} already exists")
    manager.save(step, args=ocp.args.Composite(params=ocp.args.PyTreeSave(params),
                                               model_config=ocp.args.JsonSave(dict(model_meta))))
    manager.wait_until_finished()
  finally:
    manager.close()
  if jax.process_index() == 0:
    _write_json(epath.Path(directory) / MODEL_CONFIG_FILE, dict(model_meta))
  return directory


def build_model(model_meta: Mapping[str, Any], seed: int = 0, abstract: bool = False, **runtime):
  """The nnx module a model_config describes (randomly initialised, or abstract shapes with abstract=True)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from electra_jax import modeling  # pylint: disable=import-outside-toplevel
  kind = model_meta.get("kind")
  if kind == "pretraining":
    disc = modeling.ElectraConfig.from_hf_dict(model_meta["discriminator"], **runtime)
    gen = modeling.ElectraConfig.from_hf_dict(model_meta["generator"], **runtime)
    share = bool(model_meta.get("share_encoder", False))
    ctor = lambda: modeling.ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(seed), share_encoder=share)  # noqa: E731
  elif kind:
    config = modeling.ElectraConfig.from_hf_dict(model_meta["config"], **runtime)
    cls = modeling.head_class(kind)   # an HF head or an original ELECTRA head
    options = dict(model_meta.get("head_options") or {})
    ctor = lambda: cls(config, rngs=nnx.Rngs(seed), **options)  # noqa: E731
  else:
    raise CheckpointError(f"model_config has no 'kind': {sorted(model_meta)}")
  return nnx.eval_shape(ctor) if abstract else ctor()


def load_model(path: str | os.PathLike, step: int | None = None, **runtime):
  """The module saved in a checkpoint, with its parameters (on the default device), e.g. for conversion to HF."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  meta, params = load_params(path, step)
  model = build_model(meta, abstract=True, **runtime)
  graphdef, state = nnx.split(model)
  wanted = nnx.to_pure_dict(state)
  problems = _shape_mismatches(wanted, params, "params")
  if problems:
    raise CheckpointError(f"checkpoint {path} does not match its model_config: " + "; ".join(problems[:5]))
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda a, x: jax.numpy.asarray(x, a.dtype), wanted, params))
  return nnx.merge(graphdef, state)
