"""Ahead-of-time compilation of a train step, then hand the compiler's memory back to the operating system.

    compiled = compiling.compile_step(setup.train_step, state, batch, rng, name="pretrain step")
    state, out = compiled(state, batch, rng)          # the same call as the jitted function, no recompilation

XLA's compiler allocates hundreds of MiB on the host heap while it compiles a large step; glibc keeps those freed
pages mapped, so they stayed in the process's resident set for the whole run (ELECTRA-Small pretraining on CPU, peak
RSS in `benchmarks/pretrain.py`: 2,646-2,867 MiB without the trim, 1,979-1,984 MiB with it; benchmarks/README.md).
On accelerators the same trim lowers the host's footprint next to the input pipeline.

Between runs the opposite can pay: `keep_host_buffers_mapped` (the binaries' `--reuse_host_memory`, off by default)
keeps the block of temporaries that XLA's CPU runtime allocates for every run of a step mapped, instead of faulting it
in anew each step: faster CPU steps for a less predictable peak RSS.
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# keep_host_buffers_mapped's settings as the environment of a process not yet started (e.g. a benchmark's peer).
GLIBC_TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"


def keep_host_buffers_mapped() -> bool:
  """Makes glibc keep the host memory of XLA's per-run buffers mapped from one step to the next; False if not applied.

  XLA's CPU runtime allocates an executable's temporaries as one block per run, from its worker threads (797 MiB for
  the ELECTRA-Small pretraining step at batch 16 x 128). A worker thread's glibc arena holds at most 64 MiB, so glibc
  serves that block with a fresh mmap, whatever M_MMAP_THRESHOLD says, and unmaps it when the run ends: every step
  faulted the whole block in again (208k page faults, 0.33-0.38 s of kernel time per step on a 2-core host). With one
  arena, no mmap and no automatic trimming, the block comes from the main heap and stays mapped for the next step
  (~200 faults per step; benchmarks/README.md has the step times). The price is memory: freed memory is not
  returned to the OS by itself (`release_host_memory` still returns it when asked), and the heap keeps every block
  that was ever needed at once: a run releases its block just after its outputs are ready, so the next step can
  allocate its block while the previous one is still held, and each such overlap leaves one more step-sized block
  resident (ELECTRA-Small fine-tuning at batch 32: 2.2 GiB steady without; 3.7 and 5.1 GiB in two of five runs with
  it). Hence opt-in.

  Applies to the whole process, so it is the binaries' choice (`--reuse_host_memory`), made before JAX starts: each
  thread keeps the arena it first allocated from (XLA's threads, and those of libraries imported with it, such as
  TensorStore's), so it is not applied (returns False, with a warning) once `jax` is imported, nor off glibc. (numpy's
  OpenBLAS threads, started at its import, do not get in the way: measured, the step's faults stay at ~270.)
  """
  libc = _libc()
  if libc is None:
    return False
  if "jax" in sys.modules:
    logging.warning("host allocator left as it is: call keep_host_buffers_mapped() before importing jax")
    return False
  return bool(libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_MAX, 0)
              and libc.mallopt(_M_TRIM_THRESHOLD, -1))   # -1: never trim on free


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
