r"""Will the pretraining step fit a Cloud TPU pod, and how long will it take? Compiled ahead of time on a CPU host.

    pip install -c third_party/constraints.txt -e ".[tpu-aot]"   # libtpu: compile-only topologies, no TPU needed
    python launch/tpu_aot.py --config=configs/pretrain.py:size=large --topology=v5e:16x16      # the preset: 8.7 GiB
    python launch/tpu_aot.py --config=configs/pretrain.py:size=base --topology=v5e:4x4 --num_slices=2
    python launch/tpu_aot.py --config=configs/pretrain.py:size=base --topology=v4:4x4x4 --mfu=0.4
    python launch/tpu_aot.py --config=configs/pretrain.py:size=large --topology=v5p:4x4x8 \
        --config.mesh.data=-1 --config.mesh.fsdp=1 --train_steps=400000,1750000       # data-parallel instead
    python launch/tpu_aot.py --config=configs/pretrain.py:size=tiny --topology=cpu:8    # without libtpu

(libtpu in the environment makes every JAX process on the machine probe for a TPU at start: on a shared host, install
it into a venv of its own, `python -m venv --system-site-packages V && V/bin/pip install libtpu==0.0.42.1`, and run
this tool with V/bin/python.)

It builds the step exactly as `electra_jax.train.pretrain_lib.build_setup` does for the pretraining binary (model,
optimizer, shardings from config.mesh and config.sharding_rules) on a mesh of the topology's compile-only devices
(--num_slices of them joined by the data-centre network: the mesh's data axis spans the slices), lowers it with
abstract inputs (nothing is allocated) and compiles it with libtpu's compiler. Then it reports
  * per-chip memory from `compiled.memory_analysis()`: arguments + outputs - aliased (donated) + temporaries +
    generated code, against the chip's HBM; the arguments split into this chip's shards of the parameters and of the
    optimizer state (sizes from their shardings) and the rest (batch, step, key); temporaries are the activations
    kept for the backward pass, gradients, gathered FSDP shards and collectives' buffers. A step that does not fit (by
    that sum, or because the TPU compiler itself refuses it with RESOURCE_EXHAUSTED) exits with status 2 and a
    message saying so and what to change;
  * whether attention compiled to a fused kernel, and which: the custom calls to hand-written kernels (Mosaic, i.e.
    Pallas, on a TPU) that name attention in the optimized HLO, by kernel name (`electra_jax.runtime.compile.
    fused_kernels`; on TPU, `kernels=auto` with attention dropout 0 gives JAX's splash attention: splash_mha_fwd_*,
    splash_mha_dq_*, splash_mha_dkv_*);
  * analytical model FLOPs per chip per step (electra_jax.train.flops: generator and discriminator counted separately,
    bidirectional attention, backward = 2 x forward) and the paper's convention (backward = forward) for reference;
  * days to train for the paper's step counts (base 766k; large 400k and 1.75M; or --train_steps) at --mfu of the
    chips' datasheet peak bf16 FLOP/s (table CHIPS below);
  * XLA's own cost_analysis FLOPs next to the analytical figure, as a ratio only: XLA counts a while/scan body once,
    so with scan_layers its total is a fraction of the real one; it feeds no estimate.
Topologies: `<v4|v5e|v5p|v6e>:<AxB[xC]>` as libtpu names them (v4 and v5p in megacore mode: one device per chip), or
`cpu:N` (N simulated CPU devices: memory and FLOPs per device; no HBM check unless --hbm_gib is given).
Ends with one JSON line of the figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Any

# Before jax is imported: the compile-only TPU topology needs no TPU backend (and libtpu must not try to open one),
# and a cpu:N topology needs N host devices.
_TOPOLOGY_ARG = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--topology=")), "")
if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # compile-only: no TPU is opened, other users may run
  if _TOPOLOGY_ARG.startswith("cpu:"):
    os.environ["XLA_FLAGS"] = " ".join(
        [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
        + [f"--xla_force_host_platform_device_count={_TOPOLOGY_ARG.split(':', 1)[1]}"])

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position
from ml_collections import config_flags  # noqa: E402  pylint: disable=wrong-import-position

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Datasheet figures of one TPU chip (Google Cloud TPU documentation, system architecture pages)."""
  name: str
  hbm_gib: float
  peak_bf16_flops: float
  topology_kwargs: tuple[tuple[str, Any], ...] = ()


