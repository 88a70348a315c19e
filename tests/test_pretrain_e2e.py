"""The pretraining binary end to end on the real corpus: it learns, resumes exactly after SIGKILL, stops cleanly on
SIGTERM, skips a corrupt checkpoint, and fails clearly on bad input.

Runs are child processes on one CPU device, with a persistent XLA compilation cache shared by the runs of this module
(the first run compiles, the others load the executable), so the whole file takes about a minute or two.
The helpers at the top are also used by tests/test_distributed_multiprocess.py.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import shared_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny preset shrunk further so a CPU test trains in seconds: seq 64, hidden 64, 1 head, batch 16.
SMALL_TINY = [
    "--config=configs/pretrain.py:size=tiny",
    "--config.max_seq_length=64",
    "--config.model.hidden_size=64",
    "--config.model.intermediate_size=256",
    "--config.model.num_attention_heads=1",
    "--config.optimizer.warmup_steps=10",
    "--config.peak_flops_per_device=1e11",   # skip measuring the CPU peak
]


# ------------------------------------------------------------------------------------------------ helpers
def child_env(cache_dir: str, devices: int = 1, **extra: str) -> dict:
  """Environment for a child process: CPU, `devices` simulated devices, a persistent compilation cache."""
  e = dict(os.environ)
  e.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
      "JAX_COMPILATION_CACHE_DIR": cache_dir,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
      "TOKENIZERS_PARALLELISM": "false",
      "PYTHONPATH": REPO + os.pathsep + e.get("PYTHONPATH", ""),
  })
  e.update(extra)
  return e


def command(workdir: str, data_cache: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "electra_jax.train.pretrain", *SMALL_TINY, f"--workdir={workdir}",
          f"--config.data.cache_dir={data_cache}", *overrides]


def run(cmd: list[str], environ: dict, timeout: float = 400) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout, check=False)


def start(cmd: list[str], environ: dict, log_path: str) -> subprocess.Popen:
  log = open(log_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
  return subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT)


def records(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        pass   # a line being written
  return out


def losses(workdir: str) -> dict[int, float]:
  return {int(r["step"]): r["loss"] for r in records(workdir)}


def checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"the run exited with {proc.returncode} before {what}")
    time.sleep(0.02)
  proc.kill()
  raise AssertionError(f"timed out waiting for {what}")


def assert_ok(proc: subprocess.CompletedProcess) -> None:
  assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  shared_data("corpus/wikitext-2-raw")
  shared_data("vocab/bert-base-uncased-vocab.txt")
  root = tmp_path_factory.mktemp("pretrain_e2e")
  return {"root": root, "jax_cache": str(root / "jax_cache"), "data": str(root / "data")}


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.slow
def test_tiny_run_learns_and_exports(dirs):
  # At this size the generator reaches unigram quality within ~100 steps; from then on, with temperature 1, a 2-layer
  # discriminator needs far more steps than a test can afford to beat the majority class (its AUC falls back to ~0.55
  # after peaking near 0.8; measured). Sampling at temperature 2 keeps replacements detectable, so the run shows the
  # discriminator learning within 150 steps.
  work = str(dirs["root"] / "learn")
  proc = run(command(work, dirs["data"], "--config.num_train_steps=150", "--config.log_every_steps=1",
                     "--config.checkpoint_every_steps=150", "--config.generator.temperature=2.0"),
             child_env(dirs["jax_cache"]))
  assert_ok(proc)
  assert "steps run inline and reuse their host buffers" in proc.stderr   # --reuse_host_memory's default, one device
  recs = records(work)
  assert [r["step"] for r in recs] == list(range(1, 151))
  first, last = recs[:10], recs[-30:]
  mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
  assert mean(last, "loss") < mean(first, "loss") - 5, (mean(first, "loss"), mean(last, "loss"))
  assert mean(last, "mlm_loss") < mean(first, "mlm_loss") - 1
  assert mean(last, "rtd_loss") < mean(first, "rtd_loss")
  assert mean(last, "disc_auc") > 0.75
  assert mean(last, "disc_accuracy") > mean(first, "disc_accuracy")
  # above the majority class (predicting "original" everywhere scores 1 - replaced fraction)
  assert mean(last, "disc_accuracy") > 1 - mean(last, "disc_replaced_fraction")
  for key in ("learning_rate", "grad_norm", "param_norm", "tokens_per_sec", "mfu", "eta_seconds", "disc_precision",
              "disc_recall", "mlm_accuracy", "model_flops_per_step"):
    assert key in recs[-1], key
  assert glob.glob(os.path.join(work, "events.out.tfevents.*"))
  for part in ("discriminator", "generator"):
    folder = os.path.join(work, "export", part)
    for name in ("config.json", "model.safetensors", "vocab.txt"):
      assert os.path.isfile(os.path.join(folder, name)), (part, name)
  with open(os.path.join(work, "export", "generator", "config.json"), encoding="utf-8") as f:
    gen = json.load(f)
  assert gen["hidden_size"] == 16 and gen["architectures"] == ["ElectraForMaskedLM"]
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  meta, params = checkpointing.load_params(work)
  assert meta["kind"] == "pretraining" and meta["discriminator"]["hidden_size"] == 64
  # param_norm (measured when metrics are logged) is the norm of the parameters after that step: the last checkpoint's
  norm = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(params)))
  assert abs(recs[-1]["param_norm"] - norm) < 1e-5 * norm, (recs[-1]["param_norm"], norm)
  assert "generator" in params and "discriminator" in params


@pytest.mark.slow
def test_sigkill_resume_sigterm_and_corrupt_checkpoint_match_an_uninterrupted_run(dirs):
  steps = ["--config.num_train_steps=16", "--config.log_every_steps=1", "--config.checkpoint_every_steps=4",
           "--config.export=false"]
  environ = child_env(dirs["jax_cache"])
  ref_dir = str(dirs["root"] / "reference")
  assert_ok(run(command(ref_dir, dirs["data"], *steps), environ))
  ref = losses(ref_dir)
  assert sorted(ref) == list(range(1, 17))

  # SIGKILL after the step-4 checkpoint and before the end; the rerun resumes and matches step for step.
  work = str(dirs["root"] / "killed")
  proc = start(command(work, dirs["data"], *steps), environ, str(dirs["root"] / "killed.log"))
  wait_for(lambda: 4 in checkpoint_steps(work) and max(losses(work), default=0) >= 6, proc, "step 6")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done_before = max(losses(work))
  assert done_before < 16, "the run finished before it was killed"
  resumed = run(command(work, dirs["data"], *steps), environ)
  assert_ok(resumed)
  assert "resuming at step" in resumed.stderr
  got = losses(work)
  assert [r["step"] for r in records(work)] == list(range(1, 17))   # the killed run's extra steps were replaced
  assert got == ref, {s: (got.get(s), ref[s]) for s in ref if got.get(s) != ref[s]}

  # SIGTERM: a checkpoint at the current step, exit status 0; the rerun finishes identically.
  work = str(dirs["root"] / "terminated")
  proc = start(command(work, dirs["data"], *steps), environ, str(dirs["root"] / "terminated.log"))
  wait_for(lambda: max(losses(work), default=0) >= 5, proc, "step 5")
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  stopped = max(losses(work))
  assert stopped < 16 and stopped in checkpoint_steps(work)
  assert_ok(run(command(work, dirs["data"], *steps), environ))
  assert losses(work) == ref

  # A corrupt latest checkpoint: skipped with a warning, the previous one used, same losses again.
  for f in glob.glob(os.path.join(ref_dir, "checkpoints", "16", "params", "d", "*")):
    with open(f, "r+b") as fh:
      fh.truncate(3)
  again = run(command(ref_dir, dirs["data"], *steps), environ)
  assert_ok(again)
  assert "incomplete or corrupt" in again.stderr and "resuming at step 12" in again.stderr
  assert losses(ref_dir) == ref
  assert glob.glob(os.path.join(ref_dir, "checkpoints", "16.unreadable-*"))


@pytest.mark.slow
def test_bad_inputs_fail_clearly(dirs, tmp_path):
  empty = tmp_path / "empty_corpus"
  empty.mkdir()
  (empty / "a.txt").write_text("\n \n")
  bad_vocab = tmp_path / "vocab.txt"
  bad_vocab.write_text("[PAD]\n[UNK]\nhello\nworld\n")
  cases = {
      "missing": (["--config.data.corpus=" + str(tmp_path / "nope")], "nope"),
      "empty": (["--config.data.corpus=" + str(empty)], "empty_corpus"),
      "vocab": (["--config.data.vocab_file=" + str(bad_vocab)], "[CLS]"),
      # a NaN learning rate: step 1's loss is finite, its update is not, so step 2's loss is NaN
      "nan": (["--config.learning_rate=nan", "--config.num_train_steps=5", "--config.log_every_steps=5"],
              "non-finite loss (nan) at step 2"),
  }
  environ = child_env(dirs["jax_cache"])
  procs = {name: subprocess.Popen(command(str(tmp_path / name), dirs["data"], *args), cwd=REPO, env=environ,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (args, _) in cases.items()}
  for name, p in procs.items():
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, (name, err[-3000:])
    message = [line for line in err.splitlines() if line.startswith("pretrain: error:")]
    assert message and cases[name][1] in message[0], (name, err[-3000:])
