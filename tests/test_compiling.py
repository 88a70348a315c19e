"""compiling: the compiled step equals the jitted one (donation included), the heap is trimmed, and the host buffers
of XLA's runs stay mapped between runs."""

import ctypes
import json
import os
import subprocess
import sys

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


# A fresh process (the setting must come before JAX starts its threads): the gradient of a small residual MLP (~290
# MiB of XLA temporaries), run 8 times: the fewest minor page faults of one run after the first two.
_FAULTS_SCRIPT = r"""
import json, resource, sys
from electra_jax.train import compiling
applied = compiling.keep_host_buffers_mapped() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp

def loss(w, x):
  h = x
  for _ in range(4):
    h = h + jnp.tanh(jnp.tanh(h @ w) @ w.T)
  return jnp.sum(h * h)

x, w = jnp.ones((4096, 1024), jnp.float32), jnp.full((1024, 2048), 1e-3, jnp.float32)
compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
temp_mib = compiled.memory_analysis().temp_size_in_bytes / 2**20
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  compiled(w, x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = min(faults[2:])   # the heap may still grow in the first runs (fragmentation), then runs reuse their block
again = compiling.keep_host_buffers_mapped()        # too late now: JAX is imported
print(json.dumps({"applied": applied, "again": again, "temp_mib": temp_mib, "faulted_mib": faults * 4096 / 2**20}))
"""


def _faults(mode: str, tunables: str = "") -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
  env["JAX_PLATFORMS"] = "cpu"
  if tunables:
    env["GLIBC_TUNABLES"] = tunables
  proc = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True, env=env,
                        check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(compiling._libc() is None, reason="needs glibc's mallopt (Linux)")  # pylint: disable=protected-access
def test_keep_host_buffers_mapped_stops_refaulting_the_temporaries_every_run():
  system, kept = _faults("system"), _faults("keep")
  assert kept["applied"] and not kept["again"] and not system["applied"]
  assert system["temp_mib"] > 100
  assert system["faulted_mib"] > 0.5 * system["temp_mib"], system     # glibc maps the block anew for every run
  assert kept["faulted_mib"] < 0.1 * kept["temp_mib"], kept           # kept mapped: the runs reuse it
  # The same settings given as the environment of a process about to start (what the benchmarks give peers).
  env = _faults("system", tunables=compiling.GLIBC_TUNABLES)
  assert env["faulted_mib"] < 0.1 * env["temp_mib"], env


def test_keep_host_buffers_mapped_is_refused_once_jax_is_imported():
  assert "jax" in sys.modules
  assert not compiling.keep_host_buffers_mapped()


@pytest.mark.parametrize("binary,args", [
    ("electra_jax.train.pretrain", "'--config=configs/pretrain.py:size=small', '--workdir=/tmp/unused'"),
    ("electra_jax.train.finetune", "'--config=configs/glue.py:task=mrpc,size=small', '--workdir=/tmp/unused'"),
    ("electra_jax.eval.evaluate", "'--config=configs/glue.py:task=mrpc', '--checkpoint=/tmp/c', '--workdir=/tmp/w'")])
def test_binaries_leave_jax_unimported_until_main(binary, args):
  # distributed.initialize_from_flags applies the host allocator first in main(), which only works before JAX starts
  # its threads: neither the binaries' modules nor the configs that absl loads while parsing the flags may import jax
  # (or libraries that start allocating threads, like TensorStore).
  code = (f"import os, sys; import {binary}; from absl import flags; "
          f"flags.FLAGS(['x', {args}]); "
          "print(sorted(m for m in ('jax', 'flax', 'orbax', 'tensorstore') if m in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "[]", proc.stdout
