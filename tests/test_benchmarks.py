"""benchmarks/: the commands run end to end at tiny sizes (--peers=none), and the peers' pieces behave as specified.

Speed is not asserted here (the machine is shared): only that the commands run and report what they promise.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import common  # noqa: E402  pylint: disable=wrong-import-position


def _run(script, *args, timeout=600):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *args], cwd=REPO,
                        env=common.worker_env(), capture_output=True, text=True, timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def test_batch_layout_and_sizes():
  b = common.make_batch(4, 32)
  ids = b["input_ids"]
  assert ids.shape == (4, 32) and ids.dtype == np.int32
  assert (ids[:, 0] == common.CLS_ID).all() and (ids[:, -1] == common.SEP_ID).all()
  assert ((ids == common.SEP_ID).sum(1) >= 2).all() and b["input_mask"].all()
  # segment A = [CLS] a [SEP], then B [SEP]
  first_sep = np.argmax(ids == common.SEP_ID, axis=1)
  assert (b["segment_ids"][np.arange(4), first_sep] == 0).all() and (b["segment_ids"][:, -1] == 1).all()
  assert common.max_predictions(128, 0.15) == 19 and common.max_predictions(512, 0.25) == 130
  small = common.model_dims("small")
  assert small["gen"]["hidden_size"] == 64 and small["gen"]["num_attention_heads"] == 1
  assert common.model_dims("base")["gen"]["hidden_size"] == 256
  with pytest.raises(ValueError, match="unknown size"):
    common.model_dims("huge")


def test_table_and_json_helpers():
  text = common.format_table([{"a": "x", "b": 1234.5}, {"a": "yy", "b": None}], ["a", "b"])
  assert "1,234" in text and "-" in text.splitlines()[-1]
  assert common.parse_json_line("log\n{\"k\": 1}\n") == {"k": 1}
  assert common.parse_json_line("no json") is None
  with pytest.raises(common.WorkerError, match="failed"):
    common.run_worker([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], name="w")


def test_torch_peer_masking_follows_the_original():
  torch = pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(REPO, "benchmarks", "workers"))
  import torch_peer  # pylint: disable=import-outside-toplevel
  b = common.make_batch(64, 128)
  ids = torch.from_numpy(b["input_ids"]).long()
  mask = torch.from_numpy(b["input_mask"]).long()
  gen = torch.Generator().manual_seed(0)
  positions, weights, originals, masked = torch_peer.mask_inputs(ids, mask, 19, 0.15, gen)
  assert positions.shape == (64, 19) and weights.all()          # round(128 * 0.15) = 19 = max_predictions
  special = (originals == common.CLS_ID) | (originals == common.SEP_ID)
  assert not special.any()                                      # never [CLS] / [SEP]
  assert all(len(set(row.tolist())) == 19 for row in positions)  # distinct positions
  at = masked.gather(1, positions)
  frac = (at == common.MASK_ID).float().mean().item()
  assert 0.78 < frac < 0.92                                     # 85% [MASK], the rest kept (no random tokens)
  assert ((at == common.MASK_ID) | (at == originals)).all()
  untouched = torch.ones_like(ids, dtype=torch.bool).scatter(1, positions, False)
  assert (masked[untouched] == ids[untouched]).all()


def test_torch_peer_uses_sdpa_attention_and_compiles_only_pretraining():
  pytest.importorskip("torch")
  sys.path.insert(0, os.path.join(REPO, "benchmarks", "workers"))
  import torch_peer  # pylint: disable=import-outside-toplevel
  # pylint: disable=protected-access
  disc, gen, _ = torch_peer.hf_configs("tiny", None)
  assert disc._attn_implementation == gen._attn_implementation == "sdpa"
  assert torch_peer.hf_configs("tiny", None, "eager")[0]._attn_implementation == "eager"
  with pytest.raises(SystemExit):
    torch_peer.main(["--task=finetune", "--batch=x.npz", "--compile"])


@pytest.mark.slow
def test_pretrain_benchmark_runs_ours_only():
  # A second --kernels run that cannot run (no such setting) is reported as failed and the run goes on.
  out, fig = _run("pretrain.py", "--peers=none", "--size=tiny", "--batch_size=4", "--seq_len=32", "--steps=2",
                  "--warmup=1", "--matmul_n=256", "--kernels=auto,bogus", "--keep_going")
  assert "ours, kernels=auto" in out and "MFU" in out and "FAILED" in out
  assert fig["kernels"] == ["auto", "bogus"] and list(fig["failed"]) == ["ours_bogus"] and "ours_bogus" not in fig
  assert fig["ours"]["fused_attention"] is False and fig["ours"]["kernels"] == "auto"
  assert fig["mfu_vs_datasheet"] is None and fig["datasheet_peak_gflops"] is None   # a CPU has no datasheet entry
  assert fig["ours"]["mfu_vs_matmul"] == fig["mfu_vs_matmul"] == pytest.approx(
      fig["flops_per_step"] / fig["ours"]["median_s"] / 1e9 / fig["matmul_gflops"])
  assert fig["benchmark"] == "pretrain" and fig["layers"] == 2 and fig["batch_size"] == 4
  assert fig["ours"]["tokens_per_s"] == pytest.approx(4 * 32 / fig["ours"]["median_s"])
  assert fig["matmul_gflops"] > 0 and 0 < fig["mfu_vs_matmul"]
  assert np.isfinite(fig["ours"]["loss_first"]) and fig["flops_per_step"] > 0
  assert fig["ours"]["peak_rss_mib"] > 0 and fig["ours"]["xla_peak_mib"] > 0
  assert not any(k.startswith("speedup_vs_") for k in fig)
  # By default ours reuses its steps' host buffers, as the binaries do (one CPU device); the peers run as shipped.
  assert fig["reuse_host_memory"] and fig["ours"]["reuse_host_memory"] and not fig["peers_reuse_host_memory"]


@pytest.mark.slow
def test_finetune_benchmark_runs_ours_and_torch():
  pytest.importorskip("torch")
  out, fig = _run("finetune.py", "--peers=torch", "--size=tiny", "--batch_size=4", "--seq_len=32", "--steps=2",
                  "--warmup=1")
  assert "HF PyTorch" in out
  for impl in ("ours", "torch"):
    assert fig[impl]["train_seqs_per_s"] > 0 and fig[impl]["infer_seqs_per_s"] > 0
    assert np.isfinite(fig[impl]["loss_first"])
  assert fig["train_speedup_vs_torch"] == pytest.approx(fig["torch"]["train_median_s"] / fig["ours"]["train_median_s"])


def test_bad_peer_is_refused():
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "pretrain.py"), "--peers=jax"], cwd=REPO,
                        env=common.worker_env(), capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0 and "unknown peer" in proc.stderr


def test_platform_settings_compare_like_with_like():
  # Both sides get the same arithmetic; combinations that could not compare alike are refused before anything runs.
  assert common.platform_problem("cpu", "highest", "float32", ["torch", "flax"]) is None
  assert common.platform_problem("gpu", "tf32", "float32", ["torch"]) is None
  assert "needs --platform=gpu" in common.platform_problem("cpu", "tf32", "float32", ["torch"])
  assert "Flax peer" in common.platform_problem("gpu", "highest", "bfloat16", ["flax"])
  assert "Flax peer" in common.platform_problem("cpu", "highest", "bfloat16", ["torch", "flax"])
  assert common.platform_args("cpu", "highest", "bfloat16") == ([], ["--dtype=bfloat16"])
  assert common.platform_args("gpu", "tf32", "float32") == (
      ["--f32_matmul=tf32"], ["--device=cuda", "--dtype=float32", "--f32_matmul=tf32"])
  assert common.worker_env(platform="gpu")["JAX_PLATFORMS"] == "cuda"
  assert common.worker_env()["JAX_PLATFORMS"] == "cpu"
  # --peers_reuse_host_memory: the peers get our binaries' glibc settings as GLIBC_TUNABLES, after any of their own.
  env = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"}
  assert common.with_host_memory_reuse(env, False) == env
  assert common.with_host_memory_reuse(env, True)["GLIBC_TUNABLES"].startswith(
      "glibc.malloc.tcache_count=0:glibc.malloc.mmap_max=0:")
  # Datasheet dense peaks by device kind: bf16, TF32 for float32 with tf32 products, plain float32.
  assert common.datasheet_peak("NVIDIA H200", "bfloat16") == 989e12
  assert common.datasheet_peak("NVIDIA H100 80GB HBM3", "float32", "tf32") == 494.7e12
  assert common.datasheet_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert common.datasheet_peak("NVIDIA A100-SXM4-80GB", "float32") == 19.5e12
  assert common.datasheet_peak("cpu", "bfloat16") is None and common.datasheet_peak(None, "bfloat16") is None
  gpu = {"platform": "gpu", "device_kind": "NVIDIA H200", "dtype": "float32", "f32_matmul": "tf32", "cpu_threads": 16}
  assert common.where(gpu) == "NVIDIA H200 (float32, float32 products tf32)"
  assert common.peak_mib({"peak_rss_mib": 900.0, "device_peak_mib": 300.0}) == 300.0
  assert common.peak_mib({"peak_rss_mib": 900.0, "device_peak_mib": None}) == 900.0
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "finetune.py"), "--f32_matmul=tf32"],
                        cwd=REPO, env=common.worker_env(), capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0 and "needs --platform=gpu" in proc.stderr


@pytest.mark.slow
def test_matmul_shapes_benchmark_times_every_product_in_both_libraries():
  out, fig = _run("matmul_shapes.py", "--tokens=64", "--hidden=32", "--repeats=2")
  assert fig["benchmark"] == "matmul_shapes" and "XLA / torch" in out
  names = {"proj fwd", "proj dx", "proj dW", "ffn-in fwd", "ffn-in dx", "ffn-in dW", "ffn-out fwd", "ffn-out dW",
           "qkv fused fwd", "reference 2048^3"}
  assert set(fig["products"]) == names
  for row in fig["products"].values():
    assert row["XLA GFLOP/s"] > 0 and row["torch GFLOP/s"] > 0
  assert fig["products"]["ffn-in dW"]["m x k x n"] == "32 x 64 x 128"


def test_profile_categories_come_from_the_hlo_and_the_model_scopes():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import profile_step  # pylint: disable=import-outside-toplevel

  def f(x, w, a):
    y = jnp.dot(x, w)
    with jax.named_scope("layer_norm"):
      z = y - y.mean(-1, keepdims=True)
    with jax.named_scope("gelu"):
      g = jax.lax.erf(z)
    return g, jnp.transpose(a, (0, 2, 1)).copy()

  text = jax.jit(f).lower(jnp.ones((64, 32)), jnp.ones((32, 48)), jnp.ones((4, 64, 32))).compile().as_text()
  index = profile_step._hlo_index(text)  # pylint: disable=protected-access
  entry = text[text.index("ENTRY"):].splitlines()[1:]
  names = [line.split("=")[0].replace("ROOT", "").strip().lstrip("%") for line in entry if " = " in line]
  found = {profile_step.categorize(n, index) for n in names}
  assert {profile_step.MATMUL, profile_step.LAYOUT, "LayerNorm", "GELU"} <= found, found


def test_trace_breakdown_reads_cpu_ops_and_gpu_kernels():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import profile_step  # pylint: disable=import-outside-toplevel

  def f(x, w):
    with jax.named_scope("gelu"):
      return jax.lax.erf(jnp.dot(x, w) * 3.0)

  text = jax.jit(f).lower(jnp.ones((64, 32)), jnp.ones((32, 48))).compile().as_text()
  index = profile_step._hlo_index(text)  # pylint: disable=protected-access
  gelu = next(n for n, (kind, scope) in index.items() if not kind and "gelu" in scope)
  dot = next(n for n, (kind, _) in index.items() if kind == profile_step.MATMUL)
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
  in_graph = {"hlo_op": "command_buffer_1"}
  # Two steps on a GPU: kernels named after their instruction ('.' and '-' as '_'), a cuBLAS kernel, an unknown
  # kernel, and a host event that must not count; the first two kernels overlap by 1 us.
  gpu = meta + [
      {"ph": "X", "pid": 1, "ts": 0, "dur": 4, "name": gelu.replace(".", "_").replace("-", "_"), "args": in_graph},
      {"ph": "X", "pid": 1, "ts": 3, "dur": 10, "name": "nvjet_sm90_tst_128x128_64x6_2x1_v_bz_NNT", "args": in_graph},
      {"ph": "X", "pid": 1, "ts": 20, "dur": 2, "name": "memcpy32_post", "args": in_graph},
      {"ph": "X", "pid": 2, "ts": 0, "dur": 100, "name": gelu},
  ]
  out = profile_step.events_breakdown(gpu, text, steps=2)
  assert out["categories"] == pytest.approx({"GELU": 0.002, profile_step.MATMUL: 0.005, "unattributed": 0.001})
  assert out["device_busy_ms"] == pytest.approx((13 + 2) / 1e3 / 2)
  assert out["ops_per_step"] == 1.5 and out["top"][0]["category"] == profile_step.MATMUL
  # On a CPU every op event names its instruction; events that name none (the runtime's own) are skipped.
  cpu = [{"ph": "X", "pid": 7, "ts": 0, "dur": 6, "name": dot},
         {"ph": "X", "pid": 7, "ts": 0, "dur": 50, "name": "Execute"}]
  out = profile_step.events_breakdown(cpu, text, steps=1)
  assert out["categories"] == pytest.approx({profile_step.MATMUL: 0.006}) and out["device_busy_ms"] is None


@pytest.mark.slow
def test_product_bound_finds_every_product_of_the_step():
  # ELECTRA-tiny inference: per layer q, k, v, output (H x H), FFN in and out (H x F), scores and weighted values,
  # the last layer at [CLS] alone but for its keys and values (every token); once the embedding projection (E -> H)
  # and the classification head ([CLS]: H -> H, H -> 2).
  b, s, e, h, f, layers = 2, 16, 32, 64, 256, 2
  tokens = b * s
  full_layer = 2 * tokens * (4 * h * h + 2 * h * f) + 2 * 2 * b * s * s * h
  last_layer = 2 * tokens * 2 * h * h + 2 * b * (2 * h * h + 2 * h * f) + 2 * 2 * b * 1 * s * h
  expected = (layers - 1) * full_layer + last_layer + 2 * tokens * e * h + 2 * b * h * h + 2 * b * h * 2
  out, fig = _run("product_bound.py", "--task=infer", "--size=tiny", f"--batch_size={b}", f"--seq_len={s}",
                  "--repeats=1", "--target_s=1.0")
  assert fig["products_gflop"] * 1e9 == pytest.approx(expected, rel=1e-9)
  assert sum(p["count"] for p in fig["products"]) == layers * 8 + 3
  assert 0 < fig["products_best_s"] <= fig["products_traced_s"] and fig["step_s"] > 0
  assert fig["left_for_the_rest_s"] == pytest.approx(1.0 - fig["products_best_s"])
  assert fig["products_at_reference_s"] == pytest.approx(fig["products_gflop"] / fig["reference_gflops"])
  assert "in their best layouts" in out
