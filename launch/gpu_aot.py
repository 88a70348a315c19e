r"""What does the pretraining step launch on an NVIDIA GPU, and does it fit? Compiled ahead of time on a CPU host.

    python -m venv --system-site-packages V && V/bin/pip install -c third_party/constraints.txt -e ".[gpu-aot]"
    V/bin/python launch/gpu_aot.py --config=configs/pretrain.py:size=small --target=gpu:h200 \
        --config.batch_size=128 --config.model.scan_layers=false --config.model.attention_probs_dropout_prob=0
    V/bin/python launch/gpu_aot.py --config=configs/pretrain.py:size=base --target=gpu:h100 --config.batch_size=32 \
        --config.max_seq_length=512 --config.model.scan_layers=false
    XLA_FLAGS=--xla_dump_to=/tmp/dump V/bin/python launch/gpu_aot.py ...     # keeps the dump; reads it from there

(The `gpu-aot` extra is the compile-only set: JAX's CUDA plugin and PJRT library, ptxas and libdevice from the nvcc
wheel, and the cuDNN wheel, which JAX's cuDNN attention asks for its version before it compiles; no CUDA runtime, no
driver. Installed into the main environment it makes every JAX process probe for a GPU at start: give it a venv.)

It compiles the step exactly as `electra_jax.train.pretrain_lib.build_setup` builds it for the pretraining binary, on
the one compile-only device of `jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=...)`
described by XLA's target configuration of the card (launch/gpu_targets/*.txtpb), with abstract inputs (nothing is
allocated, no GPU is needed), and reports
  * memory per device from `compiled.memory_analysis()` (as launch/tpu_aot.py: arguments + outputs - aliased +
    temporaries + generated code) against the card's memory (the target's device_memory_size); a step that does not
    fit exits with status 2;
  * launches per step: one per line of XLA's thunk sequence (`*.thunk_sequence.txt` in the XLA dump: kernels, cuBLAS
    GEMMs, cuDNN calls, copies, memsets, collectives), the thunks nested in a while loop counted once per trip (its
    known trip count), by kind and, for kernels, by the fusion kind their names carry;
  * whether attention compiled to cuDNN's fused kernel (`electra_jax.runtime.compile.fused_kernels`).
Deviceless compilation has no autotuning (XLA takes its default GEMM and fusion choices) and no timings; the counts
are those of this jaxlib's XLA. Ends with one JSON line of the figures (`launches_per_step` among them).

XLA_FLAGS from the environment are kept: the tool appends --xla_dump_to=<a temporary folder, removed at the end> only
when they name no dump folder, and, unless they set them, the two flags that skip machine-code optimisation
(--xla_gpu_disable_gpuasm_optimizations, --xla_llvm_disable_expensive_passes: neither changes a thunk or a buffer;
together they are most of the compile time on a CPU host). The compiler options the step builder sets are kept too.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_DIR = os.path.join(_HERE, "gpu_targets")


def _dump_dir_from(xla_flags: str) -> str | None:
  found = re.findall(r"--xla_dump_to=(\S+)", xla_flags)
  return found[-1] if found else None


_OWN_DUMP: str | None = None
if __name__ == "__main__":
  # Before jax is imported: the host's default backend stays the CPU (the CUDA plugin would otherwise try to open a
  # GPU), and XLA dumps the compiled step's thunk sequence to a folder this tool reads.
  os.environ["JAX_PLATFORMS"] = "cpu"
  _flags = os.environ.get("XLA_FLAGS", "").split()
  if _dump_dir_from(" ".join(_flags)) is None:
    _OWN_DUMP = tempfile.mkdtemp(prefix="gpu_aot_dump_")
    # the thunk sequence and the optimized HLO only: no LLVM IR, no per-pass HLO
    _flags += [f"--xla_dump_to={_OWN_DUMP}", "--xla_gpu_dump_llvmir=false", "--xla_dump_hlo_pass_re=^$"]
  # Machine-code optimisation changes neither the thunks nor the buffers, and is most of the compile time here.
  _flags += [f"--{f}=true" for f in ("xla_gpu_disable_gpuasm_optimizations", "xla_llvm_disable_expensive_passes")
             if f not in " ".join(_flags)]
  os.environ["XLA_FLAGS"] = " ".join(_flags)

sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position
from ml_collections import config_flags  # noqa: E402  pylint: disable=wrong-import-position

import tpu_aot  # noqa: E402  pylint: disable=wrong-import-position  (launch/tpu_aot.py: compile, memory)

GIB = 2**30
AotError, DoesNotFitError = tpu_aot.AotError, tpu_aot.DoesNotFitError


@dataclasses.dataclass(frozen=True)
class Card:
  """An NVIDIA card: XLA's target configuration file (launch/gpu_targets/) and its datasheet dense bf16 peak."""
  name: str
  target_file: str
  peak_bf16_flops: float


