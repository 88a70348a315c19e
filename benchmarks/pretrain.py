r"""Pretraining step throughput: this project against Hugging Face PyTorch and Hugging Face Flax, in one invocation.

    python benchmarks/pretrain.py --batch_size=16 --seq_len=128                     # small, peers torch and flax
    python benchmarks/pretrain.py --batch_size=16 --seq_len=128 --size=small --peers=torch,flax --steps=10
    python benchmarks/pretrain.py --peers=none --size=tiny --steps=2 --warmup=1    # only this project (smoke test)
    python benchmarks/pretrain.py --platform=gpu --batch_size=128 --size=small --peers=torch --f32_matmul=tf32
    python benchmarks/pretrain.py --platform=gpu --batch_size=128 --size=small --peers=torch --dtype=bfloat16
    python benchmarks/pretrain.py --platform=gpu --size=base --batch_size=32 --seq_len=512 --dtype=bfloat16 \
        --peers=torch,torch_compile --kernels=auto,reference        # benchmarks/gpu.sh's Base row

Every implementation runs in a subprocess of its own, one after the other, on the same batch (WikiText-2 text in
`[CLS] A [SEP] B [SEP]` sequences of seq_len tokens) with the same step: ELECTRA masking (15%, 85% [MASK] / 15% kept),
generator (hidden 1/4) MLM loss, sampling from its softmax, discriminator, loss = gen + 50 * disc, AdamW with clipping.
  ours   electra_jax.train.pretrain_lib (the step the pretraining binary runs), jitted, one device; once per
         --kernels setting (the model's kernel choice: auto = the platform's tuned kernels, reference = plain jnp);
  torch  transformers' ElectraForMaskedLM + ElectraForPreTraining (shared embedding module, SDPA attention),
         torch.optim.AdamW, torch threads = the machine's cores;
  torch_compile  the same with both models wrapped in torch.compile (its first step, which compiles, is compile_s);
  flax   transformers 4.46.3's FlaxElectraForMaskedLM + FlaxElectraForPreTraining (shared embedding parameters), optax
         AdamW, jax.jit, in its own virtual environment (created on first use from benchmarks/requirements-flax-peer.txt
         at --flax_venv; needs PyPI once).
Figures: median step time over --steps timed steps after --warmup, tokens/s = batch * seq_len / median, ratios
ours / peer, this host's float32 matmul GFLOP/s (jnp.dot of n x n matrices, median, measured before and after the
steps), MFU of every implementation = analytical model FLOPs per step (electra_jax.train.flops, what the ELECTRA step
must compute: the generator's vocabulary head at the masked positions) / its median time / that matmul rate, and on a
GPU also / the datasheet's dense peak (common.DATASHEET_PEAK); the HF peers compute the head at every position, so
their own-work rate is printed too. Peak memory = each process's RSS high-water mark, plus XLA's memory analysis of
our compiled step.
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

PEERS = ("torch", "torch_compile", "flax")
NAMES = {"torch": "HF PyTorch", "torch_compile": "HF PyTorch compiled", "flax": "HF Flax 4.46.3"}

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_enum("size", "small", sorted(common.SIZES), "Model size (discriminator; the generator is its fraction).")
flags.DEFINE_integer("layers", None, "Override the number of layers.")
flags.DEFINE_string("peers", "torch,flax", "Comma-separated peers to run: torch, torch_compile, flax, or none.")
flags.DEFINE_list("kernels", ["auto"], "Our model's kernel setting(s), each a run of ours: auto, reference, ... "
                  "(config.model.kernels; the first is the one compared with the peers).")
flags.DEFINE_float("attention_dropout", 0.1, "attention_probs_dropout_prob of every model, ours and the peers' "
                   "(ELECTRA's 0.1; the fused attention kernels, kernels=auto on a GPU or TPU, need 0).")
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
flags.DEFINE_string("json_out", "", "Also write the JSON figures to this file (and, while the workers run, the raw "
                    "results so far, so that a run stopped by a time limit leaves what it measured).")
flags.DEFINE_bool("keep_going", False, "A peer or an extra --kernels run that fails or times out is reported as "
                  "failed and the others still run (the first run of ours must succeed).")


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
                 f"--warmup={FLAGS.warmup}", f"--attention_dropout={FLAGS.attention_dropout}",
                 *([f"--layers={FLAGS.layers}"] if FLAGS.layers else [])]
  # The reference rate in the step's own arithmetic: float32 on the CPU; on a GPU the dtype and precision of the step.
  matmul_dtype = FLAGS.dtype if FLAGS.platform == "gpu" else "float32"
  matmul_cmd = [sys.executable, str(workers / "ours.py"), "--task=matmul", f"--matmul_n={matmul_n()}",
                f"--dtype={matmul_dtype}", "--steps=10", "--warmup=2", *ours_args]
  results: dict = {"load_before": list(common.load_average())}

  def run(key: str, cmd: list[str], worker_env: dict[str, str], name: str, optional: bool = False) -> None:
    try:
      results[key] = common.run_worker(cmd, env=worker_env, name=name, timeout=FLAGS.timeout)
    except common.WorkerError as e:
      if not (optional and FLAGS.keep_going):
        raise
      print(f"{name}: FAILED, going on (--keep_going): {e}", file=sys.stderr, flush=True)
      results[key] = {"error": str(e)[-2000:]}
    print(f"{name}: {'failed' if 'error' in results[key] else 'done'}", flush=True)
    if FLAGS.json_out:   # what has been measured so far, replaced by the figures at the end
      with open(FLAGS.json_out, "w", encoding="utf-8") as f:
        json.dump({"partial": True, "raw": results}, f, indent=1, sort_keys=True)

  run("matmul_before", matmul_cmd, env, "matmul")
  for i, kernels in enumerate(FLAGS.kernels):
    run("ours" if i == 0 else f"ours_{kernels}",
        [sys.executable, str(workers / "ours.py"), "--task=pretrain", *common_args, f"--batch_size={FLAGS.batch_size}",
         f"--seq_len={FLAGS.seq_len}", f"--dtype={FLAGS.dtype}", f"--scan={FLAGS.scan}", f"--kernels={kernels}",
         *ours_args], env, f"ours (kernels={kernels})", optional=i > 0)
  for peer in ("torch", "torch_compile"):
    if peer in peers:
      run(peer, [sys.executable, str(workers / "torch_peer.py"), "--task=pretrain", *common_args, *torch_args,
                 *(["--compile"] if peer == "torch_compile" else [])], peer_env, f"{peer} peer", optional=True)
  if "flax" in peers:
    python = ensure_flax_venv(FLAGS.flax_venv)
    flax_env = common.with_host_memory_reuse(common.worker_env({"PYTHONPATH": ""}), FLAGS.peers_reuse_host_memory)
    run("flax", [python, str(workers / "flax_peer.py"), *common_args], flax_env, "flax peer", optional=True)
  run("matmul_after", matmul_cmd, env, "matmul")
  results["load_after"] = list(common.load_average())
  return results


def ours_names() -> list[str]:
  """Keys of our runs in the results: "ours" (the first --kernels setting), then "ours_<setting>"."""
  return ["ours" if i == 0 else f"ours_{k}" for i, k in enumerate(FLAGS.kernels)]


def figures(results: dict, peers: list[str]) -> dict:
  tokens = FLAGS.batch_size * FLAGS.seq_len
  ours = results["ours"]
  matmul = [results["matmul_before"]["gflops_median"], results["matmul_after"]["gflops_median"]]
  matmul_gflops = sum(matmul) / 2
  device_kind = ours.get("device_kind")
  datasheet = common.datasheet_peak(device_kind, FLAGS.dtype, FLAGS.f32_matmul) if FLAGS.platform == "gpu" else None
  model_flops = ours["flops_per_step"]
  out = {
      "benchmark": "pretrain", "size": FLAGS.size, "batch_size": FLAGS.batch_size, "seq_len": FLAGS.seq_len,
      "layers": ours["layers"], "steps": FLAGS.steps, "warmup": FLAGS.warmup, "dtype": FLAGS.dtype,
      "scan": FLAGS.scan, "cpu_threads": common.cpu_threads(), "platform": FLAGS.platform,
      "device_kind": device_kind, "f32_matmul": FLAGS.f32_matmul, "matmul_n": matmul_n(),
      "reuse_host_memory": FLAGS.reuse_host_memory, "peers_reuse_host_memory": FLAGS.peers_reuse_host_memory,
      "load_before": results["load_before"], "load_after": results["load_after"],
      "matmul_gflops": matmul_gflops, "matmul_gflops_before_after": matmul,
      "datasheet_peak_gflops": datasheet / 1e9 if datasheet else None,
      "flops_per_step": model_flops,
      "flops_per_step_head_everywhere": ours.get("flops_per_step_head_everywhere"),
      "kernels": list(FLAGS.kernels), "attention_dropout": FLAGS.attention_dropout,
  }

  def rates(figs: dict, median_s: float) -> None:   # MFU on the model's FLOPs, against the two peaks
    gflops = model_flops / median_s / 1e9
    figs.update(model_gflops_per_s=gflops, mfu_vs_matmul=gflops / matmul_gflops,
                mfu_vs_datasheet=gflops * 1e9 / datasheet if datasheet else None)

  out["failed"] = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
  for name in ours_names():
    r = results[name]
    if "error" in r:
      continue
    out[name] = {"median_s": r["median_s"], "tokens_per_s": tokens / r["median_s"],
                 "compile_s": r["compile_s"], "peak_rss_mib": r["peak_rss_mib"],
                 "device_peak_mib": r.get("device_peak_mib"),
                 "xla_peak_mib": (r.get("xla_memory") or {}).get("peak_mib"), "loss_first": r["loss_first"],
                 "loss_last": r["loss_last"], "reuse_host_memory": r.get("reuse_host_memory"),
                 "kernels": r.get("kernels"), "fused_attention": r.get("fused_attention")}
    rates(out[name], r["median_s"])
  out["mfu_vs_matmul"] = out["ours"]["mfu_vs_matmul"]
  out["mfu_vs_datasheet"] = out["ours"]["mfu_vs_datasheet"]
  for name in ours_names()[1:]:
    if name in out:
      out[f"speedup_vs_{name}"] = results[name]["median_s"] / ours["median_s"]
  for peer in peers:
    r = results[peer]
    if "error" in r:
      continue
    out[peer] = {"median_s": r["median_s"], "tokens_per_s": tokens / r["median_s"], "peak_rss_mib": r["peak_rss_mib"],
                 "device_peak_mib": r.get("device_peak_mib"),
                 "loss_first": r["loss_first"], "loss_last": r["loss_last"],
                 "version": r.get("transformers_version"), "compile_s": r.get("compile_s"),
                 "attn_implementation": r.get("attn_implementation")}
    rates(out[peer], r["median_s"])
    if ours.get("flops_per_step_head_everywhere"):   # the FLOPs HF's classes actually do
      own = ours["flops_per_step_head_everywhere"] / r["median_s"] / 1e9
      out[peer].update(own_gflops_per_s=own, own_mfu_vs_matmul=own / matmul_gflops)
    out[f"speedup_vs_{peer}"] = r["median_s"] / ours["median_s"]
    out[f"memory_ratio_vs_{peer}"] = common.ratio(common.peak_mib(out["ours"]), common.peak_mib(out[peer]))
  return out


def print_report(fig: dict, peers: list[str]) -> None:
  mem = "peak_rss_MiB" if fig["platform"] == "cpu" else "device_peak_MiB"
  datasheet = fig.get("datasheet_peak_gflops")
  rows = []
  for name, setting in zip(ours_names(), fig["kernels"]):
    if name not in fig:
      continue
    o = fig[name]
    label = "ours (electra_jax)" if len(fig["kernels"]) == 1 else f"ours, kernels={setting}"
    rows.append({"impl": label, "step_s": o["median_s"], "tokens/s": o["tokens_per_s"],
                 "ours/peer": None if name == "ours" else fig[f"speedup_vs_{name}"], mem: common.peak_mib(o),
                 "compile_s": o["compile_s"], "MFU": f"{100 * o['mfu_vs_matmul']:.1f}%",
                 "MFU_datasheet": f"{100 * o['mfu_vs_datasheet']:.1f}%" if o["mfu_vs_datasheet"] else None,
                 "loss first->last": f"{o['loss_first']:.2f}->{o['loss_last']:.2f}"})
  for peer in (p for p in peers if p in fig):
    p = fig[peer]
    rows.append({"impl": NAMES[peer], "step_s": p["median_s"], "tokens/s": p["tokens_per_s"],
                 "ours/peer": fig[f"speedup_vs_{peer}"], mem: common.peak_mib(p), "compile_s": p["compile_s"],
                 "MFU": f"{100 * p['mfu_vs_matmul']:.1f}%",
                 "MFU_datasheet": f"{100 * p['mfu_vs_datasheet']:.1f}%" if p["mfu_vs_datasheet"] else None,
                 "loss first->last": f"{p['loss_first']:.2f}->{p['loss_last']:.2f}"})
  print()
  print(f"ELECTRA-{fig['size']} pretraining step, batch {fig['batch_size']} x seq {fig['seq_len']}, "
        f"{fig['layers']} layers, attention dropout {fig['attention_dropout']:g}, {common.where(fig)}, "
        f"median of {fig['steps']} steps "
        f"(load average before {fig['load_before'][0]:.2f}, after {fig['load_after'][0]:.2f})")
  print(common.format_table(rows, ["impl", "step_s", "tokens/s", "ours/peer", mem, "compile_s", "MFU",
                                   *(["MFU_datasheet"] if datasheet else []), "loss first->last"]))
  kind = "host float32" if fig["platform"] == "cpu" else common.where(fig)
  print(f"{kind} matmul ({fig['matmul_n']}^3, median): {fig['matmul_gflops']:.1f} GFLOP/s "
        f"(before {fig['matmul_gflops_before_after'][0]:.1f}, after {fig['matmul_gflops_before_after'][1]:.1f})"
        + (f"; datasheet dense peak {datasheet / 1e3:.0f} TFLOP/s" if datasheet else ""))
  print(f"MFU: {fig['flops_per_step'] / 1e9:.1f} model GFLOP per step (analytical: the generator's vocabulary head at "
        f"the masked positions) / step time / the matmul rate" + (" (MFU_datasheet: / the datasheet peak)"
                                                                  if datasheet else ""))
  for name in fig["failed"]:
    print(f"{NAMES.get(name, name)}: FAILED (see the log and the JSON's 'failed')")
  for peer in (p for p in peers if p in fig):
    if "own_mfu_vs_matmul" in fig[peer]:
      print(f"{NAMES[peer]}: computes the generator's vocabulary head at all {fig['seq_len']} positions (HF's class): "
            f"{fig['flops_per_step_head_everywhere'] / 1e9:.1f} GFLOP per step -> {fig[peer]['own_gflops_per_s']:.1f} "
            f"GFLOP/s = {100 * fig[peer]['own_mfu_vs_matmul']:.1f}% of the matmul rate")
  print(f"our step: {fig['ours']['model_gflops_per_s']:.1f} GFLOP/s = MFU {100 * fig['mfu_vs_matmul']:.1f}% of the "
        f"matmul rate; XLA peak buffer estimate {fig['ours']['xla_peak_mib'] or 0:.0f} MiB; fused attention kernel: "
        f"{ {True: 'yes', False: 'no', None: '-'}[fig['ours'].get('fused_attention')] }")
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
