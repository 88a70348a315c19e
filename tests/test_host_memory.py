"""compiling: the compiled step equals the jitted one (donation included), the heap is trimmed, and a single-device
CPU step reuses the host buffers of the previous run."""

import ctypes
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from electra_jax.runtime import compile as compiling
from electra_jax.runtime import host_memory


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


@pytest.mark.slow   # glibc / resident-set behaviour, not the model
@pytest.mark.skipif(host_memory._libc() is None, reason="needs glibc's malloc_trim (Linux)")  # pylint: disable=protected-access
def test_release_host_memory_returns_freed_heap_pages():
  libc = host_memory._libc()  # pylint: disable=protected-access
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  blocks = [libc.malloc(64 * 1024) for _ in range(3200)]       # 200 MiB in heap-sized blocks (below mmap's threshold)
  for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
  pin = libc.malloc(64 * 1024)                                 # keeps the heap's top in use, as a compiler's leftovers do
  for b in blocks:
    libc.free(b)
  before = _rss_mib()
  assert host_memory.release_host_memory()
  after = _rss_mib()
  libc.free(pin)
  assert before - after > 100, (before, after)                 # most of the freed 200 MiB left the resident set


# A fresh process with one CPU device (the setting must come before JAX's CPU backend starts): a training step of a
# small residual MLP (~300 MiB of XLA temporaries), run 12 times as a trainer runs steps: the fewest minor page faults
# of one run after the first two, and the resident set after each run. The step donates the weights, as the trainers'
# steps do (nothing else is allocated per run).
_FAULTS_SCRIPT = r"""
import json, os, resource, sys
import jax, jax.numpy as jnp
from electra_jax.runtime import compile as compiling, host_memory
applied = host_memory.keep_host_buffers_mapped() if sys.argv[1] == "keep" else False

def loss(w, x):
  h = x
  for _ in range(4):
    h = h + jnp.tanh(jnp.tanh(h @ w) @ w.T)
  return jnp.sum(h * h)

x, w = jnp.ones((4096, 1024), jnp.float32), jnp.full((1024, 2048), 1e-3, jnp.float32)
fn = jax.jit(lambda w, x: w - 1e-9 * jax.grad(loss)(w, x), donate_argnums=0)
step = compiling.compile_step(fn, w, x)
temp_mib = step.memory_analysis().temp_size_in_bytes / 2**20
faults, rss_mib = [], []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  w = step(w, x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  with open("/proc/self/statm") as f:
    rss_mib.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
again = host_memory.keep_host_buffers_mapped()   # idempotent once applied; refused once the backend runs async
print(json.dumps({"applied": applied, "again": again, "temp_mib": temp_mib,
                  "faulted_mib": min(faults[2:]) * 4096 / 2**20, "rss_mib": rss_mib}))
"""


def _run_fresh(code: str, *args: str, tunables: str = "") -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}   # one CPU device
  env["JAX_PLATFORMS"] = "cpu"
  if tunables:
    env["GLIBC_TUNABLES"] = tunables
  proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow   # glibc / resident-set behaviour, not the model
@pytest.mark.skipif(host_memory._libc() is None, reason="needs glibc's mallopt (Linux)")  # pylint: disable=protected-access
def test_keep_host_buffers_mapped_stops_refaulting_the_temporaries_every_run():
  system, kept = _run_fresh(_FAULTS_SCRIPT, "system"), _run_fresh(_FAULTS_SCRIPT, "keep")
  assert kept["applied"] and kept["again"] and not system["applied"] and not system["again"]
  assert system["temp_mib"] > 100
  assert system["faulted_mib"] > 0.5 * system["temp_mib"], system     # glibc maps the block anew for every run
  assert kept["faulted_mib"] < 0.1 * kept["temp_mib"], kept           # kept mapped: runs reuse it
  assert max(kept["rss_mib"]) <= kept["rss_mib"][0] + 0.5 * kept["temp_mib"], kept   # one block, not one per run


# The benchmarks give the peers the same glibc settings as GLIBC_TUNABLES: a block allocated and freed by the main
# thread (as PyTorch and JAX's inline CPU runtime do), touched page by page, faults only the first time with them.
_MALLOC_SCRIPT = r"""
import ctypes, json, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(256 << 20)
  ctypes.memset(block, 1, 256 << 20)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faulted_mib": [f * 4096 / 2**20 for f in faults]}))
"""


@pytest.mark.slow   # glibc / resident-set behaviour, not the model
@pytest.mark.skipif(host_memory._libc() is None, reason="needs glibc's malloc tunables (Linux)")  # pylint: disable=protected-access
def test_glibc_tunables_keep_a_main_thread_block_mapped():
  system = _run_fresh(_MALLOC_SCRIPT)["faulted_mib"]
  kept = _run_fresh(_MALLOC_SCRIPT, tunables=host_memory.GLIBC_TUNABLES)["faulted_mib"]
  assert min(system) > 200, system              # glibc's defaults: a fresh mmap every time
  assert max(kept[1:]) < 10, kept               # the block comes back from the heap, already mapped


def test_keep_host_buffers_mapped_is_refused_where_it_cannot_apply():
  # This process's CPU backend started with async dispatch and 8 devices (conftest): nothing is changed.
  assert jax.device_count() > 1
  assert not host_memory.keep_host_buffers_mapped()
