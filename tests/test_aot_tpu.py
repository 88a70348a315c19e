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
  # The arguments split into this device's shards of the parameters and of the AdamW state (mu and nu: twice the
  # parameters' bytes, which fsdp x tensor = 4 ways shard except for small replicated vectors), and the rest.
  n_bytes = r["num_params"] * 4 / 2**30
  assert n_bytes / 4 <= m["params_gib"] < n_bytes / 2
  assert m["opt_state_gib"] == pytest.approx(2 * m["params_gib"], rel=0.01)
  assert m["params_gib"] + m["opt_state_gib"] + m["other_arguments_gib"] == pytest.approx(m["arguments_gib"])
  assert 0 < m["other_arguments_gib"] < 0.001 and m["unaliased_outputs_gib"] < 0.001   # the state is donated
  assert r["fused_attention"] is False and r["kernels"]["kernel_calls"] == {}
  assert "optimizer state (this chip's shards)" in proc.stdout and "fused attention kernel: no" in proc.stdout
  # FLOPs come from electra_jax.train.flops, per device = total / devices.
  assert r["flops_per_device_per_step"] == pytest.approx(r["flops_per_step"] / 8)
  assert "memory per device" in proc.stdout
  # The same step does not fit in a tiny budget: exit 2 and a message that says so.
  tight = _run(*TINY, "--topology=cpu:8", "--hbm_gib=0.001")
  assert tight.returncode == 2, tight.stderr[-2000:]
  assert "does not fit" in tight.stderr and "GiB" in tight.stderr
  assert _last_json(tight.stdout)["fits"] is False


def test_fused_kernels_are_read_from_the_hlo():
  from electra_jax.runtime import compile as compile_lib  # pylint: disable=import-outside-toplevel
  gemm = ('  %gemm.1 = bf16[8,8]{1,0} custom-call(%a, %b), custom_call_target="__cublas$gemm", '
          'metadata={op_name="jit(step)/attention/dot_general"}')
  mosaic = ('  %custom-call.3 = bf16[8,8,64]{2,1,0} custom-call(%q, %k, %v), custom_call_target="tpu_custom_call", '
            'backend_config={"custom_call_config": {"name": "flash_attention_fwd"}}')
  # splash attention as libtpu's optimized HLO has it: the instruction named after the Pallas kernel, the metadata on
  # a later line
  splash = ('  %splash_mha_dq_segmented_no_residuals.4 = bf16[2,12,512,64]{3,2,1,0:T(8,128)(2,1)} custom-call(%c, %q, '
            '%k, %v), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,1,1]{2,1,0}}, '
            'frontend_attributes={kernel_metadata={')
  other = ('  %custom-call.4 = f32[8]{0} custom-call(%x), custom_call_target="tpu_custom_call", '
           'metadata={op_name="norm"}')
  cudnn = '  %fmha = (bf16[2,8,64]{2,1,0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmaxDropout"'
  assert compile_lib.fused_kernels(gemm) == {"fused_attention": False, "attention_kernel_calls": 0,
                                             "attention_kernels": {}, "kernel_calls": {}}
  out = compile_lib.fused_kernels("\n".join([gemm, mosaic, other, mosaic, splash, splash]))
  assert out == {"fused_attention": True, "attention_kernel_calls": 4,
                 "attention_kernels": {"flash_attention_fwd": 2, "splash_mha_dq_segmented_no_residuals": 2},
                 "kernel_calls": {"tpu_custom_call": 5}}
  assert compile_lib.fused_kernels(other)["fused_attention"] is False
  assert compile_lib.fused_kernels(cudnn)["kernel_calls"] == {"__cudnn$fmhaSoftmaxDropout": 1}
  assert compile_lib.fused_kernels(cudnn)["attention_kernels"] == {"__cudnn$fmhaSoftmaxDropout": 1}


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
  # Without attention dropout, kernels=auto gives the TPU JAX's splash attention: the report names its kernels.
  proc = _run(*TINY, "--topology=v5e:2x2", "--config.model.dtype=bfloat16", "--config.model.attention_probs_dropout_prob=0")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = _last_json(proc.stdout)
  assert r["devices"] == 4 and "v5" in r["device_kind"].lower() and r["hbm_gib"] == 16 and r["fits"] is True
  assert r["estimates"] and r["estimates"][0]["days"] > 0
  assert r["step_seconds_at_mfu"] == pytest.approx(r["flops_per_step"] / (4 * 197e12 * 0.4))
  assert r["fused_attention"] is True and "fused attention kernel: yes" in proc.stdout
  for kernel in ("splash_mha_fwd", "splash_mha_dq", "splash_mha_dkv"):   # forward and both backward kernels
    assert any(name.startswith(kernel) for name in r["attention_kernels"]), r["attention_kernels"]
  assert "splash_mha_fwd" in proc.stdout
  # Two slices: data = 0 is one per slice (data parallelism across them), fsdp the 4 chips of each.
  two = _run(*TINY, "--topology=v5e:2x2", "--num_slices=2", "--config.mesh.data=0", "--config.mesh.fsdp=-1")
  assert two.returncode == 0, two.stderr[-3000:]
  r2 = _last_json(two.stdout)
  assert r2["fused_attention"] is False   # attention dropout 0.1: XLA's attention (splash has no dropout)
  assert r2["num_slices"] == 2 and r2["devices"] == 8 and r2["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  assert r2["memory_per_device"]["params_gib"] < r["memory_per_device"]["params_gib"]   # now sharded 4 ways
  across = _run(*TINY, "--topology=v5e:2x2", "--num_slices=2", "--config.mesh.data=1", "--config.mesh.fsdp=-1")
  assert across.returncode == 1 and "multiple of 2" in across.stderr
