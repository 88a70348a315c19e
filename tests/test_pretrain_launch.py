"""launch/ scripts: valid bash, and they build the commands the pretraining binary expects (no cloud calls)."""

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/tpu_worker.sh", "launch/slurm_gpu.sbatch"]


def _bash(*args, **env):
  return subprocess.run(["bash", *args], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                        timeout=60, check=False)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
  proc = _bash("-n", script)
  assert proc.returncode == 0, proc.stderr


def test_local_dry_run_single_and_multi_process():
  one = _bash("launch/local.sh", "--config.num_train_steps=5", DRY_RUN="1", WORKDIR="/tmp/w")
  assert one.returncode == 0, one.stderr
  assert "-m electra_jax.train.pretrain --config=configs/pretrain.py:size=tiny --workdir=/tmp/w" in one.stdout
  assert "--config.num_train_steps=5" in one.stdout
  two = _bash("launch/local.sh", DRY_RUN="1", NPROC="2", PORT="4321", SIZE="small", WORKDIR="/tmp/w",
              JAX_PLATFORMS="cpu")
  lines = two.stdout.strip().splitlines()
  assert len(lines) == 2, two.stdout + two.stderr
  for i, line in enumerate(lines):
    assert "size=small" in line and "--coordinator_address=localhost:4321" in line
    assert "--num_processes=2" in line and f"--process_id={i}" in line


def test_tpu_pod_and_slurm_refuse_bad_usage():
  usage = _bash("launch/tpu_pod.sh", TPU_NAME="t", ZONE="z")
  assert usage.returncode == 2 and "usage" in usage.stderr
  missing = _bash("launch/tpu_pod.sh", "run")
  assert missing.returncode != 0 and "TPU_NAME" in missing.stderr
  worker = _bash("launch/tpu_worker.sh")
  assert worker.returncode == 2 and "usage" in worker.stderr
  slurm = _bash("launch/slurm_gpu.sbatch", SLURM_SUBMIT_DIR="/")
  assert slurm.returncode == 2 and "repository root" in slurm.stderr
