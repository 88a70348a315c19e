"""Pretraining step throughput: this project against Hugging Face PyTorch and Hugging Face Flax, in one invocation.

    python benchmarks/pretrain.py --batch_size=16 --seq_len=128                     # small, peers torch and flax
    python benchmarks/pretrain.py --batch_size=16 --seq_len=128 --size=small --peers=torch,flax --steps=10
    python benchmarks/pretrain.py --peers=none --size=tiny --steps=2 --warmup=1    # only this project (smoke test)
    python benchmarks/pretrain.py --platform=gpu --batch_size=128 --size=small --peers=torch --f32_matmul=tf32
    python benchmarks/pretrain.py --platform=gpu --batch_size=128 --size=small --peers=torch --dtype=bfloat16

Every implementation runs in a subprocess of its own, one after the other, on the same batch (WikiText-2 text in
`[CLS] A [SEP] B [SEP]` sequences of seq_len tokens) with the same step: ELECTRA masking (15%, 85% [MASK] / 15% kept),
generator (hidden 1/4) MLM loss, sampling from its softmax, discriminator, loss = gen + 50 * disc, AdamW with clipping.
  ours   electra_jax.train.pretrain_lib (the step the pretraining binary runs), jitted, one CPU device;
  torch  transformers' ElectraForMaskedLM + ElectraForPreTraining (shared embedding module), torch.optim.AdamW,
         torch threads = the machine's cores;
  flax   transformers 4.46.3's FlaxElectraForMaskedLM + FlaxElectraForPreTraining (shared embedding parameters), optax
         AdamW, jax.jit, in its own virtual environment (created on first use from benchmarks/requirements-flax-peer.txt
         at --flax_venv; needs PyPI once).
Figures: median step time over --steps timed steps after --warmup, tokens/s = batch * seq_len / median, ratios
ours / peer, this host's float32 matmul GFLOP/s (jnp.dot of n x n matrices, median, measured before and after the
steps), MFU = analytical model FLOPs per step (electra_jax.train.flops, what our step computes) / median time / matmul
rate, peak memory = each process's RSS high-water mark, plus XLA's memory analysis of our compiled step.
--platform=gpu runs ours and the PyTorch peer on the machine's first GPU (the Flax peer is CPU-only): the matmul rate
is then the GPU's (n = 8192 unless --matmul_n says, in the step's dtype), and peak memory is the device's (JAX's
peak_bytes_in_use, torch.cuda.max_memory_allocated). Both sides compute alike: --dtype=bfloat16 is our bfloat16
compute dtype against torch.autocast(bfloat16); float32 products are full float32 on both (--f32_matmul=highest) or
TensorFloat-32 on both (tf32; JAX's own GPU default, which is why the flag is explicit).
Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  pylint: disable=wrong-import-position

PEERS = ("torch", "flax")

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_enum("size", "small", sorted(common.SIZES), "Model size (discriminator; the generator is its fraction).")
flags.DEFINE_integer("layers", None, "Override the number of layers.")
flags.DEFINE_string("peers", "torch,flax", "Comma-separated peers to run: torch, flax, or none.")
flags.DEFINE_integer("steps", 10, "Timed steps per implementation.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (after compilation).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Our compute dtype.")
flags.DEFINE_bool("scan", False, "Our encoder as jax.lax.scan over layers (False: unrolled loop).")
flags.DEFINE_integer("matmul_n", None, "Matrix size of the matmul measurement (default 2048 on CPU, 8192 on GPU).")
flags.DEFINE_enum("platform", "cpu", sorted(common.PLATFORMS), "Where ours and the PyTorch peer run.")
flags.DEFINE_enum("f32_matmul", "highest", ["highest", "tf32"],
                  "float32 products on both sides: full float32, or TensorFloat-32 (GPU only).")
flags.DEFINE_string("flax_venv", os.path.join(common.BENCH_DIR, ".venv-flax-peer"),
                    "Virtual environment of the HF Flax peer (created when missing).")
flags.DEFINE_bool("reuse_host_memory", True,
                  "Ours reuses its steps' host buffers, as the binaries' --reuse_host_memory (on by default) does.")
flags.DEFINE_bool("peers_reuse_host_memory", False,
                  "Run the peers with the same glibc settings as ours (GLIBC_TUNABLES: no mmap, no trimming); "
                  "by default they run as their libraries leave glibc.")
flags.DEFINE_integer("timeout", 3600, "Seconds allowed to each worker.")
flags.DEFINE_string("json_out", "", "Also write the JSON figures to this file.")


def parse_peers(text: str) -> list[str]:
  names = [p.strip() for p in text.split(",") if p.strip()]
  if names == ["none"] or not names:
    return []
  bad = [p for p in names if p not in PEERS]
  if bad:
    raise app.UsageError(f"--peers: unknown peer(s) {bad}; choose from {list(PEERS)} or 'none'")
  return names



# ------------------------------------------------------------------------------------------------ the Flax peer's venv
def ensure_flax_venv(venv: str) -> str:
  """The python of the Flax peer's venv, created (python -m venv + pip install -r requirements) when missing/stale."""
  req = os.path.join(common.BENCH_DIR, "requirements-flax-peer.txt")
  with open(req, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  python = os.path.join(venv, "bin", "python")
  stamp = os.path.join(venv, ".requirements.sha256")
  if os.path.exists(python) and os.path.exists(stamp) and open(stamp, encoding="utf-8").read().strip() == digest:
    return python
  print(f"creating the HF Flax peer's environment in {venv} (from {req}) ...", flush=True)
  subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
  proc = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", req],
                        capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"pip install -r {req} into {venv} failed:\n{proc.stderr[-3000:]}")
  with open(stamp, "w", encoding="utf-8") as f:
    f.write(digest + "\n")
  return python


