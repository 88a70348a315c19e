#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one command, on a machine with one NVIDIA GPU (about 12 minutes on an H200):
#
#     bash benchmarks/gpu.sh OUT_DIR
#
# Needs this repository's Python dependencies with a CUDA build of jax and of torch (and transformers). Wheels in
# .whl/ (benchmarks/gpu_wheels.sh fetches the set that the lent H200's image lacks) are installed to /tmp/site first.
# Runs, in this order, each under `timeout` (its own limit, and never past BUDGET seconds from the start, default
# 720: on 2026-12-04 an H200 needed ~250 s for Base with three workers and the torch.compile'd peer did not finish
# within 540 s in all), so that one hang does not eat the rest:
#   1. the cuDNN kernel tests on the GPU (tests/test_ops.py -k cudnn: values and gradients against the reference);
#   2. pretraining, ELECTRA-Base, batch 32 x 512, bfloat16: ours with kernels=auto (cuDNN fused attention) and
#      kernels=reference (XLA's own attention), HF PyTorch (SDPA attention) eager and torch.compile'd;
#   3. pretraining, ELECTRA-Small, batch 128 x 128, bfloat16: kernels=auto and the two peers;
#   4. one profile of our Small step (benchmarks/profile_step.py): kernels per step, time by category; its compile
#      dumps XLA's thunk sequence, counted as launch/gpu_aot.py counts it (launches_real.json);
#   5. launch/gpu_aot.py on the same step without using the GPU (aot_small.json): the deviceless launch count, to
#      compare with the real one (autotuning may choose other GEMMs and fusions).
# Every model runs with attention-probability dropout ATTENTION_DROPOUT (default 0: the fused kernel has none; 0.1 is
# ELECTRA's and runs XLA's attention).
# Ends with a table of the figures against the issue's targets (ours >= 45% MFU on Base, >= 30% on Small, >= 2x HF
# PyTorch eager and >= 1.3x torch.compile, device memory no higher than PyTorch's).
# MFU of each implementation is against the run's measured bf16 8192^3 matmul rate and the datasheet's dense peak.
# Writes at most 8 files into OUT_DIR: base_bf16.json, small_bf16.json, profile_small.json, aot_small.json,
# launches_real.json (figures and raw results;
# a benchmark stopped by its limit leaves the workers it finished), tests.txt, logs.txt (every step's full log) and
# summary.txt (this script's own output, also on stdout). JAX's compilation cache (/tmp/electra_jax_cache) is shared by
# the steps, so the profile reuses the benchmark's compiled Small step and XLA's GEMM autotuning results carry over.
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
budget=${BUDGET:-720}
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/electra_jax_cache}
logs=$(mktemp -d)
exec > >(tee "$out/summary.txt") 2>&1

say() { echo "== [$((SECONDS))s] $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  say "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
"$py" -c "import jax, flax, torch, transformers as t; print('jax', jax.__version__, jax.devices(), '| flax',
flax.__version__, '| torch', torch.__version__, torch.cuda.is_available(), '| transformers', t.__version__)" 2>&1 \
  | tail -n 3

# run NAME LIMIT CMD...: CMD under timeout min(LIMIT, what is left of the budget), its log in logs.txt.
run() {
  local name=$1 limit=$2 rc left
  shift 2
  left=$((budget - SECONDS))
  if [ "$left" -lt 30 ]; then say "$name: skipped, ${left}s of the ${budget}s budget left"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  { echo "===== $name: $* (exit $rc)"; cat "$logs/$name.log"; } >>"$out/logs.txt"
  [ "$rc" -eq 0 ] || say "$name: exit $rc (124: stopped at its ${limit}s limit)"
}

# The kernel tests first: whether cuDNN's fused attention equals the reference on this GPU decides what the rest means.
# tests/conftest.py makes JAX_PLATFORMS default to cpu: name the GPU first (the CPU stays for tests that ask for it).
JAX_PLATFORMS=cuda,cpu run gpu_tests 60 "$py" -m pytest tests/test_ops.py -k "cudnn or fused or auto_resolves" -q -rs \
  -p no:cacheprovider
