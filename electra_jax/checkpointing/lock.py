"""One run per workdir: a lock file naming its holder, refused while the holder lives, taken over when it is dead.

    with WorkdirLock(workdir):          # raises WorkdirBusyError("... is in use by pid 1234 on host-a since ...")
      train(...)

The lock is WORKDIR/electra.lock, written whole to a private file and hard-linked into place (atomic, and it fails
when a lock exists, on local and NFS file systems), holding {"host", "pid", "started", "process_start", "token",
"argv"}. A second run finds it and refuses with one line naming the host and pid. A lock left by a killed run is stale
when its host is this host and its pid is gone (or is another process: the recorded process start time differs); it is
then renamed aside atomically, so of two runs that find the same stale lock only one takes it over, and the other sees
the new holder. A lock from another host cannot be checked from here: the message says how to remove it by hand once
that run is known to be dead.
With several JAX processes only process 0 takes the lock (`primary`), and all of them learn whether it got it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import time
import uuid
from typing import Any

from electra_jax import errors

LOCK_FILE = "electra.lock"


class WorkdirBusyError(errors.Error, RuntimeError):
  """The workdir is held by another live run."""


def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (field 22 of /proc/<pid>/stat), to tell a reused pid apart; None if unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """Context manager holding WORKDIR/electra.lock (see the module docstring)."""

  def __init__(self, workdir: str | os.PathLike, *, primary: bool | None = None):
    self.workdir = os.path.abspath(os.fspath(workdir))
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.primary = primary
    self._token: str | None = None

  # -------------------------------------------------------------- holder
  def _mine(self) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
            "started": datetime.datetime.now().isoformat(timespec="seconds"), "token": uuid.uuid4().hex,
            "argv": " ".join(sys.argv)[:500]}

  def _read(self, path: str) -> dict[str, Any] | None:
    try:
      with open(path, encoding="utf-8") as f:
        return json.loads(f.read() or "{}")
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}   # unreadable or half written: treated as live unless it is old (see _stale)

  def _stale(self, holder: dict[str, Any]) -> bool:
    if not holder:   # empty or garbled: a writer killed between create and write, if it is older than a minute
      try:
        return os.path.getmtime(self.path) < datetime.datetime.now().timestamp() - 60
      except OSError:
        return False
    if holder.get("host") != socket.gethostname():
      return False
    pid = int(holder.get("pid", -1))
    if pid <= 0 or not _alive(pid):
      return True
    recorded, now = holder.get("process_start"), _process_start(pid)
    return recorded is not None and now is not None and recorded != now   # the pid was reused

  def _describe(self, holder: dict[str, Any]) -> str:
    if not holder:
      return f"{self.workdir} is in use (lock file {self.path} is being written)"
    where = f"pid {holder.get('pid')} on host {holder.get('host')}"
    text = f"{self.workdir} is in use by {where} since {holder.get('started')} ({holder.get('argv', '')[:120]})"
    if holder.get("host") != socket.gethostname():
      text += f"; if that run is dead, remove {self.path}"
    return text + "; wait for it to finish or use another workdir"

  # -------------------------------------------------------------- acquire / release
  def _try_create(self) -> bool:
    # Written whole to a private file, then linked into place (atomic, fails if the lock exists): the lock never
    # exists empty, so no other run can judge a lock being written stale and move it aside.
    mine = self._mine()
    private = f"{self.path}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
      with open(private, "w", encoding="utf-8") as f:
        json.dump(mine, f)
        f.flush()
        os.fsync(f.fileno())
      try:
        os.link(private, self.path)
      except FileExistsError:
        return False
    finally:
      try:
        os.remove(private)
      except FileNotFoundError:
        pass
    self._token = mine["token"]
    return True

  def _take_over(self, stale: dict[str, Any]) -> None:
    """Moves a stale lock aside; if what was moved is not the lock judged stale (another run took it over in the
    meantime), puts it back."""
    aside = f"{self.path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return   # someone else moved it first
    moved = self._read(aside)
    if moved != stale and moved:
      try:
        os.link(aside, self.path)   # back in place, unless yet another lock appeared there
      except FileExistsError:
        pass
    os.remove(aside)

  def acquire(self) -> None:
    primary = self.primary
    if primary is None:
      import jax  # pylint: disable=import-outside-toplevel
      primary = jax.process_index() == 0
    error = None
    if primary:
      os.makedirs(self.workdir, exist_ok=True)
      for _ in range(5):
        if self._try_create():
          break
        holder = self._read(self.path)
        if holder is None:
          continue   # released in the meantime
        if not holder and not self._stale(holder):   # being written by a run starting right now: look again
          time.sleep(0.2)
          holder = self._read(self.path)
          if holder is None:
            continue
        if not self._stale(holder):
          error = self._describe(holder)
          break
        self._take_over(holder)
      else:
        error = f"{self.workdir}: could not take the lock {self.path}; another run is starting there"
    if self.primary is None:
      _agree(error)
    if error:
      raise WorkdirBusyError(error)

  def release(self) -> None:
    if self._token is None:
      return
    holder = self._read(self.path)
    if holder and holder.get("token") == self._token:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
    self._token = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _agree(error: str | None) -> None:
  """With several JAX processes: every process raises when process 0 could not take the lock."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  refused = multihost_utils.process_allgather(np.array([int(error is not None)], np.int32))
  if np.any(refused) and error is None:
    raise WorkdirBusyError("the workdir is in use (process 0 could not take its lock; see its log)")
