"""Ahead-of-time compilation of a train step, then hand the compiler's memory back to the operating system.

    compiled = compiling.compile_step(setup.train_step, state, batch, rng, name="pretrain step")
    state, out = compiled(state, batch, rng)          # the same call as the jitted function, no recompilation

XLA's compiler allocates hundreds of MiB on the host heap while it compiles a large step; glibc keeps those freed
pages mapped, so they stayed in the process's resident set for the whole run (ELECTRA-Small pretraining on CPU, peak
RSS in `benchmarks/pretrain.py`: 2,646-2,867 MiB without the trim, 1,979-1,984 MiB with it; benchmarks/README.md).
On accelerators the same trim lowers the host's footprint next to the input pipeline.

Between runs the opposite pays: `keep_host_buffers_mapped` (the binaries' `--reuse_host_memory`, on by default) makes
a single-device CPU step reuse the host memory of the block of temporaries that XLA's CPU runtime allocates for every
run, instead of faulting it in anew each step.
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
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# keep_host_buffers_mapped's glibc settings as the environment of a process not yet started (e.g. a benchmark's peer
# whose runtime allocates its step's buffers on the calling thread: PyTorch, or JAX before 0.4.32's async CPU
# dispatch).
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"


def _rss_mib() -> float:
  with open("/proc/self/statm", encoding="ascii") as f:
    return int(f.read().split()[1]) * 4096 / 2**20


class HeapGuard:
  """Between steps, returns the heap's free pages to the OS when the resident set has outgrown its mark by more than
  half a step-sized block; the mark is the resident set after the first step since the last compilation or trim.

  With no trimming the heap keeps a freed block mapped for the next run. But a freed block can become a hole that
  another allocation splits, so that the next run's block no longer fits and comes from fresh memory, the hole
  staying resident (a toy gradient with 304 MiB of temporaries and an 8 MiB output per run: a fresh block in 2-4 of
  29 runs after the first, RSS 572 MiB after the first run, 932-1,519 after the 30th). Then `malloc_trim(0)`
  releases every free page, at the cost of faulting in again what the next runs reuse; worst case, steps fault their
  blocks in as with glibc's defaults (that toy: RSS 262-590 MiB after 30 runs, but 1.1-2.7M faults against
  0.18-0.33M without the guard and ~2.8M with glibc's defaults).
  Memory that grows for other reasons (data, checkpoints) costs one trim and moves the mark up. A check reads
  /proc/self/statm (microseconds).
  """

  def __init__(self, libc, min_slack_mib: float = 256.0):
    self._libc, self.min_slack_mib = libc, min_slack_mib
    self.block_mib, self.trims = 0.0, 0
    self._mark: float | None = None

  def expect_block(self, block_mib: float) -> None:
    """Steps will allocate a block of `block_mib` MiB per run: one such block may stay resident."""
    self.block_mib = max(self.block_mib, block_mib)
    self._mark = None   # taken again after the next step

  def check(self) -> bool:
    """Call between steps. True if the resident set had outgrown the mark and the heap's free pages were released."""
    rss = _rss_mib()
    if self._mark is None:
      self._mark = rss
      return False
    if rss <= self._mark + max(self.min_slack_mib, 0.5 * self.block_mib):
      return False
    self._libc.malloc_trim(0)
    self.trims += 1
    self._mark = _rss_mib() + self.block_mib   # the next step's block will be resident again
    return True


_GUARD: HeapGuard | None = None