# NVIDIA H100 / H200 datasheets: 989 TFLOP/s dense bf16 (SXM) for both.
CARDS = {
    "h100": Card("NVIDIA H100 SXM 80GB", "h100_sxm.txtpb", 989e12),
    "h200": Card("NVIDIA H200 141GB", "h200.txtpb", 989e12),
}

FLAGS = flags.FLAGS
if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Pretraining configuration (configs/pretrain.py:size=...).",
                                  lock_config=True)
  flags.DEFINE_string("target", None, f"gpu:<{'|'.join(CARDS)}>: the card to compile for.")
  flags.DEFINE_float("hbm_gib", 0.0, "Memory per device to check against (default: the card's).")
  flags.DEFINE_integer("vocab_size", 30522, "Vocabulary size (the BERT uncased vocab).")
  flags.DEFINE_string("json_out", "", "Also write the report as JSON to this file.")
  flags.mark_flags_as_required(["config", "target"])


# ------------------------------------------------------------------------------------------------ the device
def parse_target(target: str) -> Card:
  kind, _, name = target.partition(":")
  if kind != "gpu" or name not in CARDS:
    raise AotError(f"--target={target!r}: expected gpu:<{'|'.join(CARDS)}> (e.g. gpu:h200)")
  return CARDS[name]


def target_config(card: Card) -> str:
  with open(os.path.join(TARGET_DIR, card.target_file), encoding="utf-8") as f:
    return f.read()


def device_memory_gib(config_text: str) -> float:
  m = re.search(r"device_memory_size:\s*(\d+)", config_text)
  if not m:
    raise AotError("the target configuration has no gpu_device_info.device_memory_size")
  return int(m.group(1)) / GIB


def cuda_plugin_available() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:   # no jax_plugins package at all
    return False


def gpu_device(card: Card) -> Any:
  """The compile-only device of one `card` (no GPU opened)."""
  if not cuda_plugin_available():
    raise AotError("JAX's CUDA plugin is not installed, so GPU targets cannot be compiled for. In a venv of its own: "
                   "`pip install -c third_party/constraints.txt -e \".[gpu-aot]\"`")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    desc = topologies.get_topology_desc(platform="cuda", target_config=target_config(card), topology="1x1x1")
  except Exception as e:  # pylint: disable=broad-except
    raise AotError(f"the CUDA plugin rejected launch/gpu_targets/{card.target_file}: "
                   f"{tpu_aot._first_line(e)}") from None  # pylint: disable=protected-access
  return desc.devices[0]


