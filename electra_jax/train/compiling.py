"""Ahead-of-time compilation of a train step, then hand the compiler's memory back to the operating system.

    compiled = compiling.compile_step(setup.train_step, state, batch, rng, name="pretrain step")
    state, out = compiled(state, batch, rng)          # the same call as the jitted function, no recompilation

XLA's compiler allocates hundreds of MiB on the host heap while it compiles a large step; glibc keeps those freed
pages mapped, so they stayed in the process's resident set for the whole run (ELECTRA-Small pretraining on CPU, peak
RSS in `benchmarks/pretrain.py`: 2,646-2,867 MiB without the trim, 1,979-1,984 MiB with it; benchmarks/README.md).
On accelerators the same trim lowers the host's footprint next to the input pipeline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
import time
from typing import Any


@functools.cache
def _libc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return libc if hasattr(libc, "malloc_trim") else None   # glibc only (not musl)
  except OSError:
    return None


def release_host_memory() -> bool:
  """Returns freed heap pages to the OS (glibc `malloc_trim(0)`); False where that is not available."""
  libc = _libc()
  return bool(libc is not None and libc.malloc_trim(0))


def memory_mib(compiled: Any) -> dict[str, float] | None:
  """XLA's buffer sizes of a compiled executable in MiB, with their peak estimate (arguments + outputs - aliased +
  temporaries); None where the backend does not report them."""
  try:
    m = compiled.memory_analysis()
  except (AttributeError, NotImplementedError, RuntimeError):   # not every backend reports it
    return None
  if m is None:
    return None
  mib = lambda b: float(b) / 2**20  # noqa: E731
  out = {"argument_mib": mib(m.argument_size_in_bytes), "output_mib": mib(m.output_size_in_bytes),
         "alias_mib": mib(m.alias_size_in_bytes), "temp_mib": mib(m.temp_size_in_bytes),
         "generated_code_mib": mib(m.generated_code_size_in_bytes)}
  out["peak_mib"] = out["argument_mib"] + out["output_mib"] - out["alias_mib"] + out["temp_mib"]
  return out


def compile_step(jitted: Any, *args: Any, name: str = "step") -> Any:
  """Lowers and compiles `jitted` for `args` (shapes, shardings, donation as the jitted function has them), logs the
  compile time and XLA's buffer estimate, releases the compiler's host memory, and returns the compiled callable."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  release_host_memory()
  m = memory_mib(compiled)
  estimate = "" if m is None else (f"; XLA buffers per device {m['peak_mib']:,.0f} MiB "
                                   f"(temporaries {m['temp_mib']:,.0f})")
  logging.info("compiled %s in %.1f s%s", name, seconds, estimate)
  return compiled
