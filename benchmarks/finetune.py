"""Fine-tuning step and inference throughput (sequence classification): this project against Hugging Face PyTorch.

    python benchmarks/finetune.py --batch_size=32 --seq_len=128                       # small, peer torch
    python benchmarks/finetune.py --batch_size=32 --seq_len=128 --size=small --peers=torch --steps=10
    python benchmarks/finetune.py --peers=none --size=tiny --steps=2 --warmup=1       # only this project
    python benchmarks/finetune.py --platform=gpu --size=base --batch_size=32 --dtype=bfloat16   # on the first GPU

Both sides fine-tune ElectraForSequenceClassification (HF's head: [CLS] -> dense -> GELU -> out_proj, 2 labels) on
the same sentence-pair batch (WikiText-2 text, random labels), each in a subprocess of its own:
  ours   `electra_jax.train.finetune_lib.Steps` (the GLUE trainer's jitted train step: cross-entropy, AdamW with
         clipping and the schedule) and its jitted predict function, one CPU device;
  torch  transformers' class, loss.backward(), clipping, torch.optim.AdamW; inference in eval mode under
         torch.inference_mode(); torch threads = the machine's cores.
Figures: median seconds per train step and per inference batch over --steps after --warmup, sequences/s, ratios
ours / torch, and each process's peak RSS (on a GPU, --platform=gpu, the device's peak memory instead; --dtype and
--f32_matmul as in benchmarks/pretrain.py: both sides compute alike). Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_enum("size", "small", sorted(common.SIZES), "Model size.")
flags.DEFINE_integer("layers", None, "Override the number of layers.")
flags.DEFINE_string("peers", "torch", "Comma-separated peers: torch, or none.")
flags.DEFINE_integer("steps", 10, "Timed steps (and inference batches) per implementation.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (after compilation).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Our compute dtype.")
flags.DEFINE_enum("platform", "cpu", sorted(common.PLATFORMS), "Where ours and the PyTorch peer run.")
flags.DEFINE_enum("f32_matmul", "highest", ["highest", "tf32"],
                  "float32 products on both sides: full float32, or TensorFloat-32 (GPU only).")
flags.DEFINE_bool("reuse_host_memory", True,
                  "Ours reuses its steps' host buffers, as the binaries' --reuse_host_memory (on by default) does.")
flags.DEFINE_bool("peers_reuse_host_memory", False,
                  "Run the peers with the same glibc settings as ours (GLIBC_TUNABLES: no mmap, no trimming); "
                  "by default they run as their libraries leave glibc.")
flags.DEFINE_integer("timeout", 3600, "Seconds allowed to each worker.")
flags.DEFINE_string("json_out", "", "Also write the JSON figures to this file.")


def main(argv) -> None:
  del argv
  peers = [p.strip() for p in FLAGS.peers.split(",") if p.strip() and p.strip() != "none"]
  if any(p != "torch" for p in peers):
    raise app.UsageError(f"--peers={FLAGS.peers}: the fine-tuning peer is 'torch' (or 'none')")
  problem = common.platform_problem(FLAGS.platform, FLAGS.f32_matmul, FLAGS.dtype, peers)
  if problem:
    raise app.UsageError(problem)
  env = common.worker_env(platform=FLAGS.platform)
  ours_args, torch_args = common.platform_args(FLAGS.platform, FLAGS.f32_matmul, FLAGS.dtype)
  ours_args.append(f"--reuse_host_memory={FLAGS.reuse_host_memory}")
  peer_env = common.with_host_memory_reuse(env, FLAGS.peers_reuse_host_memory)
  start = time.time()
  common_args = [f"--size={FLAGS.size}", f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}"]
  common_args += [f"--layers={FLAGS.layers}"] if FLAGS.layers else []
  results = {"load_before": list(common.load_average())}
  with tempfile.TemporaryDirectory() as tmp:
    batch_path = os.path.join(tmp, "batch.npz")
    common.save_batch(batch_path, common.make_classification_batch(FLAGS.batch_size, FLAGS.seq_len))
    try:
      results["ours"] = common.run_worker(
          [sys.executable, str(common.WORKERS_DIR / "ours.py"), "--task=finetune", f"--batch={batch_path}",
           f"--batch_size={FLAGS.batch_size}", f"--seq_len={FLAGS.seq_len}", f"--dtype={FLAGS.dtype}", *common_args,
           *ours_args], env=env, name="ours", timeout=FLAGS.timeout)
      if "torch" in peers:
        results["torch"] = common.run_worker(
            [sys.executable, str(common.WORKERS_DIR / "torch_peer.py"), "--task=finetune", f"--batch={batch_path}",
             *common_args, *torch_args], env=peer_env, name="torch peer", timeout=FLAGS.timeout)
    except common.WorkerError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  results["load_after"] = list(common.load_average())

  seqs = FLAGS.batch_size
  fig = {"benchmark": "finetune", "size": FLAGS.size, "batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len,
         "steps": FLAGS.steps, "warmup": FLAGS.warmup, "dtype": FLAGS.dtype, "cpu_threads": common.cpu_threads(),
         "platform": FLAGS.platform, "f32_matmul": FLAGS.f32_matmul,
         "reuse_host_memory": FLAGS.reuse_host_memory, "peers_reuse_host_memory": FLAGS.peers_reuse_host_memory,
         "device_kind": results["ours"].get("device_kind"),
         "load_before": results["load_before"], "load_after": results["load_after"]}
  rows = []
  for impl in ["ours"] + peers:
    r = results[impl]
    fig[impl] = {"train_median_s": r["train"]["median_s"], "train_seqs_per_s": seqs / r["train"]["median_s"],
                 "infer_median_s": r["infer"]["median_s"], "infer_seqs_per_s": seqs / r["infer"]["median_s"],
                 "peak_rss_mib": r["peak_rss_mib"], "device_peak_mib": r.get("device_peak_mib"),
                 "loss_first": r["loss_first"], "loss_last": r["loss_last"]}
    if impl == "ours":
      fig[impl]["reuse_host_memory"] = r.get("reuse_host_memory")
  for peer in peers:
    fig[f"train_speedup_vs_{peer}"] = results[peer]["train"]["median_s"] / results["ours"]["train"]["median_s"]
    fig[f"infer_speedup_vs_{peer}"] = results[peer]["infer"]["median_s"] / results["ours"]["infer"]["median_s"]
    fig[f"memory_ratio_vs_{peer}"] = common.ratio(common.peak_mib(fig["ours"]), common.peak_mib(fig[peer]))
  mem = "peak_rss_MiB" if FLAGS.platform == "cpu" else "device_peak_MiB"
  for impl, label in [("ours", "ours (electra_jax)"), ("torch", "HF PyTorch")]:
    if impl not in fig:
      continue
    f = fig[impl]
    rows.append({"impl": label, "train_step_s": f["train_median_s"], "train_seq/s": f["train_seqs_per_s"],
                 "train ours/peer": fig.get(f"train_speedup_vs_{impl}"), "infer_batch_s": f["infer_median_s"],
                 "infer_seq/s": f["infer_seqs_per_s"], "infer ours/peer": fig.get(f"infer_speedup_vs_{impl}"),
                 mem: common.peak_mib(f)})
  fig["wall_s"] = time.time() - start
  print()
  print(f"ELECTRA-{FLAGS.size} sequence classification, batch {FLAGS.batch_size} x seq {FLAGS.seq_len}, "
        f"{common.where(fig)}, median of {FLAGS.steps} (load average before {fig['load_before'][0]:.2f}, "
        f"after {fig['load_after'][0]:.2f})")
  print(common.format_table(rows, ["impl", "train_step_s", "train_seq/s", "train ours/peer", "infer_batch_s",
                                   "infer_seq/s", "infer ours/peer", mem]))
  if FLAGS.platform == "cpu":
    print(common.host_memory_line(fig))
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump({"figures": fig, "raw": results}, f, indent=1, sort_keys=True)
  print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