# ------------------------------------------------------------------------------------------------ runs
def matmul_n() -> int:
  return FLAGS.matmul_n or (8192 if FLAGS.platform == "gpu" else 2048)


def run_all(peers: list[str], batch_path: str) -> dict:
  workers = common.WORKERS_DIR
  env = common.worker_env(platform=FLAGS.platform)
  ours_args, torch_args = common.platform_args(FLAGS.platform, FLAGS.f32_matmul, FLAGS.dtype)
  ours_args.append(f"--reuse_host_memory={FLAGS.reuse_host_memory}")
  peer_env = common.with_host_memory_reuse(env, FLAGS.peers_reuse_host_memory)
  common_args = [f"--batch={batch_path}", f"--size={FLAGS.size}", f"--steps={FLAGS.steps}",
                 f"--warmup={FLAGS.warmup}"] + ([f"--layers={FLAGS.layers}"] if FLAGS.layers else [])
  # The reference rate in the step's own arithmetic: float32 on the CPU; on a GPU the dtype and precision of the step.
  matmul_dtype = FLAGS.dtype if FLAGS.platform == "gpu" else "float32"
  matmul_cmd = [sys.executable, str(workers / "ours.py"), "--task=matmul", f"--matmul_n={matmul_n()}",
                f"--dtype={matmul_dtype}", "--steps=10", "--warmup=2", *ours_args]
  results: dict = {"load_before": list(common.load_average())}
  results["matmul_before"] = common.run_worker(matmul_cmd, env=env, name="matmul", timeout=FLAGS.timeout)
  results["ours"] = common.run_worker(
      [sys.executable, str(workers / "ours.py"), "--task=pretrain", *common_args, f"--batch_size={FLAGS.batch_size}",
       f"--seq_len={FLAGS.seq_len}", f"--dtype={FLAGS.dtype}", f"--scan={FLAGS.scan}", *ours_args],
      env=env, name="ours", timeout=FLAGS.timeout)
  if "torch" in peers:
    results["torch"] = common.run_worker(
        [sys.executable, str(workers / "torch_peer.py"), "--task=pretrain", *common_args, *torch_args],
        env=peer_env, name="torch peer", timeout=FLAGS.timeout)
  if "flax" in peers:
    python = ensure_flax_venv(FLAGS.flax_venv)
    flax_env = common.with_host_memory_reuse(common.worker_env({"PYTHONPATH": ""}), FLAGS.peers_reuse_host_memory)
    results["flax"] = common.run_worker([python, str(workers / "flax_peer.py"), *common_args], env=flax_env,
                                        name="flax peer", timeout=FLAGS.timeout)
  results["matmul_after"] = common.run_worker(matmul_cmd, env=env, name="matmul", timeout=FLAGS.timeout)
  results["load_after"] = list(common.load_average())
  return results


def figures(results: dict, peers: list[str]) -> dict:
  tokens = FLAGS.batch_size * FLAGS.seq_len
  ours = results["ours"]
  matmul = [results["matmul_before"]["gflops_median"], results["matmul_after"]["gflops_median"]]
  matmul_gflops = sum(matmul) / 2
  out = {
      "benchmark": "pretrain", "size": FLAGS.size, "batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len,
      "layers": ours["layers"], "steps": FLAGS.steps, "warmup": FLAGS.warmup, "dtype": FLAGS.dtype,
      "scan": FLAGS.scan, "cpu_threads": common.cpu_threads(), "platform": FLAGS.platform,
      "device_kind": ours.get("device_kind"), "f32_matmul": FLAGS.f32_matmul, "matmul_n": matmul_n(),
      "reuse_host_memory": FLAGS.reuse_host_memory, "peers_reuse_host_memory": FLAGS.peers_reuse_host_memory,
      "load_before": results["load_before"], "load_after": results["load_after"],
      "matmul_gflops": matmul_gflops, "matmul_gflops_before_after": matmul,
      "flops_per_step": ours["flops_per_step"],
      "flops_per_step_head_everywhere": ours.get("flops_per_step_head_everywhere"),
      "ours": {"median_s": ours["median_s"], "tokens_per_s": tokens / ours["median_s"],
               "compile_s": ours["compile_s"], "peak_rss_mib": ours["peak_rss_mib"],
               "device_peak_mib": ours.get("device_peak_mib"),
               "xla_peak_mib": (ours.get("xla_memory") or {}).get("peak_mib"), "loss_first": ours["loss_first"],
               "loss_last": ours["loss_last"], "reuse_host_memory": ours.get("reuse_host_memory")},
  }
  achieved = ours["flops_per_step"] / ours["median_s"] / 1e9
  out["ours"]["model_gflops_per_s"] = achieved
  out["mfu_vs_matmul"] = achieved / matmul_gflops
  for peer in peers:
    r = results[peer]
    out[peer] = {"median_s": r["median_s"], "tokens_per_s": tokens / r["median_s"], "peak_rss_mib": r["peak_rss_mib"],
                 "device_peak_mib": r.get("device_peak_mib"),
                 "loss_first": r["loss_first"], "loss_last": r["loss_last"],
                 "version": r.get("transformers_version"), "compile_s": r.get("compile_s")}
    if ours.get("flops_per_step_head_everywhere"):
      peer_gflops = ours["flops_per_step_head_everywhere"] / r["median_s"] / 1e9
      out[peer].update(model_gflops_per_s=peer_gflops, mfu_vs_matmul=peer_gflops / matmul_gflops)
    out[f"speedup_vs_{peer}"] = r["median_s"] / ours["median_s"]
    out[f"memory_ratio_vs_{peer}"] = common.ratio(common.peak_mib(out["ours"]), common.peak_mib(out[peer]))
  return out