[ -f "$logs/gpu_tests.log" ] && cp "$logs/gpu_tests.log" "$out/tests.txt" && tail -n 8 "$logs/gpu_tests.log"

# Attention-probability dropout 0 in every model (ours and the peers'): cuDNN's fused attention needs it, and the
# replication suite measures what it costs; kernels=reference is the same step with XLA's own attention.
bench=(benchmarks/pretrain.py --platform=gpu --dtype=bfloat16 --peers=torch,torch_compile --keep_going --timeout=200
  --attention_dropout="${ATTENTION_DROPOUT:-0}")
run base_bf16 340 "$py" "${bench[@]}" --size=base --batch_size=32 --seq_len=512 --kernels=auto,reference \
  --steps=10 --warmup=3 --json_out="$out/base_bf16.json"
grep -v '^{' "$logs/base_bf16.log" | grep -v -i "warning" | tail -n 14
run small_bf16 200 "$py" "${bench[@]}" --size=small --batch_size=128 --seq_len=128 --kernels=auto \
  --steps=20 --warmup=5 --json_out="$out/small_bf16.json"
grep -v '^{' "$logs/small_bf16.log" | grep -v -i "warning" | tail -n 12

# The profile's compile also dumps XLA's thunk sequence: the launches of the step as compiled here (autotuned),
# counted below as launch/gpu_aot.py counts them, next to the deviceless count of step 5.
dump=/tmp/electra_xla_dump
rm -rf "$dump"
XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=$dump --xla_gpu_dump_llvmir=false" \
run profile_small 90 "$py" benchmarks/profile_step.py --size=small --dtype=bfloat16 --batch_size=128 --seq_len=128 \
  --variants=base --rounds=5 --kernels=auto --attention_dropout="${ATTENTION_DROPOUT:-0}" --trace_dir=/tmp/electra_trace \
  --trace_steps=2 --top_ops=15 \
  --json_out="$out/profile_small.json"
grep -v '^{' "$logs/profile_small.log" | grep -v -i "warning" | tail -n 40
# 5. The same step compiled without the GPU (compile-only H200 target, no autotuning): launches per step.
run aot_small 240 "$py" launch/gpu_aot.py --config=configs/pretrain.py:size=small --target=gpu:h200 \
  --config.batch_size=128 --config.model.scan_layers=false \
  --config.model.attention_probs_dropout_prob="${ATTENTION_DROPOUT:-0}" --json_out="$out/aot_small.json"
grep -v '^{' "$logs/aot_small.log" | grep "launches per step" | tail -n 1
"$py" - "$dump" "$out" <<'PY'
import glob, json, os, sys
sys.path.insert(0, "launch")
import gpu_aot   # count_launches: the same count as the deviceless tool
dump, out = sys.argv[1:]
seqs = [p for p in glob.glob(os.path.join(dump, "*.thunk_sequence.txt")) if "train_step" in p or "step" in p]
if not seqs:
  print("real launch count: no thunk sequence dumped")
  sys.exit(0)
path = max(seqs, key=os.path.getsize)   # the training step is the largest module
hlo = "".join(open(p).read() for p in glob.glob(path.replace(".thunk_sequence.txt", ".*gpu_after_optimizations.txt")))
got = gpu_aot.count_launches(open(path).read(), hlo)
got["module"] = os.path.basename(path)
with open(os.path.join(out, "launches_real.json"), "w") as f:
  json.dump(got, f, indent=1)
try:
  aot = json.load(open(os.path.join(out, "aot_small.json")))["launches_per_step"]
except (OSError, ValueError, KeyError):
  aot = None
print(f"launches per step of the Small step compiled on this GPU: {got['launches_per_step']:,} ({got['by_kind']}); "
      f"compiled without it (launch/gpu_aot.py): {aot if aot is None else f'{aot:,}'}")
PY

