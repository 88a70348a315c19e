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


def test_flipped_bytes_are_refused_by_load_params(tmp_path):
  d = str(tmp_path / "ckpt")
  _two_steps(d)
  _xor_largest_params_file(os.path.join(d, "2"))
  _, params = checkpointing.load_params(d)                       # conversion / fine-tuning init: previous step
  np.testing.assert_array_equal(params["emb"], np.asarray(_state(1.0)[0]["emb"]))
  assert os.path.isdir(os.path.join(d, "2"))                     # a read-only tool leaves it where it is
  with pytest.raises(CheckpointError, match=r"ckpt/2 cannot be used: corrupt: params\['emb'\]"):
    checkpointing.load_params(d, step=2)


@pytest.mark.slow
def test_convert_refuses_a_corrupt_checkpoint(tmp_path):
  """The issue's probe ended with convert orbax_to_hf exporting NaN embeddings and exiting 0."""
  from electra_jax import modeling  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  cfg = modeling.ElectraConfig(vocab_size=3000, embedding_size=64, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=1, intermediate_size=32, max_position_embeddings=16)
  model = modeling.ElectraForPreTraining(cfg, rngs=nnx.Rngs(0))
  one = checkpointing.save_params(str(tmp_path / "one"), checkpointing.head_meta("ElectraForPreTraining", cfg),
                                  nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  _xor_largest_params_file(os.path.join(one, "0"), 256)
  proc = _cli("electra_jax.convert", "orbax_to_hf", f"--checkpoint={one}", f"--out={tmp_path / 'hf'}")
  _one_line_error(proc, 1, "convert: error:", "corrupt")
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
# The lock module alone (not the package, which imports JAX and Orbax): the child processes start in a blink.
_IMPORT_LOCK = ("import importlib.util, sys\n"
                f"spec = importlib.util.spec_from_file_location('lock', {os.path.join(REPO, 'electra_jax', 'checkpointing', 'lock.py')!r})\n"
                "lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)\n")
_HOLD = _IMPORT_LOCK + """
import time
with lock.WorkdirLock(sys.argv[1], primary=True):
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
  script = _IMPORT_LOCK + ("import time\ntime.sleep(0.5)\n"   # both past their start-up before racing
                           "try:\n  with lock.WorkdirLock(sys.argv[1], primary=True):\n"
                           "    print('won', flush=True); time.sleep(2)\n"
                           "except lock.WorkdirBusyError as e:\n  print('refused', flush=True)\n")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(work)], stdout=subprocess.PIPE, text=True, env=env)
           for _ in range(2)]
  outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
  assert outcomes == ["refused", "won"]


# ================================================================================================ 2, 3, 5: the pretraining binary
@pytest.fixture(scope="module")
def pre(tmp_path_factory):
  from tests.conftest import shared_data  # pylint: disable=import-outside-toplevel
  shared_data("corpus/wikitext-2-raw")
  root = tmp_path_factory.mktemp("reliability_pretrain")
  return {"root": root, "jax_cache": str(root / "jax_cache"), "data": str(root / "data")}


def _pretrain(pre, workdir, *overrides, background_log=None):
  from tests import test_pretrain_e2e as e2e  # pylint: disable=import-outside-toplevel
  cmd = e2e.command(str(workdir), pre["data"], "--config.num_train_steps=4", "--config.checkpoint_every_steps=2",
                    "--config.log_every_steps=1", "--config.export=false", *overrides)
  if background_log:
    return e2e.start(cmd, e2e.child_env(pre["jax_cache"]), background_log)
  return e2e.run(cmd, e2e.child_env(pre["jax_cache"]))


def _files(workdir):
  return {os.path.relpath(os.path.join(d, f), workdir): open(os.path.join(d, f), "rb").read()
          for d, _, names in os.walk(workdir) for f in names if "events.out" not in f}


@pytest.mark.slow
def test_a_refused_run_leaves_the_workdir_as_it_was(pre, tmp_path):
  """Probe 2: a rerun with another hidden size exits 1, and config.json / checkpoints/model_config.json (which a
  later fine-tuning reads) still describe the checkpoints."""
  work = tmp_path / "work"
  first = _pretrain(pre, work)
  assert first.returncode == 0, first.stderr[-3000:]
  before = _files(work)
  refused = _pretrain(pre, work, "--config.model.hidden_size=32", "--config.model.intermediate_size=128")
  assert refused.returncode == 1
  assert "does not fit the model" in refused.stderr and "Traceback" not in refused.stderr
  assert _files(work) == before
  model = checkpointing.load_model(str(work))      # what fine-tuning initialisation reads: consistent
  assert model.discriminator.config.hidden_size == 64


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_is_refused_naming_the_holder(pre, tmp_path):
  """Probe 3: two runs on one workdir at once; the second refuses (host, pid); after a kill, the lock is taken over."""
  import signal, socket  # pylint: disable=import-outside-toplevel,multiple-imports
  from tests import test_pretrain_e2e as e2e  # pylint: disable=import-outside-toplevel
  work = tmp_path / "work"
  first = _pretrain(pre, work, "--config.num_train_steps=100000", background_log=str(tmp_path / "first.log"))
  try:
    e2e.wait_for(lambda: (work / "electra.lock").exists() and e2e.records(str(work)), first, "the first run's steps")
    second = _pretrain(pre, work, "--config.seed=1")
    assert second.returncode == 1, second.stderr[-3000:]
    assert f"in use by pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None                      # the first run goes on
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  assert (work / "electra.lock").exists()            # left behind by the killed run
  third = _pretrain(pre, work, "--config.num_train_steps=6")
  assert third.returncode == 0, third.stderr[-3000:]
  assert not (work / "electra.lock").exists()


@pytest.mark.slow
def test_no_silent_restart_after_every_checkpoint_proved_unreadable(pre, tmp_path):
  """Probe 5: once every step was set aside as unreadable (exit 1), the same command refuses instead of starting
  from step 0 and truncating metrics.jsonl, until --config.restart_from_scratch=true."""
  work = tmp_path / "work"
  assert _pretrain(pre, work).returncode == 0
  for data_file in glob.glob(str(work / "checkpoints" / "*" / "params" / "ocdbt.process_0" / "d" / "*")):
    os.remove(data_file)
  failed = _pretrain(pre, work)
  assert failed.returncode == 1 and "no readable checkpoint" in failed.stderr
  assert "Event loop is closed" not in failed.stderr and "Task exception was never retrieved" not in failed.stderr
  metrics_before = (work / "metrics.jsonl").read_text()
  again = _pretrain(pre, work)
  assert again.returncode == 1, again.stderr[-3000:]
  assert "refusing to start this run over from step 0" in again.stderr and "restart_from_scratch" in again.stderr
  assert (work / "metrics.jsonl").read_text() == metrics_before
  restarted = _pretrain(pre, work, "--config.restart_from_scratch=true")
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  assert "starting from scratch" in restarted.stderr
  kept = glob.glob(str(work / "metrics.jsonl.before-restart-*"))
  assert len(kept) == 1 and open(kept[0]).read() == metrics_before
  assert [json.loads(l)["step"] for l in (work / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


# ================================================================================================ 6. fine-tuning
@pytest.mark.slow
def test_finetuning_killed_after_its_last_checkpoint_is_scored_on_rerun(tmp_path, monkeypatch):
  """Probe 6: the rerun of a trial killed after its final checkpoint wrote "final_train_loss": NaN into results.json
  and never wrote its dev record into metrics.jsonl."""
  from electra_jax.train import finetune_lib, metrics  # pylint: disable=import-outside-toplevel
  from tests.test_finetune import tiny_glue_config  # pylint: disable=import-outside-toplevel
  config = tiny_glue_config("rte", max_train_examples=16, max_eval_examples=8, predict_test=False)
  _, adapter, mesh, rules = finetune_lib.setup(config)
  spec, init_kind, meta = finetune_lib.model_spec(config, adapter)
  train, _ = adapter.train_arrays()
  eval_sets = adapter.eval_sets(include_test=False)
  steps = finetune_lib.Steps(spec, adapter, mesh, rules, config=config, num_train_steps=6)
  init = lambda: finetune_lib.init_values(spec, config, init_kind, meta, steps.shapes)  # noqa: E731
  trial = str(tmp_path / "seed_0")

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed while scoring")

  with monkeypatch.context() as m:
    m.setattr(finetune_lib, "evaluate_sets", killed)
    with pytest.raises(KeyboardInterrupt):
      finetune_lib.run_trial(config, trial, 0, steps, train, eval_sets, 6, init)
  logged = metrics.read_metrics(trial)
  assert [r["step"] for r in logged] == list(range(1, 7)) and not any("dev/accuracy" in r for r in logged)

  for _ in range(2):   # the rerun scores the trial; a third run adds nothing
    result = finetune_lib.run_trial(config, trial, 0, steps, train, eval_sets, 6, init)
    with open(os.path.join(trial, "results.json"), encoding="utf-8") as f:
      written = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"results.json holds {c}"))
    assert written["final_train_loss"] == pytest.approx(logged[-1]["loss"])
    assert result["final_train_loss"] == pytest.approx(logged[-1]["loss"])
    dev_records = [r for r in metrics.read_metrics(trial) if "dev/accuracy" in r]
    assert [r["step"] for r in dev_records] == [6]
    assert dev_records[0]["dev/accuracy"] == pytest.approx(result["metrics"]["dev"]["accuracy"])
  # the checkpoint records the tokenizer, so predict and convert need no --vocab_file
  assert checkpointing.read_model_config(trial)["tokenizer"]["vocab_file"] == os.path.abspath(config.vocab_file)


@pytest.mark.slow
def test_a_deleted_checkpoint_file_falls_back_in_a_few_lines(pre, tmp_path):
  """Probe 7 (last case): a deleted file in the newest step fell back correctly but printed thousands of lines of
  'Event loop is closed' tracebacks from the reads Orbax had in flight."""
  work = tmp_path / "work"
  assert _pretrain(pre, work).returncode == 0
  for data_file in glob.glob(str(work / "checkpoints" / "4" / "params" / "ocdbt.process_0" / "d" / "*")):
    os.remove(data_file)
  resumed = _pretrain(pre, work, "--config.num_train_steps=8")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming at step 2" in resumed.stderr and f"{work}/checkpoints/4 is incomplete or corrupt" in resumed.stderr
  assert "Event loop is closed" not in resumed.stderr and "Task exception was never retrieved" not in resumed.stderr
  assert "Traceback" not in resumed.stderr


def test_abandoned_read_futures_are_dropped_from_asyncio_logs_and_other_errors_kept(monkeypatch):
  """The CI failure behind the test above: a TensorStore future completed with a read error and never awaited is
  logged by asyncio as "Future exception was never retrieved", with no traceback to name Orbax. Checked with real
  asyncio futures: read errors are dropped, any other unretrieved exception still reaches the log."""
  import asyncio
  import gc
  from electra_jax.checkpointing.quiet import _OrbaxReadTaskFilter

  asyncio_logger = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_logger, "filters", [_OrbaxReadTaskFilter()])
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  asyncio_logger.addHandler(handler)
  try:
    def abandon(exc):
      loop = asyncio.new_event_loop()
      future = loop.create_future()
      future.set_exception(exc)
      del future
      gc.collect()
      loop.close()

    abandon(ValueError('FAILED_PRECONDITION: Error reading "emb/0.0" in OCDBT database at local file "/w/4/params/"'))
    abandon(Exception("Encountered error while reading array index. See full TensorStore details: <...>"))
    # asyncio.gather's own future (the third form, met in a full run: "_GatheringFuture exception was never retrieved")
    loop = asyncio.new_event_loop()
    child = loop.create_future()
    gathered = asyncio.gather(child)
    child.set_exception(ValueError('Error reading "emb/0.0" in OCDBT database'))
    loop.run_until_complete(asyncio.sleep(0))
    child.exception()   # the child's error is retrieved; only the gathering future's is left
    del gathered, child
    gc.collect()
    loop.close()
    assert records == []
    abandon(ValueError("a bug of ours"))
    assert [r.getMessage().splitlines()[0] for r in records] == ["Future exception was never retrieved"]
  finally:
    asyncio_logger.removeHandler(handler)


def test_abandoned_read_noise_is_dropped_only_inside_the_restore(monkeypatch):
  """The filter is scoped to the fallback restore: inside the block an abandoned read's "Event loop is closed" is
  dropped and anything else passes; after it, the process's own hook and asyncio's log see every record again (a
  later background Orbax failure must not be hidden)."""
  import types
  from electra_jax.checkpointing.quiet import abandoned_reads_silenced

  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  asyncio_logger = logging.getLogger("asyncio")
  filters_before = list(asyncio_logger.filters)

  def unraisable(message):
    return types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError(message), exc_traceback=None,
                                 err_msg=None, object=None)

  closed, ours = unraisable("Event loop is closed"), unraisable("a bug of ours")
  with abandoned_reads_silenced():
    assert len(asyncio_logger.filters) == len(filters_before) + 1
    sys.unraisablehook(closed)
    sys.unraisablehook(ours)
  assert seen == [ours]
  assert sys.unraisablehook == seen.append and asyncio_logger.filters == filters_before
  sys.unraisablehook(closed)
  assert seen == [ours, closed]
  with pytest.raises(KeyError), abandoned_reads_silenced():   # removed when the restore raises, too
    raise KeyError("x")
  assert sys.unraisablehook == seen.append and asyncio_logger.filters == filters_before


# ================================================================================================ 7. one line, no traceback
def _one_line_error(proc, status, *fragments):
  assert proc.returncode == status, (proc.returncode, proc.stderr[-2000:])
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("I1", "I0", "W1", "W0"))]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_flag_mistakes_are_one_line_and_help_exits_zero(tmp_path):
  cfg = "--config=configs/pretrain.py:size=tiny"
  _one_line_error(_cli("electra_jax.train.pretrain", cfg, f"--workdir={tmp_path}", "--config.batch_sizee=4"), 2,
                  "pretrain: error: --config.batch_sizee: no such config field; did you mean batch_size?")
  _one_line_error(_cli("electra_jax.train.pretrain", "--config=configs/pretrain.py:size=huge", f"--workdir={tmp_path}"),
                  2, "size='huge': must be one of ['base', 'large', 'small', 'tiny']")
  _one_line_error(_cli("electra_jax.train.finetune", "--config=configs/glue.py:task=sst2"), 2,
                  "--workdir is required")
  assert not os.listdir(tmp_path)
  helped = _cli("electra_jax.train.finetune", "--help")
  assert helped.returncode == 0 and "--config_help" in helped.stdout and "configs/glue.py" in helped.stdout
  fields = _cli("electra_jax.train.pretrain", cfg, "--config_help")
  assert fields.returncode == 0 and "--config.batch_size=16" in fields.stdout


@pytest.mark.slow
def test_every_binary_answers_help_with_status_zero():
  for module in ("electra_jax.train.pretrain", "electra_jax.train.finetune", "electra_jax.eval.evaluate",
                 "electra_jax.eval.predict", "electra_jax.convert", "electra_jax.data.pretraining",
                 "electra_jax.quickstart"):
    proc = _cli(module, "--help")
    assert proc.returncode == 0 and "flags:" in proc.stdout, (module, proc.stderr[-1000:])


def _tiny_hf_folder(path):
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from electra_jax import convert, modeling  # pylint: disable=import-outside-toplevel
  from tests.conftest import shared_data  # pylint: disable=import-outside-toplevel
  cfg = modeling.ElectraConfig(vocab_size=30522, embedding_size=16, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=1, intermediate_size=32, max_position_embeddings=64,
                               id2label={0: "negative", 1: "positive"})
  model = modeling.ElectraForSequenceClassification(cfg, rngs=nnx.Rngs(0))
  return convert.to_hf(model, str(path), vocab_file=str(shared_data("vocab/bert-base-uncased-vocab.txt")))


@pytest.mark.slow
def test_bad_files_are_one_line(tmp_path):
  from electra_jax import convert  # pylint: disable=import-outside-toplevel
  hf = _tiny_hf_folder(tmp_path / "hf")
  truncated = tmp_path / "truncated"
  shutil.copytree(hf, truncated)
  weights = truncated / "model.safetensors"
  os.truncate(weights, os.path.getsize(weights) // 2)
  # a truncated model.safetensors, for conversion and for fine-tuning initialisation (which reads it the same way)
  _one_line_error(_cli("electra_jax.convert", "hf_to_orbax", f"--hf_dir={truncated}", f"--out={tmp_path / 'o1'}"), 1,
                  f"{weights} cannot be read", "truncated")
  with pytest.raises(convert.ConversionError, match="truncated"):
    convert.read_hf_weights(truncated)
  assert not (tmp_path / "o1").exists()
  # an existing --out; a folder that holds no checkpoint
  assert _cli("electra_jax.convert", "hf_to_orbax", f"--hf_dir={hf}", f"--out={tmp_path / 'orbax'}").returncode == 0
  _one_line_error(_cli("electra_jax.convert", "hf_to_orbax", f"--hf_dir={hf}", f"--out={tmp_path / 'orbax'}"), 1,
                  "already exists")
  (tmp_path / "empty").mkdir()
  _one_line_error(_cli("electra_jax.convert", "orbax_to_hf", f"--checkpoint={tmp_path / 'empty'}",
                       f"--out={tmp_path / 'o2'}"), 1, "no checkpoint in")
  # --part on a checkpoint with one network is refused (it exported the classifier as "the generator")
  _one_line_error(_cli("electra_jax.convert", "orbax_to_hf", f"--checkpoint={tmp_path / 'orbax'}", "--part=generator",
                       f"--out={tmp_path / 'o3'}"), 1, "--part=generator", "not a pretraining checkpoint")
  # predict: a folder without config.json, a missing folder; a converted checkpoint needs no --vocab_file
  _one_line_error(_cli("electra_jax.eval.predict", f"--model={tmp_path / 'empty'}", "--task=text-classification",
                       stdin="good\n"), 2, "neither a Hugging Face folder")
  _one_line_error(_cli("electra_jax.eval.predict", f"--model={tmp_path / 'missing'}", "--task=text-classification",
                       stdin="good\n"), 2, "missing does not exist")
  ok = _cli("electra_jax.eval.predict", f"--model={tmp_path / 'orbax'}", "--task=text-classification",
            stdin="good\n")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert json.loads(ok.stdout)["label"] in ("negative", "positive")


# ================================================================================================ the newcomer's items
def test_classifiers_carry_the_task_label_names():
  """Exported classifiers labelled classes "0"/"1"; the pipeline should say positive / entailment."""
  from configs import glue as glue_config  # pylint: disable=import-outside-toplevel
  from electra_jax.data import glue  # pylint: disable=import-outside-toplevel
  from electra_jax.eval.tasks import make_adapter  # pylint: disable=import-outside-toplevel
  assert glue.get_task("sst2").label_names == ("negative", "positive")
  assert glue.get_task("mrpc").label_names == ("not_equivalent", "equivalent")
  assert glue.get_task("rte").label_names == ("entailment", "not_entailment")
  assert glue.get_task("stsb").label_names is None
  adapter = make_adapter(glue_config.get_config("task=sst2,size=tiny"), tokenizer=None)
  assert adapter.head_overrides()["id2label"] == {0: "negative", 1: "positive"}
