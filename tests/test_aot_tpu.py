"""launch/tpu_aot.py: ahead-of-time compilation of the real pretraining step, memory/FLOPs report, fit check."""

import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "launch", "tpu_aot.py")
# A 2-layer model small enough to compile in seconds.
TINY = ["--config=configs/pretrain.py:size=tiny", "--config.max_seq_length=64", "--config.model.hidden_size=64",
        "--config.model.intermediate_size=128", "--config.model.num_attention_heads=1", "--config.batch_size=8"]


def _load_tool():
  spec = importlib.util.spec_from_file_location("tpu_aot", TOOL)
  module = importlib.util.module_from_spec(spec)
  sys.modules["tpu_aot"] = module   # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _run(*args, timeout=600):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, TOOL, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _last_json(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


def test_parse_topology_accepts_libtpu_names_and_cpu():
  tool = _load_tool()
  assert tool.parse_topology("v5e:16x16") == ("v5e", "16x16")
  assert tool.parse_topology("v4:4x4x4") == ("v4", "4x4x4")
  assert tool.parse_topology("cpu:8") == ("cpu", "8")
  for bad in ("v5e-256", "v9:2x2", "v4:4", "cpu:0", "cpu:x"):
    with pytest.raises(tool.AotError):
      tool.parse_topology(bad)


def test_paper_step_counts_are_the_defaults():
  tool = _load_tool()
  cfg = lambda **kw: ml_collections.ConfigDict(kw)  # noqa: E731
  assert tool.steps_to_estimate(cfg(size="large", num_train_steps=1), []) == [400_000, 1_750_000]
  assert tool.steps_to_estimate(cfg(size="base", num_train_steps=1), []) == [766_000]
  assert tool.steps_to_estimate(cfg(size="tiny", num_train_steps=7), []) == [7]
  assert tool.steps_to_estimate(cfg(size="base", num_train_steps=1), ["1e5"]) == [100_000]
  with pytest.raises(tool.AotError):
    tool.steps_to_estimate(cfg(size="base", num_train_steps=1), ["many"])


@pytest.mark.slow
def test_cpu_mesh_report_and_fit_check():
  proc = _run(*TINY, "--topology=cpu:8", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--hbm_gib=4")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = _last_json(proc.stdout)
  assert r["devices"] == 8 and r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert r["per_device_batch"] == 2 and r["fits"] is True   # batch split over data x fsdp
  m = r["memory_per_device"]
  assert 0 < m["arguments_gib"] < m["peak_gib"] < 4
  # FLOPs come from electra_jax.train.flops, per device = total / devices.
  assert r["flops_per_device_per_step"] == pytest.approx(r["flops_per_step"] / 8)
  assert "memory per device" in proc.stdout
  # The same step does not fit in a tiny budget: exit 2 and a message that says so.
  tight = _run(*TINY, "--topology=cpu:8", "--hbm_gib=0.001")
  assert tight.returncode == 2, tight.stderr[-2000:]
  assert "does not fit" in tight.stderr and "GiB" in tight.stderr
  assert _last_json(tight.stdout)["fits"] is False


def test_bad_input_is_a_clear_error():
  bad_mesh = _run(*TINY, "--topology=cpu:8", "--config.mesh.fsdp=3")
  assert bad_mesh.returncode == 1 and "tpu_aot: error" in bad_mesh.stderr and "3" in bad_mesh.stderr
  bad_topo = _run(*TINY, "--topology=v5e-256")
  assert bad_topo.returncode == 1 and "expected <v4|v5e|v5p|v6e>" in bad_topo.stderr


@pytest.mark.slow
def test_tpu_topology_compiles_with_libtpu():
  tool = _load_tool()
  if not tool.libtpu_available():
    proc = _run(*TINY, "--topology=v5e:2x2")
    assert proc.returncode == 1 and "libtpu is not installed" in proc.stderr
    pytest.skip("libtpu is not installed (pip install -e '.[tpu-aot]'); checked the error message instead")
  proc = _run(*TINY, "--topology=v5e:2x2", "--config.dtype=bfloat16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = _last_json(proc.stdout)
  assert r["devices"] == 4 and "v5" in r["device_kind"].lower() and r["hbm_gib"] == 16 and r["fits"] is True
  assert r["estimates"] and r["estimates"][0]["days"] > 0
  assert r["step_seconds_at_mfu"] == pytest.approx(r["flops_per_step"] / (4 * 197e12 * 0.4))