CHIPS = {
    "v4": Chip("TPU v4", 32, 275e12, (("chip_config_name", "megacore"),)),
    "v5e": Chip("TPU v5e", 16, 197e12),
    "v5p": Chip("TPU v5p", 95, 459e12, (("chip_config_name", "megacore"),)),
    "v6e": Chip("TPU v6e (Trillium)", 32, 918e12),
}
# The paper's step counts (Table 6): small 1M, base 766k, large 400k (ELECTRA-400K) and 1.75M (ELECTRA-1.75M).
PAPER_STEPS = {"small": (1_000_000,), "base": (766_000,), "large": (400_000, 1_750_000)}
SPECIAL_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}   # BERT uncased vocab
_TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


class AotError(RuntimeError):
  """A topology, configuration or environment that the tool cannot compile for (the message says what and how)."""


class DoesNotFitError(AotError):
  """The compiled step needs more memory per chip than the chip has."""


FLAGS = flags.FLAGS
if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Pretraining configuration (configs/pretrain.py:size=...).",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:16x16, v4:4x4x4, v5p:4x4x8, v6e:8x8; or cpu:N.")
  flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined by the data-centre network (multislice); the "
                       "mesh's data axis spans them (config.mesh.data=0: one per slice).")
  flags.DEFINE_float("mfu", 0.4, "Model FLOP utilisation assumed for the time-to-train estimate.")
  flags.DEFINE_list("train_steps", [], "Step counts to estimate (default: the paper's for config.size, else "
                    "config.num_train_steps).")
  flags.DEFINE_float("hbm_gib", 0.0, "Memory per device to check against (default: the chip's HBM; none for cpu:N).")
  flags.DEFINE_integer("vocab_size", 30522, "Vocabulary size (the BERT uncased vocab).")
  flags.DEFINE_string("json_out", "", "Also write the report as JSON to this file.")
  flags.mark_flags_as_required(["config", "topology"])


# ------------------------------------------------------------------------------------------------ devices
def parse_topology(topology: str) -> tuple[str, str]:
  """('v5e', '16x16') or ('cpu', '8'); raises AotError naming the accepted forms."""
  if topology.startswith("cpu:"):
    n = topology.split(":", 1)[1]
    if not n.isdigit() or int(n) < 1:
      raise AotError(f"--topology={topology}: cpu:N needs a positive device count")
    return "cpu", n
  m = _TOPOLOGY_RE.match(topology)
  if not m:
    raise AotError(f"--topology={topology!r}: expected <{'|'.join(CHIPS)}>:<AxB[xC]> (e.g. v5e:16x16, v4:4x4x4) "
                   "or cpu:N")
  return m.group(1), m.group(2)


