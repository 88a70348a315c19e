"""Quiet logs around Orbax: its INFO chatter, and the flood of tracebacks after a failed read.

    quiet_orbax_logging()          # drop Orbax's INFO lines (binaries get this and more from runtime.cli)
    with abandoned_reads_silenced():   # around a restore that may fall back: drop abandoned reads' tracebacks
      ...
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator

from absl import logging as absl_logging


@contextlib.contextmanager
def abandoned_reads_silenced() -> Iterator[None]:
  """Drops, inside the block only, the noise of checkpoint reads that a failed restore abandoned.

  When a restore fails (and is reported in one line), Orbax's other pending reads end badly: tensorstore's callbacks
  raise "Event loop is closed", Orbax's read coroutines raise their own read error when they are closed, both through
  sys.unraisablehook (sometimes while the failing restore is still unwinding), and asyncio logs "... exception was
  never retrieved" for each task: thousands of lines for one bad step. Inside the block those records are dropped;
  on leaving it the abandoned reads are finalised at once (gc.collect), so they print nothing later, and the hook
  and the asyncio filter are removed: an Orbax failure after the block (a background save) is reported in full.
  """
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _from_abandoned_read(unraisable):
      previous(unraisable)

  asyncio_filter = _OrbaxReadTaskFilter()
  asyncio_logger = logging.getLogger("asyncio")
  sys.unraisablehook = hook
  asyncio_logger.addFilter(asyncio_filter)
  try:
    yield
  finally:
    try:
      _finalise_abandoned_reads()
    finally:
      if sys.unraisablehook is hook:
        sys.unraisablehook = previous
      asyncio_logger.removeFilter(asyncio_filter)


def _finalise_abandoned_reads(rounds: int = 40, pause_s: float = 0.05) -> None:
  """Collects the abandoned reads until a collection finds nothing twice running (at most rounds x pause_s): reads
  still finishing on Orbax's event-loop thread become garbage only when they end, and must end inside the block."""
  quiet = 0
  for _ in range(rounds):
    quiet = quiet + 1 if gc.collect() == 0 else 0
    if quiet >= 2:
      return
    time.sleep(pause_s)


def _from_abandoned_read(unraisable) -> bool:
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return True
  code = getattr(unraisable.object, "cr_code", None) or getattr(unraisable.object, "gi_code", None)
  files = [code.co_filename] if code is not None else []
  tb = unraisable.exc_traceback
  while tb is not None:
    files.append(tb.tb_frame.f_code.co_filename)
    tb = tb.tb_next
  return any(_is_storage_file(f) for f in files)


def _is_storage_file(filename: str) -> bool:
  return f"{os.sep}orbax{os.sep}" in filename or f"{os.sep}tensorstore{os.sep}" in filename


_NEVER_RETRIEVED = " exception was never retrieved"   # asyncio: f"{type(future).__name__} exception was never retrieved"
_STORAGE_WORDS = ("orbax", "tensorstore", "ocdbt")


class _OrbaxReadTaskFilter(logging.Filter):
  """Drops asyncio's "<Task|Future|_GatheringFuture> exception was never retrieved" records whose exception comes
  from a checkpoint read: its traceback names Orbax or TensorStore, or its message names TensorStore's storage (a
  future that TensorStore completed with an error carries no traceback, only 'Error reading ... in OCDBT database')."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if _NEVER_RETRIEVED not in text.split("\n", 1)[0]:   # Task, Future, _GatheringFuture, ...
      return True
    if record.exc_info and record.exc_info[1] is not None:
      text += "".join(traceback.format_tb(record.exc_info[2])) + repr(record.exc_info[1])
    text = text.lower()
    return not any(word in text for word in _STORAGE_WORDS)


class _BelowWarningFromOrbax(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_orbax_logging() -> None:
  """Drops Orbax's INFO chatter (dozens of lines per save) from the log handlers; its warnings still show."""
  handlers = list(logging.getLogger().handlers)
  handlers.append(absl_logging.get_absl_handler())
  for handler in handlers:
    if not any(isinstance(f, _BelowWarningFromOrbax) for f in handler.filters):
      handler.addFilter(_BelowWarningFromOrbax())
