r"""Compiles the real pretraining step ahead of time, without the target hardware, to check a config before renting it.

    # a Cloud TPU topology (needs libtpu installed on this host, e.g. `pip install "jax[tpu]"`; no TPU needed):
    python launch/aot_compile.py --config=configs/pretrain.py:size=large --topology=v4:4x4x4 --config.mesh.fsdp=16
    # N simulated CPU devices (checks the mesh, the sharding rules and the per-device state size anywhere):
    python launch/aot_compile.py --config=configs/pretrain.py:size=base --cpu_devices=8 --config.mesh.fsdp=4

Builds the same step as the binary (electra_jax.train.pretrain_lib.build_setup) on a mesh of the target's devices,
lowers and compiles it for abstract inputs, and prints one JSON line: the mesh, compile time, XLA's per-device
memory analysis (arguments = parameters + optimizer state + batch, temporaries, outputs) and the model FLOPs per step.
A sharding rule that does not fit, a mesh that does not match the device count, or an out-of-memory compile fails here
instead of on the pod. The vocab is not read: --vocab_size (default 30522) and BERT's special-token ids are used.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _preparse_cpu_devices(argv: list[str]) -> None:
  """--cpu_devices must take effect before JAX starts."""
  for i, arg in enumerate(argv):
    value = arg.split("=", 1)[1] if arg.startswith("--cpu_devices=") else (
        argv[i + 1] if arg == "--cpu_devices" and i + 1 < len(argv) else None)
    if value:
      os.environ["JAX_PLATFORMS"] = "cpu"
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={int(value)}").strip()


_preparse_cpu_devices(sys.argv)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  pylint: disable=wrong-import-position
from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position
from ml_collections import config_flags  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Pretraining configuration (configs/pretrain.py:size=...).",
                                lock_config=True)
flags.DEFINE_string("topology", None, "TPU topology, e.g. v4:2x2x2, v5e:4x4 (needs libtpu).")
flags.DEFINE_integer("cpu_devices", None, "Compile for this many simulated CPU devices instead.")
flags.DEFINE_integer("vocab_size", 30522, "Vocabulary size of the model.")
flags.mark_flags_as_required(["config"])

BERT_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def target_devices(topology: str | None) -> list:
  if topology:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    try:
      return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # pylint: disable=broad-except
      raise SystemExit(f"aot_compile: cannot describe TPU topology {topology!r} ({e}); install libtpu "
                       f"(pip install 'jax[tpu]') or use --cpu_devices") from None
  return jax.devices()


def compile_step(config, devices, vocab_size: int) -> dict:
  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding
  from electra_jax.train import flops, pretrain_lib
  mesh = pretrain_lib.build_mesh(config, devices)
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=vocab_size, ids=BERT_IDS)
  shape = (int(config.batch_size), int(config.max_seq_length))
  batch = {k: jax.ShapeDtypeStruct(shape, jax.numpy.int32, sharding=setup.batch_sharding)
           for k in ("input_ids", "input_mask", "segment_ids")}
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
  start = time.perf_counter()
  with jax.set_mesh(mesh), sharding.use_rules(setup.rules):
    compiled = setup.train_step.lower(setup.abstract_state, batch, key).compile()
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  memory = {name: int(getattr(mem, f"{name}_size_in_bytes", 0) or 0)
            for name in ("argument", "output", "temp", "generated_code")} if mem is not None else {}
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract_state))
  return {
      "devices": len(devices), "device_kind": str(getattr(devices[0], "device_kind", "?")),
      "mesh": {k: int(v) for k, v in mesh.shape.items()}, "compile_seconds": round(seconds, 2),
      "memory_per_device_bytes": memory, "train_state_bytes_total": int(state_bytes),
      "model_flops_per_step": flops.train_flops_per_step(
          setup.disc_config, setup.gen_config, batch_size=shape[0], seq_len=shape[1],
          num_predictions=setup.step_config.max_predictions, objective=config.objective),
  }


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.topology and FLAGS.cpu_devices:
    raise app.UsageError("give --topology or --cpu_devices, not both")
  try:
    result = compile_step(FLAGS.config, target_devices(FLAGS.topology), FLAGS.vocab_size)
  except ValueError as e:
    raise SystemExit(f"aot_compile: {e}") from None
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
