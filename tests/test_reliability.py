"""The fault and bad-input probes of issue 20, one test (or more) per numbered failure: each reproduces the probe and
checks the behaviour the issue asks for."""

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from electra_jax import checkpointing
from electra_jax.checkpointing import CheckpointError, Checkpointer, integrity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, stdin=None, timeout=300, cwd=REPO):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                        cwd=cwd, env=env, check=False)


# ================================================================================================ 1. corrupt bytes
def _state(scale: float):
  rng = np.random.RandomState(0)
  params = {"emb": jnp.asarray(rng.randn(3000, 64).astype(np.float32) * scale), "bias": jnp.ones(64) * scale}
  return params, optax.adam(1e-3).init(params)


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _xor_largest_params_file(step_dir: str, nbytes: int = 64) -> str:
  """The issue's probe: XOR `nbytes` bytes in the middle of the largest file of params/ocdbt.process_0/d/."""
  files = glob.glob(os.path.join(step_dir, "params", "ocdbt.process_0", "d", "*"))
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.seek(os.path.getsize(big) // 2)
    chunk = f.read(nbytes)
    f.seek(os.path.getsize(big) // 2)
    f.write(bytes(b ^ 0xA5 for b in chunk))
  return big


def _two_steps(directory: str) -> None:
  with Checkpointer(directory, handle_sigterm=False, model_meta={"kind": "test"}) as ckpt:
    for step in (1, 2):
      ckpt.save(step, *_state(float(step)), {"loader": {"next_step": step}})


def test_fingerprints_agree_between_numpy_and_sharded_jax_and_catch_one_bit():
  mesh = jax.make_mesh((2, 4), ("a", "b"))
  host = {"w": np.random.RandomState(1).randn(16, 8).astype(np.float32), "n": np.arange(7, dtype=np.int32)}
  record = integrity.fingerprints(host)
  on_device = {"w": jax.device_put(host["w"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", "b"))),
               "n": jnp.asarray(host["n"])}
  assert integrity.verify(record, on_device, "params") == []
  flipped = dict(host, w=host["w"].copy())
  flipped["w"].view(np.uint32)[5, 3] ^= 1 << 7          # one mantissa bit: the value barely moves
  assert integrity.verify(record, flipped, "params") == [
      f"params['w']: values differ from what was saved (fingerprint "
      f"{integrity.fingerprints(flipped)['''['w']'''][2]}, saved {record['''['w']'''][2]})"]


def test_flipped_bytes_in_the_newest_step_are_detected_set_aside_and_the_previous_step_used(tmp_path, caplog):
  d = str(tmp_path / "ckpt")
  _two_steps(d)
  _xor_largest_params_file(os.path.join(d, "2"))
  params, opt = _state(1.0)
  with caplog.at_level(logging.WARNING):
    with Checkpointer(d, handle_sigterm=False) as ckpt:
      restored = ckpt.restore(_abstract(params), _abstract(opt))
  assert restored.step == 1
  np.testing.assert_array_equal(np.asarray(restored.params["emb"]), np.asarray(params["emb"]))
  warning = next(r.getMessage() for r in caplog.records if "corrupt" in r.getMessage())
  assert f"{d}/2" in warning                                    # reported by step and path
  assert glob.glob(os.path.join(d, "2.unreadable-*"))            # moved aside


def test_flipped_bytes_are_refused_by_load_params_and_convert(tmp_path):
  d = str(tmp_path / "ckpt")
  _two_steps(d)
  _xor_largest_params_file(os.path.join(d, "2"))
  _, params = checkpointing.load_params(d)                       # conversion / fine-tuning init: previous step
  np.testing.assert_array_equal(params["emb"], np.asarray(_state(1.0)[0]["emb"]))
  assert os.path.isdir(os.path.join(d, "2"))                     # a read-only tool leaves it where it is
  with pytest.raises(CheckpointError, match=r"ckpt/2 cannot be used: corrupt: params\['emb'\]"):
    checkpointing.load_params(d, step=2)
  # The last step: convert orbax_to_hf on a corrupt step exported NaN and exited 0.
  from electra_jax import modeling  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  cfg = modeling.ElectraConfig(vocab_size=3000, embedding_size=64, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=1, intermediate_size=32, max_position_embeddings=16)
  model = modeling.ElectraForPreTraining(cfg, rngs=nnx.Rngs(0))
  one = checkpointing.save_params(str(tmp_path / "one"), checkpointing.head_meta("ElectraForPreTraining", cfg),
                                  nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  _xor_largest_params_file(os.path.join(one, "0"), 256)
  proc = _cli("electra_jax.convert", "orbax_to_hf", f"--checkpoint={one}", f"--out={tmp_path / 'hf'}")
  assert proc.returncode != 0
  assert "corrupt" in proc.stderr and "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "hf" / "model.safetensors")


def test_a_step_saved_without_fingerprints_is_checked_for_nan(tmp_path):
  d = str(tmp_path / "ckpt")
  _two_steps(d)
  params, opt = _state(2.0)
  params = dict(params, bias=params["bias"].at[3].set(jnp.nan))
  with Checkpointer(d, handle_sigterm=False) as ckpt:
    ckpt.save(3, params, opt, {})
  shutil.rmtree(os.path.join(d, "3", "integrity"))               # as a checkpoint written before fingerprints
  with Checkpointer(d, handle_sigterm=False) as ckpt:
    assert ckpt.restore(_abstract(params), _abstract(opt)).step == 2


# ================================================================================================ 3. workdir lock
_HOLD = """
import sys, time
from electra_jax.checkpointing import WorkdirLock
with WorkdirLock(sys.argv[1], primary=True):
  print("held", flush=True)
  time.sleep(600)
"""


def _holder(workdir):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(workdir)], stdout=subprocess.PIPE, text=True, env=env)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_live_lock_is_refused_naming_its_holder_and_a_dead_one_is_taken_over(tmp_path):
  import socket  # pylint: disable=import-outside-toplevel
  from electra_jax.checkpointing import WorkdirBusyError, WorkdirLock  # pylint: disable=import-outside-toplevel
  work = tmp_path / "work"
  other = _holder(work)
  try:
    with pytest.raises(WorkdirBusyError, match=rf"in use by pid {other.pid} on host {socket.gethostname()}"):
      with WorkdirLock(work, primary=True):
        pass
  finally:
    other.kill()   # as a killed run: the lock file stays behind
    other.wait()
  lock_file = work / "electra.lock"
  assert json.loads(lock_file.read_text())["pid"] == other.pid
  with WorkdirLock(work, primary=True):   # stale: taken over
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
  assert not lock_file.exists()           # released
  # Another host's lock cannot be checked from here: refused, with how to remove it.
  lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
  with pytest.raises(WorkdirBusyError, match="pid 1 on host elsewhere.*if that run is dead, remove"):
    with WorkdirLock(work, primary=True):
      pass


def test_two_processes_racing_for_a_stale_lock_one_wins(tmp_path):
  work = tmp_path / "work"
  work.mkdir()
  (work / "electra.lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 2 ** 22 + 7,
                                                  "started": "long ago"}))
  script = ("import sys, time\nfrom electra_jax.checkpointing import WorkdirLock, WorkdirBusyError\n"
            "try:\n  with WorkdirLock(sys.argv[1], primary=True):\n    print('won', flush=True); time.sleep(3)\n"
            "except WorkdirBusyError as e:\n  print('refused', flush=True)\n")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(work)], stdout=subprocess.PIPE, text=True, env=env)
           for _ in range(2)]
  outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
  assert outcomes == ["refused", "won"]
