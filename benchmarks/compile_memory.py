"""Compile time and peak memory of our pretraining step: layers as jax.lax.scan against an unrolled loop, 12 and 24 layers.

    python benchmarks/compile_memory.py                                  # small width, 12 and 24 layers, batch 16 x 128
    python benchmarks/compile_memory.py --layers=12,24 --size=small --steps=2
    python benchmarks/compile_memory.py --layers=2 --size=tiny --steps=1   # smoke test

Each (layers, scan) pair runs in a fresh process (benchmarks/workers/ours.py): it builds the real pretraining step,
lowers and compiles it (compile_s = lower + compile), runs --steps steps, and reports
  * XLA's memory analysis of the compiled step (arguments + outputs - aliased + temporaries): the buffers the step
    itself needs, independent of the allocator;
  * the process's RSS high-water mark after compiling and running: everything, including the compiler's own memory
    and the Python/JAX runtime;
  * the median step time of the --steps steps (a rough figure: few steps, no peers).
Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list("layers", ["12", "24"], "Layer counts (discriminator and generator alike).")
flags.DEFINE_enum("size", "small", sorted(common.SIZES), "Model width (hidden, embedding, generator fraction).")
flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_integer("steps", 2, "Steps run after compiling (0: compile only).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("timeout", 3600, "Seconds allowed to each worker.")


def main(argv) -> None:
  del argv
  rows, results = [], []
  with tempfile.TemporaryDirectory() as tmp:
    batch_path = os.path.join(tmp, "batch.npz")
    common.save_batch(batch_path, common.make_batch(FLAGS.batch_size, FLAGS.seq_len))
    for layers in [int(x) for x in FLAGS.layers]:
      for scan in (True, False):
        cmd = [sys.executable, str(common.WORKERS_DIR / "ours.py"), "--task=pretrain", f"--batch={batch_path}",
               f"--size={FLAGS.size}", f"--layers={layers}", f"--scan={scan}", f"--dtype={FLAGS.dtype}",
               f"--batch_size={FLAGS.batch_size}", f"--seq_len={FLAGS.seq_len}"]
        cmd += [f"--steps={FLAGS.steps}", "--warmup=0"] if FLAGS.steps > 0 else ["--compile_only"]
        try:
          r = common.run_worker(cmd, name=f"{layers} layers scan={scan}", timeout=FLAGS.timeout)
        except common.WorkerError as e:
          print(f"error: {e}", file=sys.stderr)
          sys.exit(1)
        xla = r.get("xla_memory") or {}
        results.append({"layers": layers, "scan": scan, "compile_s": r["compile_s"], "lower_s": r["lower_s"],
                        "xla_peak_mib": xla.get("peak_mib"), "xla_temp_mib": xla.get("temp_mib"),
                        "xla_argument_mib": xla.get("argument_mib"), "peak_rss_mib": r["peak_rss_mib"],
                        "step_median_s": r.get("median_s")})
        rows.append({"layers": layers, "layers as": "scan" if scan else "unrolled", "compile_s": r["compile_s"],
                     "XLA peak MiB": xla.get("peak_mib"), "XLA temp MiB": xla.get("temp_mib"),
                     "RSS peak MiB": r["peak_rss_mib"], "step_s": r.get("median_s")})
  print(f"\nour pretraining step ({FLAGS.size} width, batch {FLAGS.batch_size} x {FLAGS.seq_len}, {FLAGS.dtype}; "
        f"load average {os.getloadavg()[0]:.2f})")
  print(common.format_table(rows, ["layers", "layers as", "compile_s", "XLA peak MiB", "XLA temp MiB",
                                   "RSS peak MiB", "step_s"]))
  print(json.dumps({"benchmark": "compile_memory", "size": FLAGS.size, "batch_size": FLAGS.batch_size,
                    "seq_len": FLAGS.seq_len, "dtype": FLAGS.dtype, "results": results,
                    "load": list(os.getloadavg())}, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
