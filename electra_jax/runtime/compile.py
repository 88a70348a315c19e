"""Steps compiled ahead of their first call, the compiler's host memory released before they run (host_memory.py).

    step = compile.compile_step(jax.jit(train_step, donate_argnums=0), state, batch, rng, name="pretraining step")
    state, metrics = step(state, batch, rng)     # the same call as the jitted function, no recompilation

Compiling first lets the compiler's host memory go back to the OS before the step runs; `memory_mib` reports XLA's
buffer estimate of the compiled step (also what launch/tpu_aot.py prints per chip), `fused_kernels` the hand-written
kernels (Mosaic, cuDNN, Triton) its optimized HLO calls, and whether one of them is attention.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from electra_jax.runtime import host_memory


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


# A custom call to a hand-written kernel: Mosaic (Pallas on TPU, Mosaic GPU), cuDNN's fused attention, Triton (Pallas
# on GPU). XLA's own library calls (cuBLAS GEMMs, collectives) do not count.
_KERNEL_TARGET = re.compile(r"tpu_custom_call|mosaic|cudnn\$fmha|triton", re.IGNORECASE)
_ATTENTION = re.compile(r"attention|flash|fmha|splash", re.IGNORECASE)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w$-]+?)(?:\.\d+)?\s+=")


def _kernel_name(line: str, target: str) -> str:
  """A kernel call's name: the name its backend config gives, else (a Mosaic call: JAX names the instruction after
  the Pallas kernel, e.g. splash_mha_fwd_segmented_residuals) the instruction's, else the custom-call target."""
  named = re.search(r'"name":\s*"([^"]+)"', line)
  if named:
    return named.group(1)
  instruction = _INSTRUCTION.match(line)
  if instruction and instruction.group(1) != "custom-call" and "custom_call" in target:
    return instruction.group(1)
  return target


def fused_kernels(hlo_text: str) -> dict[str, Any]:
  """The hand-written kernels an optimized HLO module (`compiled.as_text()`) calls: {target: count}, how many of the
  calls compute attention (the instruction's name, metadata or backend config names attention, flash, splash or
  fmha) and those calls by kernel name ({name: count}, e.g. splash_mha_fwd_segmented_residuals, __cudnn$fmhaSoftmax)."""
  counts: dict[str, int] = {}
  attention: dict[str, int] = {}
  for line in hlo_text.splitlines():
    if " custom-call(" not in line:
      continue
    target = re.search(r'custom_call_target="([^"]*)"', line)
    if not target or not _KERNEL_TARGET.search(target.group(1)):
      continue
    counts[target.group(1)] = counts.get(target.group(1), 0) + 1
    if _ATTENTION.search(line):
      name = _kernel_name(line, target.group(1))
      attention[name] = attention.get(name, 0) + 1
  total = sum(attention.values())
  return {"fused_attention": total > 0, "attention_kernel_calls": total, "attention_kernels": attention,
          "kernel_calls": counts}


def ready_step(compiled: Any) -> Any:
  """A freshly compiled step made ready to run: the compiler's host memory released (CPU backends)."""
  host_memory.release_host_memory()
  return compiled


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


class LazyStep:
  """A jitted step compiled by `compile_step` at its first call (with that call's arguments), then reused: one
  compilation for every later call with the same shapes, e.g. every trial of a fine-tuning run."""

  def __init__(self, jitted: Any, name: str = "step"):
    self.jitted, self.name = jitted, name
    self._compiled = None

  def __call__(self, *args: Any) -> Any:
    if self._compiled is None:
      self._compiled = compile_step(self.jitted, *args, name=self.name)
    return self._compiled(*args)