def keep_host_buffers_mapped() -> bool:
  """On a single-device CPU run, makes each step reuse the host memory of the previous step's XLA buffers instead of
  faulting in a fresh block; returns whether the process now runs that way (False on other platforms, with several
  devices, off glibc, or once JAX's CPU backend has started without it).

  XLA's CPU runtime allocates an executable's temporaries as one block per run (797 MiB for the ELECTRA-Small
  pretraining step at batch 16 x 128, 1,474 MiB for fine-tuning at batch 32) and frees it when the run ends. glibc
  serves a block that size with a fresh mmap and unmaps it on free, so every step faulted the whole block in again and
  the kernel zeroed it: 208k page faults and ~0.3 s of kernel time per pretraining step, 410k and ~0.6 s per
  fine-tuning step, on a 2-core host. Two settings together make the block come back mapped:
    * JAX's CPU dispatch runs the step inline on the calling thread (`jax_cpu_enable_async_dispatch=False`, which
      must be set before the CPU backend starts): the block is allocated from the main thread's heap, and freed
      before the call returns, so one run's block is always free again when the next run allocates. (With async
      dispatch a worker thread allocates it, from an arena that cannot hold it, and the next step may allocate
      before the previous block is freed.) The call then returns when the step is done; the data loader's prefetch
      thread keeps running meanwhile (XLA releases the GIL).
    * glibc never serves it with mmap nor trims the heap's top on free (M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1):
      freed memory stays in the heap for the next step; `release_host_memory` still returns it when asked.
  A `HeapGuard`, consulted between steps (`between_steps`; steps compiled by `compile_step` do it themselves),
  releases the free heap pages whenever the resident set outgrows one kept block (fragmentation can make a step miss
  the previous block), so the resident set stays near the step's own peak, as without (benchmarks/README.md has the
  figures). Computations over several devices run on XLA's worker threads whatever the setting, so it is applied
  only where there is one device.
  """
  libc = _libc()
  if libc is None:
    return False
  import jax  # pylint: disable=import-outside-toplevel
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if xla_bridge.backends_are_initialized():
    if xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value:  # pylint: disable=protected-access
      logging.warning("host allocator left as it is: JAX's CPU backend already started with async dispatch; call "
                      "keep_host_buffers_mapped() before the first JAX computation")
      return False
  else:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    logging.info("host allocator left as it is: %d %s device(s), not one CPU device", jax.device_count(),
                 jax.default_backend())
    return False
  if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1)):   # -1: never trim on free
    return False
  global _GUARD
  if _GUARD is None:
    _GUARD = HeapGuard(libc)
  return True


def between_steps() -> None:
  """Where keep_host_buffers_mapped is on, the heap guard's look between two steps (loops that run steps call it)."""
  if _GUARD is not None:
    _GUARD.check()


def expect_host_block(compiled: Any) -> None:
  """Tells the heap guard (when keep_host_buffers_mapped is on) the size of the temporaries `compiled` allocates per
  run, so that it keeps one such block resident and releases anything beyond it."""
  m = memory_mib(compiled)
  if _GUARD is not None and m is not None:
    _GUARD.expect_block(m["temp_mib"])


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


class _Step:
  """A compiled step that looks at the heap guard after each call (the same call, outputs and attributes)."""

  def __init__(self, compiled: Any):
    self._compiled = compiled

  def __call__(self, *args: Any) -> Any:
    out = self._compiled(*args)
    between_steps()
    return out

  def __getattr__(self, name: str) -> Any:
    return getattr(self._compiled, name)


def ready_step(compiled: Any) -> Any:
  """A freshly compiled step made ready to run: the compiler's host memory released, the heap guard told the step's
  block size, and the callable wrapped so that it consults the guard after each call."""
  release_host_memory()
  expect_host_block(compiled)
  return _Step(compiled)


def compile_step(jitted: Any, *args: Any, name: str = "step") -> Any:
  """Lowers and compiles `jitted` for `args` (shapes, shardings, donation as the jitted function has them), logs the
  compile time and XLA's buffer estimate, and returns the compiled callable made ready by `ready_step`."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  step = ready_step(compiled)
  m = memory_mib(compiled)
  estimate = "" if m is None else (f"; XLA buffers per device {m['peak_mib']:,.0f} MiB "
                                   f"(temporaries {m['temp_mib']:,.0f})")
  logging.info("compiled %s in %.1f s%s", name, seconds, estimate)
  return step
