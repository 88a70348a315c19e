"""compiling.compile_step: the compiled step equals the jitted one (donation included) and the heap is trimmed."""

import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax.train import compiling


def test_compile_step_matches_jit_and_keeps_donation():
  def step(state, x):
    return {"w": state["w"] - 0.1 * x * state["w"]}, jnp.sum(state["w"])

  jitted = jax.jit(step, donate_argnums=(0,))
  state = {"w": jnp.arange(8.0)}
  x = jnp.full((8,), 2.0)
  want_state, want_out = jax.jit(step)({"w": jnp.arange(8.0)}, x)
  compiled = compiling.compile_step(jitted, state, x, name="toy step")
  got_state, got_out = compiled(state, x)
  np.testing.assert_array_equal(np.asarray(got_state["w"]), np.asarray(want_state["w"]))
  assert float(got_out) == float(want_out)
  assert state["w"].is_deleted()            # the state was donated, as with the jitted function
  again, _ = compiled(got_state, x)          # reused for the next step without recompiling
  assert again["w"].shape == (8,)


def _rss_mib() -> float:
  with open("/proc/self/statm", encoding="ascii") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(compiling._libc() is None, reason="needs glibc's malloc_trim (Linux)")  # pylint: disable=protected-access
def test_release_host_memory_returns_freed_heap_pages():
  libc = compiling._libc()  # pylint: disable=protected-access
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  blocks = [libc.malloc(64 * 1024) for _ in range(3200)]       # 200 MiB in heap-sized blocks (below mmap's threshold)
  for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
  pin = libc.malloc(64 * 1024)                                 # keeps the heap's top in use, as a compiler's leftovers do
  for b in blocks:
    libc.free(b)
  before = _rss_mib()
  assert compiling.release_host_memory()
  after = _rss_mib()
  libc.free(pin)
  assert before - after > 100, (before, after)                 # most of the freed 200 MiB left the resident set