# ------------------------------------------------------------------------------------------------ launches
_LINE = re.compile(r"^(\s*)\d+:\s+(k\w+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def module_name(hlo_text: str) -> str:
  m = re.match(r"HloModule (\S+?),", hlo_text)
  if not m:
    raise AotError("the compiled step's HLO names no module")
  return m.group(1)


def thunk_sequence_file(dump_dir: str, module: str) -> str:
  """The newest thunk sequence XLA dumped for HLO module `module`."""
  paths = glob.glob(os.path.join(dump_dir, f"module_*.{module}.thunk_sequence.txt"))
  if not paths:
    raise AotError(f"XLA dumped no thunk sequence of {module} into {dump_dir} (the XLA_FLAGS in effect: "
                   f"{os.environ.get('XLA_FLAGS', '')!r})")
  return max(paths, key=os.path.getmtime)


def trip_counts(hlo_text: str) -> list[int]:
  """The known trip counts of the while loops of an optimized HLO module, in order of appearance."""
  return [int(n) for n in re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', hlo_text)]


def count_launches(thunk_text: str, hlo_text: str = "") -> dict[str, Any]:
  """Launches of one run of a thunk sequence: every leaf thunk once, those inside a while loop once per trip.

  A kWhile/kConditional/kSequential line opens a nested block (deeper indentation); a while's trip count comes from
  the optimized HLO's known trip counts (1 when unknown, reported under `unknown_trip_counts`).
  """
  trips = iter(trip_counts(hlo_text))
  by_kind: collections.Counter = collections.Counter()
  by_fusion: collections.Counter = collections.Counter()
  stack: list[tuple[int, int]] = []   # (indentation of the opening line, multiplier)
  unknown = 0
  for raw in thunk_text.splitlines():
    m = _LINE.match(raw)
    if not m:
      continue
    indent, kind, rest = len(m.group(1)), m.group(2), m.group(3)
    while stack and indent <= stack[-1][0]:
      stack.pop()
    mult = stack[-1][1] if stack else 1
    if kind == "kWhile":
      n = next(trips, None)
      unknown += n is None
      stack.append((indent, mult * (n or 1)))
      continue
    if kind in ("kConditional", "kSequential", "kCommandBuffer"):
      stack.append((indent, mult))
      continue
    by_kind[kind] += mult
    if kind in ("kKernel", "kCustomKernel"):
      by_fusion[_fusion_kind(rest)] += mult
  return {"launches_per_step": sum(by_kind.values()), "by_kind": dict(by_kind.most_common()),
          "kernels_by_fusion": dict(by_fusion.most_common()), "unknown_trip_counts": unknown}


def _fusion_kind(name: str) -> str:
  """'loop_add_fusion_12 grid: ...' -> 'loop_add_fusion': XLA names a fusion after its emitter and root ops."""
  words = name.split()
  return re.sub(r"(_\d+)+$", "", words[0]) if words else "?"


# ------------------------------------------------------------------------------------------------ report
def run(config: Any, target: str, *, hbm_gib: float = 0.0, vocab_size: int = 30522,
        dump_dir: str | None = None) -> dict[str, Any]:
  """Compiles the step for `target` and reports (see the module docstring); raises DoesNotFitError (with .report)."""
  from electra_jax.runtime import compile as compile_lib  # pylint: disable=import-outside-toplevel
  card = parse_target(target)
  dump_dir = dump_dir or _dump_dir_from(os.environ.get("XLA_FLAGS", ""))
  if dump_dir is None:
    raise AotError("XLA_FLAGS names no --xla_dump_to folder (run this tool as a script: it adds one)")
  device = gpu_device(card)
  result = tpu_aot.compile_step(config, [device], vocab_size)
  hlo = result.compiled.as_text()
  module = module_name(hlo)
  with open(thunk_sequence_file(dump_dir, module), encoding="utf-8") as f:
    launches = count_launches(f.read(), hlo)
  kernels = compile_lib.fused_kernels(hlo)
  memory = tpu_aot.memory_per_device(result.compiled, result.setup.abstract_state)
  hbm = hbm_gib if hbm_gib > 0 else device_memory_gib(target_config(card))
  report = {
      "target": target, "device_kind": str(device.device_kind), "size": config.get("size"),
      "objective": config.objective, "batch_size": int(config.batch_size), "seq_len": int(config.max_seq_length),
      "dtype": config.get("dtype", None) or config.model.get("dtype"),
      "scan_layers": _runtime(config, "scan_layers"), "remat_policy": _runtime(config, "remat_policy"),
      "kernels_field": _runtime(config, "kernels"),
      "attention_probs_dropout_prob": float(config.model.attention_probs_dropout_prob),
      "module": module, "lower_s": result.lower_s, "compile_s": result.compile_s,
      "memory_per_device": memory, "hbm_gib": hbm, "fits": memory["peak_gib"] <= hbm,
      "hbm_used_fraction": memory["peak_gib"] / hbm,
      "kernels": kernels, "cudnn_attention": any("cudnn" in t for t in kernels["kernel_calls"])
      and kernels["fused_attention"], **launches,
  }
  if not report["fits"]:
    err = DoesNotFitError(f"does not fit: the step needs {memory['peak_gib']:.2f} GiB but a {card.name} has "
                          f"{hbm:g} GiB. Rematerialise (--config.model.remat_policy=dots or full) or lower the batch.")
    err.report = report
    raise err
  return report


def _runtime(config: Any, field: str) -> Any:
  """A runtime model field at config.model.<field>, else config.<field> (configs moving to the one path)."""
  if field in config.get("model", {}):
    return config.model[field]
  return config.get(field)


def format_report(r: dict[str, Any]) -> str:
  m = r["memory_per_device"]
  calls = r["kernels"]["kernel_calls"]
  lines = [
      f"ELECTRA-{r['size']} ({r['objective']}) on {r['target']} ({r['device_kind']}, compile-only): batch "
      f"{r['batch_size']} x {r['seq_len']}, {r['dtype']} compute, scan_layers={r['scan_layers']}, "
      f"remat={r['remat_policy']}, kernels={r['kernels_field']}, attention dropout {r['attention_probs_dropout_prob']}",
      f"  compiled in {r['lower_s']:.1f} s (lower) + {r['compile_s']:.1f} s (compile), module {r['module']}",
      "  memory per device (XLA's buffer assignment; arguments + outputs - aliased + temporaries + code):",
      *tpu_aot.memory_table(m, r["hbm_gib"]),
      "  cuDNN fused attention: " + (f"yes ({', '.join(f'{t} x{c}' for t, c in sorted(calls.items()))})"
                                     if r["cudnn_attention"] else "no (attention compiled to XLA's own ops)"),
      f"  launches per step: {r['launches_per_step']:,} ("
      + ", ".join(f"{k[1:]} {v:,}" for k, v in r["by_kind"].items()) + ")"
      + (f"; {r['unknown_trip_counts']} loops of unknown trip count counted once" if r["unknown_trip_counts"] else ""),
      "  kernels by fusion kind: " + ", ".join(f"{k} {v:,}" for k, v in list(r["kernels_by_fusion"].items())[:12]),
  ]
  return "\n".join(lines)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  status = 0
  try:
    report = run(FLAGS.config, FLAGS.target, hbm_gib=FLAGS.hbm_gib, vocab_size=FLAGS.vocab_size)
  except DoesNotFitError as e:
    status = 2
    report = getattr(e, "report", None) or {"target": FLAGS.target, "fits": False, "error": str(e)}
    if "launches_per_step" in report:
      print(format_report(report))
    print(f"gpu_aot: error: {e}", file=sys.stderr)
  except AotError as e:
    print(f"gpu_aot: error: {e}", file=sys.stderr)
    sys.exit(1)
  else:
    print(format_report(report))
  finally:
    if _OWN_DUMP:
      shutil.rmtree(_OWN_DUMP, ignore_errors=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1, sort_keys=True)
  print(json.dumps(report, sort_keys=True))
  sys.exit(status)


if __name__ == "__main__":
  app.run(main)
