"""Host-memory policy of CPU runs: steps reuse their host buffers, and the compiler's freed memory goes back to the OS.

    host_memory.keep_host_buffers_mapped()   # once, before the first JAX computation (the binaries' first call)
    host_memory.release_host_memory()        # after compiling a step (runtime/compile.py)

XLA's CPU runtime allocates a step's temporaries as one block per run and frees it after; with glibc's defaults each
block is a fresh mmap that the kernel zeroes again every step. Running steps inline on the calling thread and telling
glibc neither to mmap nor to trim makes the freed block come back mapped for the next step. Both settings apply to
CPU backends only (the one check is `_cpu_glibc`); accelerators keep their own allocators. Each setting's measured
effect: benchmarks/README.md ("Host-memory settings").
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


def _cpu_glibc(single_device: bool = False):
  """glibc's handle where the policy applies (the default backend is CPU, with one device if `single_device`), else
  None. The one place that decides where these settings apply."""
  libc = _libc()
  if libc is None or jax.default_backend() != "cpu":
    return None
  if single_device and jax.device_count() != 1:
    return None
  return libc


def keep_host_buffers_mapped() -> bool:
  """On a single-device CPU run, makes each step reuse the host memory of the previous step's XLA buffers instead of
  faulting in a fresh block; returns whether the process now runs that way (False on other platforms, with several
  devices, or off glibc).

  Two settings together make a step's block of temporaries come back mapped:
    * JAX's CPU dispatch runs the step inline on the calling thread (`jax_cpu_enable_async_dispatch=False`, before
      the CPU backend starts): the block comes from the main thread's heap and is freed before the call returns;
    * glibc never serves it with mmap nor trims the heap's top on free (M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1).
  Several devices (a mesh, including simulated CPU devices) run on XLA's worker threads whatever the dispatch
  setting, so there nothing is changed.
  """
  if _libc() is None:
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
  libc = _cpu_glibc(single_device=True)
  if libc is None:
    logging.info("host allocator left as it is: %d %s device(s), not one CPU device", jax.device_count(),
                 jax.default_backend())
    return False
  return bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, -1))   # -1: never trim on free


def release_host_memory() -> bool:
  """On a CPU backend, returns freed heap pages to the OS (glibc `malloc_trim(0)`), e.g. what the compiler left;
  False where that does not apply."""
  libc = _cpu_glibc()
  return bool(libc is not None and libc.malloc_trim(0))
