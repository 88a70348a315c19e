"""Two processes joined by jax.distributed (CPU collectives, localhost coordinator) train the same steps as one process;
and when `maybe_initialize` initialises at all."""

import os
import socket
import subprocess

import numpy as np
import pytest

from electra_jax.runtime import distributed
from tests.test_pretrain_e2e import REPO, checkpoint_steps, child_env, command, losses, records
from tests.conftest import shared_data


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  shared_data("corpus/wikitext-2-raw")
  cache, data = str(tmp_path / "jax_cache"), str(tmp_path / "data")
  args = ["--config.num_train_steps=6", "--config.log_every_steps=1", "--config.checkpoint_every_steps=3",
          "--config.mesh.fsdp=2"]   # 4 devices: data=2 x fsdp=2, so parameters are sharded across the processes
  fast = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}   # quicker compiles; both runs use it
  port = _free_port()
  multi = str(tmp_path / "two_processes")
  procs = []
  for pid in range(2):
    cmd = command(multi, data, *args, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                  f"--process_id={pid}")
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=child_env(cache, devices=2, **fast), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  single = str(tmp_path / "one_process")
  one = subprocess.run(command(single, data, *args), cwd=REPO, env=child_env(cache, devices=4, **fast),
                       capture_output=True, text=True, timeout=600, check=False)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for pid, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, (pid, out[-4000:])
  assert one.returncode == 0, one.stderr[-4000:]
  assert "process 1 of 2, 2 local / 4 global devices" in outs[1]
  got, want = losses(multi), losses(single)
  assert sorted(got) == list(range(1, 7))
  np.testing.assert_allclose([got[s] for s in range(1, 7)], [want[s] for s in range(1, 7)], rtol=1e-6)
  assert [r["step"] for r in records(multi)] == list(range(1, 7))   # only process 0 writes metrics
  assert checkpoint_steps(multi) == [3, 6]
  assert os.path.isfile(os.path.join(multi, "export", "discriminator", "model.safetensors"))


def test_maybe_initialize_decides_from_flags_and_environment(monkeypatch):
  for name in ("ELECTRA_JAX_DISTRIBUTED", "SLURM_NTASKS", "SLURM_STEP_ID", "JAX_COORDINATOR_ADDRESS",
               "TPU_WORKER_HOSTNAMES", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  reason = distributed._reason_to_initialize  # pylint: disable=protected-access
  assert reason(None) is None
  assert distributed.maybe_initialize() is False          # one host: nothing to do
  assert reason("localhost:1234") == "coordinator address given"
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0")
  assert reason(None) is None                              # a single-host TPU VM
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0,t1k-w-1")
  assert reason(None) == "multi-host Cloud TPU slice"
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  monkeypatch.setenv("SLURM_STEP_ID", "0")
  assert reason(None) is None                              # one SLURM task
  monkeypatch.setenv("SLURM_NTASKS", "8")
  assert reason(None) == "SLURM job step with several tasks"
  monkeypatch.delenv("SLURM_NTASKS")
  monkeypatch.setenv("ELECTRA_JAX_DISTRIBUTED", "1")
  assert reason(None) == "ELECTRA_JAX_DISTRIBUTED is set"
  monkeypatch.delenv("ELECTRA_JAX_DISTRIBUTED")
  with pytest.raises(ValueError, match="num_processes"):
    distributed.maybe_initialize("localhost:1234")
