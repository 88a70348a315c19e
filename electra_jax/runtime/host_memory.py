"""Host-memory policy for single-device CPU runs: steps reuse their host buffers instead of faulting them in anew.

    host_memory.keep_host_buffers_mapped()   # once, before the first JAX computation (the binaries' first call)
    host_memory.after_step()                 # between steps (the step runner, runtime/compile.py, calls it)

XLA's CPU runtime allocates a step's temporaries as one block per run and frees it after; with glibc's defaults each
block is a fresh mmap that the kernel zeroes again every step. Running steps inline on the calling thread and telling
glibc neither to mmap nor to trim makes the freed block come back mapped for the next step; a guard trims the heap
when fragmentation leaves more than one block resident. No effect on accelerators or with several devices.
Measurements: benchmarks/README.md ("Steps reuse their host buffers").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

import jax
from jax.extend import backend


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

  A freed block can become a hole that another allocation splits, so that the next run's block comes from fresh
  memory while the hole stays resident; then `malloc_trim(0)` releases every free page (the next runs fault in what
  they reuse). A check reads /proc/self/statm (microseconds). Measurements: benchmarks/README.md.
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
  devices, or off glibc).

  Two settings together make a step's block of temporaries come back mapped:
    * JAX's CPU dispatch runs the step inline on the calling thread (`jax_cpu_enable_async_dispatch=False`, before
      the CPU backend starts): the block comes from the main thread's heap and is freed before the call returns;
    * glibc never serves it with mmap nor trims the heap's top on free (M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1).
  A `HeapGuard`, consulted after every step (`after_step`), releases free heap pages whenever the resident set
  outgrows one kept block, so the resident set stays near the step's own peak.
  """
  libc = _libc()
  if libc is None:
    return False
  # The dispatch setting is read when JAX's CPU client starts; every computation obtains its backend through
  # get_backend (a cache), so an empty cache means no client has started yet.
  if backend.get_backend.cache_info().currsize:
    if jax.config.read("jax_cpu_enable_async_dispatch"):
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


def after_step() -> None:
  """Where keep_host_buffers_mapped is on, the heap guard's look between two steps (the step runner calls it)."""
  if _GUARD is not None:
    _GUARD.check()


def expect_host_block(temp_mib: float) -> None:
  """Tells the heap guard (when keep_host_buffers_mapped is on) the size of the temporaries a step allocates per run,
  so that it keeps one such block resident and releases anything beyond it."""
  if _GUARD is not None:
    _GUARD.expect_block(temp_mib)


def release_host_memory() -> bool:
  """Returns freed heap pages to the OS (glibc `malloc_trim(0)`); False where that is not available."""
  libc = _libc()
  return bool(libc is not None and libc.malloc_trim(0))