def libtpu_available() -> bool:
  path = os.environ.get("TPU_LIBRARY_PATH")
  if path and os.path.isfile(path):
    return True
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """The topology's devices (of `num_slices` such slices): compile-only TPU devices from libtpu, or this host's CPU
  devices for cpu:N."""
  import jax  # pylint: disable=import-outside-toplevel
  kind, shape = parse_topology(topology)
  if num_slices < 1:
    raise AotError(f"--num_slices={num_slices}: must be at least 1")
  if kind == "cpu":
    if num_slices != 1:
      raise AotError("--num_slices needs a TPU topology (cpu:N is one host)")
    devices = jax.devices("cpu")
    if len(devices) != int(shape):
      raise AotError(f"--topology={topology}: {len(devices)} CPU devices exist; run this tool as a script (it sets "
                     f"--xla_force_host_platform_device_count={shape} before jax starts)")
    return devices
  if not libtpu_available():
    raise AotError("libtpu is not installed, so TPU topologies cannot be compiled for. Install it with "
                   "`pip install -c third_party/constraints.txt -e \".[tpu-aot]\"` (libtpu==0.0.42.1 goes with jax "
                   "0.10.2) or point TPU_LIBRARY_PATH at a libtpu.so; or use --topology=cpu:N")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    kwargs = dict(CHIPS[kind].topology_kwargs, **({"num_slices": num_slices} if num_slices > 1 else {}))
    desc = topologies.get_topology_desc(f"{kind}:{shape}", platform="tpu", **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise AotError(f"libtpu rejected topology {topology!r}: {_first_line(e)}") from None
  return list(desc.devices)


# ------------------------------------------------------------------------------------------------ compile
@dataclasses.dataclass
class Compiled:
  setup: Any
  compiled: Any
  lower_s: float
  compile_s: float


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _batch_axes(batch_sharding) -> tuple[str, ...]:
  spec = batch_sharding.spec[0] if len(batch_sharding.spec) else None
  return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def compile_step(config: Any, devices: list, vocab_size: int = 30522) -> Compiled:
  """Lowers and compiles pretrain_lib's train step for `devices` with abstract (unallocated) inputs."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  try:
    mesh = pretrain_lib.build_mesh(config, devices)
  except sharding.ShardingError as e:
    raise AotError(f"config.mesh {dict(config.mesh)} on {len(devices)} devices: {e}") from None
  batch_size, seq_len = int(config.batch_size), int(config.max_seq_length)
  try:
    setup = pretrain_lib.build_setup(config, mesh, vocab_size=vocab_size, ids=SPECIAL_IDS)
  except (ValueError, sharding.ShardingError) as e:
    raise AotError(f"configuration: {e}") from None
  shards = math.prod(mesh.shape[a] for a in _batch_axes(setup.batch_sharding))
  if batch_size % shards:
    raise AotError(f"config.batch_size={batch_size} is not divisible by the {shards} ways the batch is split "
                   f"(mesh {dict(mesh.shape)})")
  batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=setup.batch_sharding)
           for k in ("input_ids", "input_mask", "segment_ids")}
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
  with jax.set_mesh(mesh), sharding.use_rules(setup.rules):
    t0 = time.perf_counter()
    lowered = setup.train_step.lower(setup.abstract_state, batch, key)
    lower_s = time.perf_counter() - t0
    try:
      compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" in str(e):   # the TPU compiler refuses a program larger than HBM
        raise DoesNotFitError(f"does not fit: {_first_line(e)}. Shard more (--config.mesh.fsdp=N), rematerialise "
                              "(--config.model.remat_policy=dots or full) or lower the per-device batch.") from None
      raise
    compile_s = time.perf_counter() - t0 - lower_s
  return Compiled(setup, compiled, lower_s, compile_s)


# ------------------------------------------------------------------------------------------------ report
def sharded_gib(tree) -> float:
  """GiB that one device holds of a tree of ShapeDtypeStructs (or arrays) carrying their sharding: the largest shard."""
  import jax  # pylint: disable=import-outside-toplevel
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total / GIB


def memory_per_device(compiled, abstract_state: dict[str, Any] | None = None) -> dict[str, float]:
  """XLA's buffer assignment of one device (GiB): peak = arguments + outputs - aliased + temporaries + code.

  With the step's abstract state, the arguments are split into parameters and optimizer state (their per-device shard
  sizes, from their shardings) and the rest (the batch, the step, the key); temporaries are what the step makes and
  frees within itself: activations kept for the backward pass, gradients, gathered FSDP shards, collectives' buffers.
  """
  m = compiled.memory_analysis()
  if m is None:
    raise AotError("the compiler returned no memory analysis for this executable")
  out = {"arguments_gib": m.argument_size_in_bytes / GIB, "outputs_gib": m.output_size_in_bytes / GIB,
         "aliased_gib": m.alias_size_in_bytes / GIB, "temporaries_gib": m.temp_size_in_bytes / GIB,
         "generated_code_gib": m.generated_code_size_in_bytes / GIB}
  out["peak_gib"] = (out["arguments_gib"] + out["outputs_gib"] - out["aliased_gib"] + out["temporaries_gib"]
                     + out["generated_code_gib"])
  if abstract_state is not None:
    out["params_gib"] = sharded_gib(abstract_state["params"])
    out["opt_state_gib"] = sharded_gib(abstract_state["opt_state"])
    out["other_arguments_gib"] = out["arguments_gib"] - out["params_gib"] - out["opt_state_gib"]
    # Outputs that reuse no donated buffer (the new state aliases the old one; metrics are small).
    out["unaliased_outputs_gib"] = out["outputs_gib"] - out["aliased_gib"]
  return out


def xla_flops(compiled) -> float | None:
  """XLA's cost_analysis FLOPs of one device (counts a loop body once), or None."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def steps_to_estimate(config: Any, requested: list[str]) -> list[int]:
  if requested:
    try:
      return [int(float(s)) for s in requested]
    except ValueError:
      raise AotError(f"--train_steps={','.join(requested)}: expected integers, e.g. 400000,1750000") from None
  return list(PAPER_STEPS.get(config.get("size", ""), (int(config.num_train_steps),)))


