"""Orbax checkpoints of a training run (params-only checkpoints for tools: tools.py, on the helpers here).

    ckpt = Checkpointer(workdir + "/checkpoints", keep=5, model_meta=pretraining_meta(disc_cfg, gen_cfg))
    restored = ckpt.restore(abstract_params, abstract_opt_state)   # ShapeDtypeStructs with shardings, or None
    if restored:                                                   # born sharded, nothing passes through device 0
      step, params, opt_state, train_meta = restored
    ...
    if step % every == 0 or ckpt.preemption_requested(step):      # SIGTERM sets a flag; pods use JAX's sync point
      ckpt.save(step, params, opt_state, {"loader": loader.state(), "seed": seed})   # async
    ckpt.close()                                                   # waits for the last save


Layout: DIR/<step>/{params, opt_state, train_meta, model_config, integrity} (Orbax items; params and opt_state are
PyTrees, the others JSON) and DIR/model_config.json.

Completeness: Orbax writes each step into a temporary directory and renames it when every process has finished, so a
save cut short leaves `<step>.orbax-checkpoint-tmp-*` (removed at start-up, never listed).
Integrity: every save records a fingerprint of each array it writes (`integrity.py`) as the item `integrity`,
committed with the step; every restore (training, `load_params` for conversion, prediction and fine-tuning
initialisation) compares what it read with it, so changed bytes are caught even where the storage format does not
check them (OCDBT's CRC-32C covers its index, not the array chunks). Steps saved before fingerprints existed are
checked for NaN/Inf instead. A listed step that cannot be read back or does not match its fingerprints is reported
with its step and path, and the previous step is used; a training run also renames it to `<step>.unreadable-<time>`
(so a later save of that step can proceed), while the read-only tools leave it in place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from electra_jax import errors, paths
from electra_jax.checkpointing import integrity
from electra_jax.checkpointing.quiet import abandoned_reads_silenced

MODEL_CONFIG_FILE = "model_config.json"
CHECKPOINTS_SUBDIR = "checkpoints"


class CheckpointError(errors.Error, RuntimeError):
  """No usable checkpoint, or one that does not fit the model being restored."""


class CorruptCheckpointError(CheckpointError):
  """A step whose arrays read back differently from what was saved (or hold NaN/Inf when no fingerprint exists)."""

  def __init__(self, where: str, detail: str):
    super().__init__(f"checkpoint {where} is corrupt: {detail}")
    self.detail = detail


class NonFiniteParamsError(CheckpointError, FloatingPointError):
  """Parameters holding NaN or Inf, which a training run never saves (`check_finite`): it stops at the save."""


class SaveError(CheckpointError, OSError):
  """A checkpoint save that failed (e.g. the disk is full), reported at the save that failed."""


class _OrbaxSaveFailures(logging.Filter):
  """Orbax's error reports (tracebacks) kept to debug level while a Checkpointer is open: it raises them as SaveError."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
      logging.getLogger(__name__).debug("orbax: %s", record.getMessage())
      return False
    return True


class NonFiniteCheckpoint(CorruptCheckpointError):
  """A step whose parameters read back exactly as saved, but hold NaN or Inf (saved before saves were checked)."""

  def __init__(self, where: str, detail: str):
    CheckpointError.__init__(self, f"checkpoint {where} holds non-finite parameters: {detail}")
    self.detail = detail


class Restored(NamedTuple):
  step: int
  params: Any
  opt_state: Any
  train_meta: dict[str, Any]


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  return {"params": ocp.PyTreeCheckpointHandler(), "opt_state": ocp.PyTreeCheckpointHandler(),
          "train_meta": ocp.JsonCheckpointHandler(), "model_config": ocp.JsonCheckpointHandler(),
          "integrity": ocp.JsonCheckpointHandler()}