say "done in ${SECONDS}s; files in $out: $(ls "$out" | tr '\n' ' ')"
"$py" - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
  try:
    with open(os.path.join(out, name)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None
def partial(d, shape):
  """Figures from the raw results of a benchmark stopped by its limit: the workers that finished."""
  raw = (d or {}).get("raw") or {}
  ours, mm = raw.get("ours"), (raw.get("matmul_before") or {}).get("gflops_median")
  if not ours or "error" in ours or not mm:
    return None
  f = {"size": shape[0], "batch_size": shape[1], "seq_len": shape[2],
       "mfu_vs_matmul": ours["flops_per_step"] / ours["median_s"] / mm / 1e9, "ours": ours, "failed": {},
       "kernels": [k[5:] for k in raw if k.startswith("ours_")]}
  f["kernels"].insert(0, ours.get("kernels", "auto"))
  for k in raw:
    r = raw[k]
    if k.startswith("ours_") and "error" not in r:
      f[k], f["speedup_vs_" + k] = r, r["median_s"] / ours["median_s"]
    if k in ("torch", "torch_compile") and "error" not in r:
      f[k], f["speedup_vs_" + k] = r, r["median_s"] / ours["median_s"]
  print("(partial results: the benchmark stopped at its limit; figures from the workers that finished)")
  return f
pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
ok = lambda c: "-" if c is None else "yes" if c else "NO"
print("\ntargets (issue 18)          MFU vs matmul / datasheet   vs eager  vs compile  MiB ours / eager / compile  met")
print("(met: MFU, >= 2x eager, >= 1.3x compiled, memory <= PyTorch's)")
for name, target, shape in (("base_bf16.json", 0.45, ("base", 32, 512)), ("small_bf16.json", 0.30, ("small", 128, 128))):
  d = load(name)
  f = (d or {}).get("figures") or partial(d, shape)
  if not f:
    print(f"{name}: no figures ({'the first run of ours did not finish' if d else 'missing'})")
    continue
  sp_e, sp_c = f.get("speedup_vs_torch"), f.get("speedup_vs_torch_compile")
  mem = [(f.get(k) or {}).get("device_peak_mib") for k in ("ours", "torch", "torch_compile")]
  known = [m for m in mem[1:] if m is not None]
  mem_ok = None if mem[0] is None or not known else mem[0] <= min(known)
  met = [f["mfu_vs_matmul"] >= target, None if sp_e is None else sp_e >= 2, None if sp_c is None else sp_c >= 1.3,
         mem_ok]
  print(f"{f['size']:5s} {f['batch_size']}x{f['seq_len']} (MFU >= {target:.0%})    "
        f"{pct(f['mfu_vs_matmul']):>6s} / {pct(f.get('mfu_vs_datasheet')):>6s}          "
        f"{'-' if sp_e is None else f'{sp_e:.2f}x':>7s}  {'-' if sp_c is None else f'{sp_c:.2f}x':>9s}  "
        + " / ".join("-" if m is None else f"{m:,.0f}" for m in mem)
        + "   " + ",".join(ok(m) for m in met))
  for key in f.get("kernels", [])[1:]:
    r = f.get(f"ours_{key}")
    if r:
      print(f"      kernels={key}: {r['median_s'] * 1e3:.1f} ms/step vs auto {f['ours']['median_s'] * 1e3:.1f} ms "
            f"(auto {f['speedup_vs_ours_' + key]:.2f}x), fused attention: auto {f['ours'].get('fused_attention')}, "
            f"{key} {r.get('fused_attention')}")
  for k, v in f.get("failed", {}).items():
    print(f"      {k}: FAILED: {v.splitlines()[-1][:150] if v else ''}")
p = load("profile_small.json")
if p and p.get("trace"):
  t = p["trace"]
  print(f"our Small step: {t.get('ops_per_step', 0):.0f} kernels per step, device busy "
        f"{t.get('device_busy_ms') or 0:.1f} ms, fused attention {p.get('fused', {}).get('fused_attention')}")
PY