def _num_params(abstract_params) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def build_report(config: Any, topology: str, result: Compiled, *, mfu: float, train_steps: list[int],
                 hbm_gib: float | None) -> dict[str, Any]:
  """The figures of a compiled step (see the module docstring)."""
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.runtime import compile as compile_lib  # pylint: disable=import-outside-toplevel
  from electra_jax.train import flops  # pylint: disable=import-outside-toplevel
  setup = result.setup
  kind, _ = parse_topology(topology)
  n = setup.mesh.size
  batch_size, seq_len = int(config.batch_size), int(config.max_seq_length)
  flops_step = flops.train_flops_per_step(setup.disc_config, setup.gen_config, batch_size=batch_size,
                                          seq_len=seq_len, num_predictions=setup.step_config.max_predictions,
                                          objective=config.objective)
  disc = flops.Dims.from_config(setup.disc_config, seq_len)
  gen = flops.Dims.from_config(setup.gen_config, seq_len) if setup.gen_config is not None else None
  paper_step = flops.paper_train_flops(disc if gen is not None else None, gen if gen is not None else disc,
                                       batch_size, 1)
  memory = memory_per_device(result.compiled, setup.abstract_state)
  kernels = compile_lib.fused_kernels(result.compiled.as_text())
  chip = CHIPS.get(kind)
  peak = chip.peak_bf16_flops if chip else None
  xla = xla_flops(result.compiled)
  report = {
      "topology": topology, "num_slices": sharding.num_slices(list(setup.mesh.devices.flat)), "devices": n,
      "device_kind": str(setup.mesh.devices.flat[0].device_kind),
      "mesh": {k: int(v) for k, v in setup.mesh.shape.items()}, "size": config.get("size"),
      "objective": config.objective, "batch_size": batch_size, "seq_len": seq_len,
      "per_device_batch": batch_size / math.prod(setup.mesh.shape[a] for a in _batch_axes(setup.batch_sharding)),
      "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
      "scan_layers": bool(config.model.scan_layers), "remat_policy": config.model.remat_policy,
      "num_params": _num_params(setup.abstract_state["params"]),
      "lower_s": result.lower_s, "compile_s": result.compile_s, "memory_per_device": memory,
      "kernels": kernels, "fused_attention": kernels["fused_attention"],
      "attention_kernels": kernels["attention_kernels"],
      "hbm_gib": hbm_gib, "fits": None if hbm_gib is None else memory["peak_gib"] <= hbm_gib,
      "hbm_used_fraction": None if hbm_gib is None else memory["peak_gib"] / hbm_gib,
      "flops_per_step": flops_step, "flops_per_device_per_step": flops_step / n, "paper_flops_per_step": paper_step,
      "xla_cost_flops_per_device": xla, "xla_vs_analytical": None if xla is None else xla / (flops_step / n),
      "chip": chip.name if chip else None, "peak_bf16_flops_per_chip": peak, "mfu": mfu, "estimates": [],
  }
  if peak:
    step_s = flops_step / (n * peak * mfu)
    report["step_seconds_at_mfu"] = step_s
    for steps in train_steps:
      report["estimates"].append({"train_steps": steps, "days": steps * step_s / 86400,
                                  "chip_hours": steps * step_s * n / 3600, "total_flops": steps * flops_step,
                                  "paper_total_flops": steps * paper_step})
  return report


def memory_table(m: dict[str, float], hbm_gib: float | None) -> list[str]:
  """Per-chip memory as rows: parameters, optimizer state, other inputs, activations and temporaries, total."""
  rows = []
  if "params_gib" in m:
    rows += [("parameters (this chip's shards)", m["params_gib"]),
             ("optimizer state (this chip's shards)", m["opt_state_gib"]),
             ("batch, step, key", m["other_arguments_gib"]),
             ("activations, gradients, temporaries", m["temporaries_gib"]),
             ("outputs not aliased to inputs", m["unaliased_outputs_gib"]),
             ("generated code", m["generated_code_gib"])]
  else:
    rows += [("arguments", m["arguments_gib"]), ("outputs - aliased", m["outputs_gib"] - m["aliased_gib"]),
             ("temporaries", m["temporaries_gib"]), ("generated code", m["generated_code_gib"])]
  total = f"{m['peak_gib']:8.3f} GiB" + (f"  ({100 * m['peak_gib'] / hbm_gib:.0f}% of {hbm_gib:g} GiB HBM)"
                                         if hbm_gib else "")
  width = max(len(name) for name, _ in rows)
  return ([f"    {name:<{width}}  {value:8.3f} GiB" for name, value in rows]
          + [f"    {'total':<{width}}  {total}"])