def print_report(fig: dict, peers: list[str]) -> None:
  mem = "peak_rss_MiB" if fig["platform"] == "cpu" else "device_peak_MiB"
  rows = [{"impl": "ours (electra_jax)", "step_s": fig["ours"]["median_s"], "tokens/s": fig["ours"]["tokens_per_s"],
           "ours/peer": None, mem: common.peak_mib(fig["ours"]), "compile_s": fig["ours"]["compile_s"],
           "loss first->last": f"{fig['ours']['loss_first']:.2f}->{fig['ours']['loss_last']:.2f}"}]
  names = {"torch": "HF PyTorch", "flax": "HF Flax 4.46.3"}
  for peer in peers:
    p = fig[peer]
    rows.append({"impl": names[peer], "step_s": p["median_s"], "tokens/s": p["tokens_per_s"],
                 "ours/peer": fig[f"speedup_vs_{peer}"], mem: common.peak_mib(p),
                 "compile_s": p["compile_s"], "loss first->last": f"{p['loss_first']:.2f}->{p['loss_last']:.2f}"})
  print()
  print(f"ELECTRA-{fig['size']} pretraining step, batch {fig['batch_size']} x seq {fig['seq_len']}, "
        f"{fig['layers']} layers, {common.where(fig)}, median of {fig['steps']} steps "
        f"(load average before {fig['load_before'][0]:.2f}, after {fig['load_after'][0]:.2f})")
  print(common.format_table(rows, ["impl", "step_s", "tokens/s", "ours/peer", mem, "compile_s",
                                   "loss first->last"]))
  kind = "host float32" if fig["platform"] == "cpu" else common.where(fig)
  print(f"{kind} matmul ({fig['matmul_n']}^3, median): {fig['matmul_gflops']:.1f} GFLOP/s "
        f"(before {fig['matmul_gflops_before_after'][0]:.1f}, after {fig['matmul_gflops_before_after'][1]:.1f})")
  for peer in peers:
    if "mfu_vs_matmul" in fig[peer]:
      print(f"{names[peer]}: computes the generator's vocabulary head at all {fig['seq_len']} positions (HF's class): "
            f"{fig['flops_per_step_head_everywhere'] / 1e9:.1f} GFLOP per step -> {fig[peer]['model_gflops_per_s']:.1f} "
            f"GFLOP/s = {100 * fig[peer]['mfu_vs_matmul']:.1f}% of the matmul rate")
  print(f"our step: {fig['flops_per_step'] / 1e9:.1f} model GFLOP (analytical) -> "
        f"{fig['ours']['model_gflops_per_s']:.1f} GFLOP/s = MFU {100 * fig['mfu_vs_matmul']:.1f}% of the matmul rate; "
        f"XLA peak buffer estimate {fig['ours']['xla_peak_mib'] or 0:.0f} MiB")
  if fig["platform"] == "cpu":
    print(common.host_memory_line(fig))


def main(argv) -> None:
  del argv
  peers = parse_peers(FLAGS.peers)
  problem = common.platform_problem(FLAGS.platform, FLAGS.f32_matmul, FLAGS.dtype, peers)
  if problem:
    raise app.UsageError(problem)
  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    batch_path = os.path.join(tmp, "batch.npz")
    common.save_batch(batch_path, common.make_batch(FLAGS.batch_size, FLAGS.seq_len))
    try:
      results = run_all(peers, batch_path)
    except (common.WorkerError, RuntimeError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  fig = figures(results, peers)
  fig["wall_s"] = time.time() - start
  print_report(fig, peers)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump({"figures": fig, "raw": results}, f, indent=1, sort_keys=True)
  print(json.dumps(fig, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
