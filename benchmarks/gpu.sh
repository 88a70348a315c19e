#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one command, on a machine with one NVIDIA GPU:
#
#     ELECTRA_DATA_DIR=/path/to/data bash benchmarks/gpu.sh OUT_DIR
#
# Needs this repository's Python dependencies with a CUDA build of jax and of torch (and transformers). Runs, each
# under a time limit (STEP_TIMEOUT seconds, default 300) so that one failure does not stop the rest:
#   1. pretraining, ELECTRA-Small at the paper's batch (128 x 128), bfloat16 on both sides, against HF PyTorch;
#   2. the pretraining binary itself for 60 steps (configs/pretrain.py:size=small: scanned layers, bfloat16, Orbax
#      checkpoints at steps 30 and 60, HF export) on the WikiText-2 text in ELECTRA_DATA_DIR;
#   3. fine-tuning and inference, ELECTRA-Base, batch 32 x 128 (GLUE's shape), bfloat16, against HF PyTorch;
#   4. pretraining, ELECTRA-Base, batch 32 x 512, bfloat16, against HF PyTorch;
#   5. pretraining, ELECTRA-Small, batch 128 x 128, float32 with TensorFloat-32 products on both sides.
# Each benchmark writes OUT_DIR/NAME.json (figures and raw results); the logs go to stdout.
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}
limit=${STEP_TIMEOUT:-300}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

logs=$(mktemp -d)
bench() {  # bench NAME SCRIPT ARGS...: the report table on stdout, figures in OUT_DIR/NAME.json
  local name=$1 script=$2 rc
  shift 2
  echo "== $name: benchmarks/$script $*"
  timeout "$limit" "$py" "benchmarks/$script" "$@" --json_out="$out/$name.json" >"$logs/$name.log" 2>&1
  rc=$?
  grep -v '^{' "$logs/$name.log" | grep -v -i "warning" | tail -n 30
  [ "$rc" -eq 0 ] || echo "== $name: exit $rc (124: over $limit s)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__)"

bench small_bf16 pretrain.py --platform=gpu --size=small --batch_size=128 --seq_len=128 --dtype=bfloat16 \
  --peers=torch --steps=20 --warmup=5

data=${ELECTRA_DATA_DIR:-../shared/data}
echo "== pretraining binary: configs/pretrain.py:size=small, 60 steps"
rm -rf /tmp/electra_gpu_smoke
timeout "$limit" "$py" -m electra_jax.train.pretrain --config=configs/pretrain.py:size=small \
  --workdir=/tmp/electra_gpu_smoke --config.num_train_steps=60 --config.log_every_steps=20 \
  --config.checkpoint_every_steps=30 --config.data.corpus="$data/corpus/wikitext-2-raw" \
  --config.data.vocab_file="$data/vocab/bert-base-uncased-vocab.txt" --config.data.num_build_processes=4 \
  >"$logs/binary.log" 2>&1
rc=$?
grep -E "step |compiled|checkpoint|export|peak|Error|error" "$logs/binary.log" | cut -c 1-240 | tail -n 25
[ "$rc" -eq 0 ] || { echo "== pretraining binary: exit $rc"; tail -n 20 "$logs/binary.log"; }
ls /tmp/electra_gpu_smoke /tmp/electra_gpu_smoke/export/discriminator 2>&1 | head -20

bench base_finetune_bf16 finetune.py --platform=gpu --size=base --batch_size=32 --seq_len=128 --dtype=bfloat16 \
  --peers=torch --steps=20 --warmup=5
bench base_bf16 pretrain.py --platform=gpu --size=base --batch_size=32 --seq_len=512 --dtype=bfloat16 \
  --peers=torch --steps=10 --warmup=3
bench small_tf32 pretrain.py --platform=gpu --size=small --batch_size=128 --seq_len=128 --f32_matmul=tf32 \
  --peers=torch --steps=20 --warmup=5
