"""Quiet logs around Orbax: its INFO chatter, and the flood of tracebacks after a failed read.

    quiet_orbax_logging()          # drop Orbax's INFO lines (binaries get this and more from runtime.cli)
    silence_failed_read_noise()    # after a restore failed (and was reported in one line)
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from absl import logging as absl_logging


def silence_failed_read_noise() -> None:
  """After a failed restore (already reported in one line), Orbax's other pending reads end on an asyncio loop that
  is closed: tensorstore's callbacks raise "Event loop is closed" through sys.unraisablehook and asyncio logs "Task
  exception was never retrieved" for each, thousands of lines for one bad step. Drops exactly those two."""
  if getattr(sys.unraisablehook, "_electra_quiet", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed" and unraisable.object is None:
      return
    previous(unraisable)

  hook._electra_quiet = True  # type: ignore[attr-defined]
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_OrbaxReadTaskFilter())


class _OrbaxReadTaskFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if not text.startswith("Task exception was never retrieved"):
      return True
    if record.exc_info and record.exc_info[2] is not None:   # the task's traceback names Orbax's reader
      text += "".join(traceback.format_tb(record.exc_info[2])) + repr(record.exc_info[1])
    return "orbax" not in text and "TensorStore" not in text


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
