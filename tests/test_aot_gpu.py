"""launch/gpu_aot.py: the real pretraining step compiled for an NVIDIA GPU on this CPU host, its launches counted.

The compile needs the `gpu-aot` extra (JAX's CUDA plugin, ptxas, cuDNN). With it in the environment JAX would try to
open a GPU in every process, so it usually lives in a venv of its own: these tests run the tool with this
interpreter when it has the extra, else with $ELECTRA_GPU_AOT_PYTHON (e.g. /work/venv-gpu/bin/python), else skip.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "launch", "gpu_aot.py")
TINY = ["--config=configs/pretrain.py:size=tiny", "--config.dtype=bfloat16", "--config.scan_layers=false",
        "--config.model.num_hidden_layers=1", "--config.batch_size=4", "--config.max_seq_length=32"]


def _tool_module():
  sys.path.insert(0, os.path.dirname(TOOL))
  try:
    spec = importlib.util.spec_from_file_location("gpu_aot", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_aot"] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.remove(os.path.dirname(TOOL))


def _python_with_extra():
  try:
    if importlib.util.find_spec("jax_plugins.xla_cuda12") is not None:
      return sys.executable
  except ModuleNotFoundError:   # no jax_plugins package at all
    pass
  python = os.environ.get("ELECTRA_GPU_AOT_PYTHON", "")
  if python and shutil.which(python):
    return python
  pytest.skip("the gpu-aot extra is not installed (pip install -e '.[gpu-aot]' in a venv and set "
              "ELECTRA_GPU_AOT_PYTHON to its python)")


def _run(python, args, env_extra=None, timeout=900):
  env = dict(os.environ, **(env_extra or {}))
  env.pop("JAX_PLATFORMS", None)   # the tool sets the CPU itself
  return subprocess.run([python, TOOL, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


THUNKS = """\
000: kKernel       [source | next=001 (1)] loop_add_fusion_1 grid: [1, 1, 1] threads: [1, 1, 1]
001: kGemm         [prev=000 (1) | next=002 (1)] custom-call.3
002: kWhile        [prev=001 (1) | next=006 (1)]
condition:
    003: kKernel [source | sink] loop_compare_fusion_2 grid: [1, 1, 1] threads: [1, 1, 1]
  body:
    004: kCustomKernel [source | next=005 (1)] input_reduce_fusion_30 grid: [256, 1, 1] threads: [256, 1, 1]
    005: kCuDnn        [prev=004 (1) | sink] kCuDnn
006: kCopy         [prev=002 (1) | sink] kCopy
"""


def test_launches_count_loop_bodies_per_trip():
  gpu_aot = _tool_module()
  hlo = 'while(...), backend_config={"known_trip_count":{"n":"12"}}'
  got = gpu_aot.count_launches(THUNKS, hlo)
  # 3 outside the loop; the condition and the body's two thunks 12 times each
  assert got["launches_per_step"] == 3 + 12 * 3
  assert got["by_kind"] == {"kKernel": 13, "kCustomKernel": 12, "kCuDnn": 12, "kGemm": 1, "kCopy": 1}
  assert got["kernels_by_fusion"] == {"loop_add_fusion": 1, "loop_compare_fusion": 12, "input_reduce_fusion": 12}
  unknown = gpu_aot.count_launches(THUNKS, "")
  assert unknown["launches_per_step"] == 6 and unknown["unknown_trip_counts"] == 1


def test_unknown_target_is_one_line_error():
  r = _run(sys.executable, ["--config=configs/pretrain.py:size=tiny", "--target=gpu:a100"], timeout=300)
  assert r.returncode == 1 and "gpu_aot: error: --target='gpu:a100'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_compiles_the_step_for_an_h200_and_counts_its_launches(tmp_path):
  python = _python_with_extra()
  dump = tmp_path / "dump"
  # a user's XLA_FLAGS are kept: their dump folder is where the tool reads the thunk sequence from
  r = _run(python, [*TINY, "--target=gpu:h200", "--config.model.attention_probs_dropout_prob=0",
                    f"--json_out={tmp_path / 'r.json'}"], {"XLA_FLAGS": f"--xla_dump_to={dump}"})
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(r.stdout.strip().splitlines()[-1])
  assert report == json.loads((tmp_path / "r.json").read_text())
  assert report["device_kind"] == "NVIDIA H200 141GB HBM3e" and report["fits"] and report["hbm_gib"] > 140
  # forward and backward of the one layer of the generator and of the discriminator
  assert report["cudnn_attention"] and report["by_kind"]["kCuDnn"] == 4
  assert report["launches_per_step"] == sum(report["by_kind"].values()) > 50
  assert report["memory_per_device"]["peak_gib"] > 0
  assert list(dump.glob("*.thunk_sequence.txt")), "the user's dump folder holds the thunk sequence"
  assert "launches per step:" in r.stdout


def test_without_the_extra_one_line_error_naming_it():
  try:
    has_plugin = importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:
    has_plugin = False
  if has_plugin:
    pytest.skip("this interpreter has the gpu-aot extra")
  r = _run(sys.executable, ["--config=configs/pretrain.py:size=tiny", "--target=gpu:h200"], timeout=300)
  assert r.returncode == 1 and "gpu-aot" in r.stderr and "Traceback" not in r.stderr