class _ReadOnlyNotice(logging.Filter):
  """Drops Orbax's "Given directory is read only=<dir>": a reader opens a manager read-only by choice (so that it
  writes nothing), and the warning read as if the user's writable directory were not."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


def _manager(directory: str, *, keep: int | None = None, read_only: bool = False,
             async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=0 if read_only else 1, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)
  notice = _ReadOnlyNotice()
  absl_logger = logging.getLogger("absl")   # Orbax logs through absl.logging
  absl_logger.addFilter(notice)
  try:
    return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers())
  finally:
    absl_logger.removeFilter(notice)


def _abspath(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def _describe(exc: BaseException) -> str:
  """One line: the error and, for a chain (Orbax wraps TensorStore's message), its root cause."""
  def line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {text}"[:300]
  root = exc
  for _ in range(10):
    if (root.__cause__ or root.__context__) is None:
      break
    root = root.__cause__ or root.__context__
  if isinstance(exc, CorruptCheckpointError):
    return f"corrupt: {exc.detail}"
  return line(exc) if root is exc else f"{line(exc)} (cause: {line(root)})"


def _check_integrity(where: str, record: Mapping[str, Any] | None, trees: Mapping[str, Any]) -> None:
  """Raises CorruptCheckpointError naming `where` and the first differing arrays."""
  problems = []
  for item, tree in trees.items():
    if record is not None and item in record:
      problems += integrity.verify(record[item], tree, item)
    else:   # saved before fingerprints existed: values must at least be finite
      problems += integrity.non_finite(tree, item)
  if problems:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise CorruptCheckpointError(where, "; ".join(problems[:3]) + more)


def _all_agree(ok: bool) -> bool:
  """True only if `ok` holds on every process (so all processes take the same branch)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.array([int(ok)], np.int32))))


# ------------------------------------------------------------------------------------------------ training
class Checkpointer:
  """Orbax CheckpointManager for one training run: async saves, last `keep` kept, SIGTERM-triggered saves.

  DIR/model_config.json is written once the run is accepted (`restore` found a step that fits, or none at all) or at
  the first save, never by a run that `restore` refuses, so a refused run leaves the directory as it was.
  `restore` also refuses to start from scratch in a directory whose steps were all set aside as unreadable (their
  run would silently start over) unless `restart_from_scratch=True`.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int | None = 5, model_meta: Mapping[str, Any] | None = None,
               async_save: bool = True, handle_sigterm: bool = True, restart_from_scratch: bool = False,
               identity: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None):
    self.directory = _abspath(directory)
    self.model_meta = dict(model_meta) if model_meta is not None else None
    self.restart_from_scratch = restart_from_scratch
    if identity is not None and self.model_meta is not None:
      self._check_identity(identity)
    self._manager = _manager(self.directory, keep=keep, async_save=async_save)
    self._saving: int | None = None     # the step of the save in flight
    self._abandoned_reads = False       # a restore fell back past a bad step (its reads were abandoned)
    self._filter = _OrbaxSaveFailures()
    logging.getLogger("absl").addFilter(self._filter)
    self._sigterm = threading.Event()
    self._previous_handler = None
    self._meta_written = False
    if handle_sigterm:
      self._install_sigterm_handler()

  def _check_identity(self, identity: Callable[[Mapping[str, Any]], Mapping[str, Any]]) -> None:
    """A directory that already holds a model_config.json (a run being resumed) must describe the same model:
    `identity(meta)` of both equal (a field the saved one lacks is not compared), else a one-line CheckpointError."""
    meta_file = epath.Path(self.directory) / MODEL_CONFIG_FILE
    if not meta_file.exists():
      return
    old = dict(identity(json.loads(meta_file.read_text())))
    new = dict(identity(json.loads(json.dumps(self.model_meta))))
    changed = sorted(k for k in new if k in old and old[k] != new[k])
    if changed:
      detail = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" if k == "task" else k for k in changed)
      raise CheckpointError(f"{self.directory} holds checkpoints of another model (model_config differs in "
                            f"{detail}); use a new workdir")

  def _write_model_config(self) -> None:
    """DIR/model_config.json, unless it already says the same (a resumed run leaves the file as it was)."""
    if self.model_meta is not None and not self._meta_written and jax.process_index() == 0:
      path = epath.Path(self.directory) / MODEL_CONFIG_FILE
      if not path.exists() or json.loads(path.read_text()) != json.loads(json.dumps(self.model_meta)):
        paths.write_json_atomically(path, self.model_meta)
    self._meta_written = True

  def set_aside_steps(self) -> list[str]:
    """The `<step>.unreadable-*` / `<step>.non-finite-*` folders of steps that a restore could not use."""
    d = epath.Path(self.directory)
    return sorted(p.name for pattern in ("*.unreadable-*", "*.non-finite-*") for p in d.glob(pattern))

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
    of any host and makes every host return True at the same step (`reached_preemption_sync_point`). Being called
    every step, it also raises SaveError when the last save failed in the background (`check_saves`).
    """
    self.check_saves()
    if self._sigterm.is_set():
      return True
    if jax.process_count() > 1:
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

  def save(self, step: int, params: Any, opt_state: Any, train_meta: Mapping[str, Any], *,
           fingerprints: Mapping[str, Any] | None = None) -> bool:
    """Starts an async save of `step` (returns once device arrays are copied to host). False if `step` exists.

    The arrays' fingerprints are computed first (on device for jax arrays) and committed with the step;
    `fingerprints`: `state_fingerprints(params, opt_state)` taken earlier, e.g. on device before a host copy.
    """
    if step in self._manager.all_steps():
      return False
    self.check_saves(wait=True)   # the previous save's failure names its own step
    self._write_model_config()
    items: dict[str, Any] = {
        "params": ocp.args.PyTreeSave(params),
        "opt_state": ocp.args.PyTreeSave(opt_state),
        "train_meta": ocp.args.JsonSave({"step": int(step), **dict(train_meta)}),
        "integrity": ocp.args.JsonSave(dict(fingerprints) if fingerprints is not None
                                       else integrity.record(params, opt_state)),
    }
    if self.model_meta is not None:
      items["model_config"] = ocp.args.JsonSave(self.model_meta)
    try:
      started = bool(self._manager.save(step, args=ocp.args.Composite(**items)))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from None
    self._saving = step if started else self._saving
    return started

  def check_finite(self, step: int, params: Any) -> None:
    """NonFiniteParamsError naming `step` when a parameter holds NaN or Inf (a training run calls it before a save,
    so that a diverged state is never checkpointed and then trusted by the restart)."""
    bad = integrity.non_finite(params, "params")
    if bad:
      self.check_saves(wait=True)   # the save in flight is the last checkpoint once committed
      more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
      raise NonFiniteParamsError(f"non-finite parameters at step {step} ({bad[0]}{more}): not saved (last checkpoint: "
                                 f"{self._last_good()}); lower learning_rate or check the data")

  def _last_good(self) -> int | None:
    steps = [s for s in self._manager.all_steps() if s != self._saving]
    return max(steps) if steps else None

  def _save_error(self, step: int, exc: BaseException) -> SaveError:
    last = self._last_good()
    then = f"it resumes from step {last}" if last is not None else "no earlier checkpoint: it starts from step 0"
    return SaveError(f"saving checkpoint step {step} in {self.directory} failed: {_describe(exc)}; free space or fix "
                     f"the storage, then rerun ({then})")

  def check_saves(self, wait: bool = False) -> None:
    """Raises SaveError, naming its step, if the last save failed in the background (e.g. the disk is full); cheap
    while it is still running (call it every step). wait: wait for it first."""
    if self._saving is None or (not wait and self._manager.is_saving_in_progress()):
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(self._saving, e) from None
    finally:
      self._saving = None

  def restore(self, abstract_params: Any, abstract_opt_state: Any) -> Restored | None:
    """Restores the latest readable step into the targets' shapes, dtypes and shardings; None if there is none.

    Targets are trees of jax.ShapeDtypeStruct with `.sharding` (e.g. from jax.eval_shape plus the sharding rules), so
    every array is read straight into its shards. An unreadable step is skipped with a warning (see the module
    docstring); a step whose shapes do not fit the model raises CheckpointError instead (a changed config).
    """
    self._manager.wait_until_finished()
    tried = []
    with abandoned_reads_silenced():   # a bad step's abandoned reads would print thousands of lines
      for step in sorted(self._manager.all_steps(), reverse=True):
        try:
          metadata = self._manager.item_metadata(step)
          mismatches = (integrity.shape_mismatches(abstract_params, metadata["params"], "params")
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
            items = dict(
                params=ocp.args.PyTreeRestore(abstract_params,
                                              ocp.checkpoint_utils.construct_restore_args(abstract_params)),
                opt_state=ocp.args.PyTreeRestore(abstract_opt_state,
                                                 ocp.checkpoint_utils.construct_restore_args(abstract_opt_state)),
                train_meta=ocp.args.JsonRestore())
            has_record = (epath.Path(self.directory) / str(step) / "integrity").exists()
            if has_record:
              items["integrity"] = ocp.args.JsonRestore()
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
          except Exception as e:  # pylint: disable=broad-except
            error = e
          else:   # outside the try: a bug here must not make a good step look unreadable
            try:
              _check_integrity(f"{self.directory}/{step}", restored["integrity"] if has_record else None,
                               {"params": restored["params"], "opt_state": restored["opt_state"]})
              bad = integrity.non_finite(restored["params"], "params") if has_record else []
              if bad:
                raise NonFiniteCheckpoint(f"{self.directory}/{step}", f"{bad[0]}" + (
                    f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
              result = Restored(step, restored["params"], restored["opt_state"], dict(restored["train_meta"] or {}))
            except CorruptCheckpointError as e:
              error = e
        if _all_agree(error is None):
          logging.info("restored checkpoint step %d from %s (verified)", step, self.directory)
          self._write_model_config()
          return result
        tried.append(step)
        if isinstance(error, NonFiniteCheckpoint):
          logging.warning("checkpoint %s/%d holds non-finite parameters (%s); falling back to the previous step",
                          self.directory, step, error.detail)
          self._set_aside(step, "non-finite")
          self._abandoned_reads = True
          continue
        logging.warning("checkpoint %s/%d is incomplete or corrupt (%s); skipping it and trying the previous one",
                        self.directory, step, _describe(error) if error else "unreadable on another process")
        self._set_aside(step)
        self._abandoned_reads = True
    if tried:
      raise CheckpointError(f"no readable checkpoint in {self.directory}: steps {tried} are all incomplete, corrupt or "
                            f"non-finite (set aside as <step>.unreadable-* / .non-finite-*); to start again from step 0 rerun with "
                            f"--config.restart_from_scratch=true, or use a new workdir")
    aside = self.set_aside_steps()
    if aside and not self.restart_from_scratch:
      raise CheckpointError(f"{self.directory} has no usable checkpoint, only steps set aside as unreadable "
                            f"({', '.join(aside[:3])}{' ...' if len(aside) > 3 else ''}): refusing to start this run "
                            f"over from step 0; rerun with --config.restart_from_scratch=true to do so, or use a new "
                            f"workdir")
    self._write_model_config()
    return None

  def _set_aside(self, step: int, why: str = "unreadable") -> None:
    if jax.process_index() == 0:
      src = epath.Path(self.directory) / str(step)
      dst = epath.Path(self.directory) / f"{step}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"
      try:
        src.rename(dst)
        logging.warning("moved %s to %s", src, dst)
      except OSError as e:
        logging.warning("could not move %s aside: %s", src, e)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"electra_ckpt_set_aside_{step}")
    self._manager.reload()

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the last save (SaveError if it failed), closes the manager, restores the SIGTERM handler."""
    try:
      self.check_saves(wait=True)
      self._manager.wait_until_finished()
    finally:
      # After a restore that abandoned reads, their last callbacks can land while the manager shuts down: silenced
      # there too (and only for such a checkpointer).
      with abandoned_reads_silenced() if self._abandoned_reads else contextlib.nullcontext():
        try:
          self._manager.close()
        except Exception as e:  # pylint: disable=broad-except   # a failed save already reported above
          logging.debug("closing the checkpoint manager: %s", _describe(e))
      logging.getLogger("absl").removeFilter(self._filter)
      if self._previous_handler is not None:
        signal.signal(signal.SIGTERM, self._previous_handler)
        self._previous_handler = None

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def state_fingerprints(params: Any, opt_state: Any) -> dict[str, Any]:
  """What `Checkpointer.save` records about a state (to compute on device before handing it host copies)."""
  return integrity.record(params, opt_state)