def format_report(r: dict[str, Any]) -> str:
  m = r["memory_per_device"]
  k = r["kernels"]
  slices = f" x {r['num_slices']} slices" if r.get("num_slices", 1) > 1 else ""
  lines = [
      f"ELECTRA-{r['size']} ({r['objective']}) on {r['topology']}{slices}: {r['devices']} x {r['device_kind']}, mesh "
      f"{r['mesh']}, batch {r['batch_size']} x {r['seq_len']} ({r['per_device_batch']:g} sequences per batch shard), "
      f"{r['num_params'] / 1e6:.1f}M parameters, {r['dtype']} compute / {r['param_dtype']} parameters, "
      f"scan_layers={r['scan_layers']}, remat={r['remat_policy']}",
      f"  compiled in {r['lower_s']:.1f} s (lower) + {r['compile_s']:.1f} s (compile)",
      f"  memory per {'device' if r['topology'].startswith('cpu:') else 'chip'} (XLA's buffer assignment; arguments + "
      "outputs - aliased + temporaries + code):",
      *memory_table(m, r["hbm_gib"]),
      "  fused attention kernel: " + (f"yes ({k['attention_kernel_calls']} calls: "
                                      f"{', '.join(f'{t} x{c}' for t, c in sorted(k['attention_kernels'].items()))}; "
                                      f"custom calls: "
                                      f"{', '.join(f'{t} x{c}' for t, c in sorted(k['kernel_calls'].items()))})"
                                      if k["fused_attention"] else
                                      "no (attention compiled to XLA's own ops; no Mosaic/cuDNN/Triton kernel"
                                      + (f"; other kernels: {k['kernel_calls']})" if k["kernel_calls"] else ")")),
      f"  model FLOPs per step {r['flops_per_step']:.3e} (analytical, backward = 2 x forward) = "
      f"{r['flops_per_device_per_step']:.3e} per device; paper convention (backward = forward): "
      f"{r['paper_flops_per_step']:.3e}",
  ]
  if r["xla_cost_flops_per_device"] is not None:
    lines.append(f"  XLA cost_analysis: {r['xla_cost_flops_per_device']:.3e} FLOPs per device = "
                 f"{r['xla_vs_analytical']:.2f} x analytical (not used: XLA counts a loop/scan body once)")
  if r.get("step_seconds_at_mfu"):
    lines.append(f"  at {100 * r['mfu']:.0f}% MFU of {r['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16 per "
                 f"chip ({r['chip']}): {r['step_seconds_at_mfu']:.3f} s per step")
    for e in r["estimates"]:
      lines.append(f"    {e['train_steps']:>9,} steps: {e['days']:.2f} days ({e['chip_hours']:,.0f} chip-hours; "
                   f"{e['total_flops']:.2e} model FLOPs, paper convention {e['paper_total_flops']:.2e})")
  return "\n".join(lines)


def run(config: Any, topology: str, *, mfu: float = 0.4, train_steps: list[str] | None = None,
        hbm_gib: float = 0.0, vocab_size: int = 30522, num_slices: int = 1) -> dict[str, Any]:
  """Compiles and reports; raises DoesNotFitError (with .report when it compiled) when the step does not fit."""
  kind, _ = parse_topology(topology)
  if not 0 < mfu <= 1:
    raise AotError(f"--mfu={mfu}: must be in (0, 1]")
  steps = steps_to_estimate(config, train_steps or [])
  devices = topology_devices(topology, num_slices)
  result = compile_step(config, devices, vocab_size)
  hbm = hbm_gib if hbm_gib > 0 else (CHIPS[kind].hbm_gib if kind in CHIPS else None)
  report = build_report(config, topology, result, mfu=mfu, train_steps=steps, hbm_gib=hbm)
  if report["fits"] is False:
    err = DoesNotFitError(
        f"does not fit: the step needs {report['memory_per_device']['peak_gib']:.2f} GiB per device on {topology} "
        f"but a {report['chip'] or 'device'} has {hbm:g} GiB. Shard more (--config.mesh.fsdp=N), rematerialise "
        f"(--config.model.remat_policy=dots or full) or lower the per-device batch.")
    err.report = report
    raise err
  return report


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  status = 0
  try:
    report = run(FLAGS.config, FLAGS.topology, mfu=FLAGS.mfu, train_steps=FLAGS.train_steps, hbm_gib=FLAGS.hbm_gib,
                 vocab_size=FLAGS.vocab_size, num_slices=FLAGS.num_slices)
  except DoesNotFitError as e:
    status = 2
    report = getattr(e, "report", None)
    if report is not None:
      print(format_report(report))
    else:
      report = {"topology": FLAGS.topology, "size": FLAGS.config.get("size"), "fits": False, "error": str(e)}
    print(f"tpu_aot: error: {e}", file=sys.stderr)
  except AotError as e:
    print(f"tpu_aot: error: {e}", file=sys.stderr)
    sys.exit(1)
  else:
    print(format_report(report))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1, sort_keys=True)
  print(json.dumps(report, sort_keys=True))
  sys.exit(status)


if __name__ == "__main__":
  app.run(main)
