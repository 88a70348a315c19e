"""Pretraining traces (electra_jax/experiments/trace.py) and their independent PyTorch replay (replay.py).

The replay agrees with traces of electra, electra_15 and mlm and of the three weight-sharing modes; a trace with one
changed learning rate, one flipped label, untied embeddings or a wrong decay rule fails it. The trace's step is the
pretraining step: recording the corruption changes none of its results.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import pretrain as pretrain_config
from electra_jax.experiments import replay, trace
from tests.conftest import shared_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny preset shrunk so that a step compiles in seconds; batch 8 splits over the 8 simulated devices.
SMALL = {"max_seq_length": 64, "batch_size": 8, "model.hidden_size": 64, "model.intermediate_size": 256,
         "model.num_attention_heads": 1}
STEPS = 4


def small_config(objective: str = "electra", tmp_path=None, **overrides):
  shared_data("corpus")
  config = pretrain_config.get_config(f"size=tiny,objective={objective}")
  values = {**SMALL, **overrides}
  for dotted, value in values.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  if tmp_path is not None:
    config.data.cache_dir = str(tmp_path / "data")
  return trace.prepare(config, STEPS, overridden=values)


# ------------------------------------------------------------------------------------------------ refusals (fast)
@pytest.mark.parametrize("field,value,words", [
    ("objective", "replace_mlm", "config.objective='replace_mlm'"),
    ("objective", "electric", "config.objective='electric'"),
    ("generator.sampling", "uniform", "config.generator.sampling='uniform'"),
    ("generator.weight_sharing", "gdes", "config.generator.weight_sharing='gdes'"),
    ("two_stage", 2, "config.two_stage=2"),
    ("optimizer.layerwise_lr_decay", 0.8, "config.optimizer.layerwise_lr_decay=0.8"),
    ("gradient_accumulation_steps", 4, "config.gradient_accumulation_steps=4"),
    ("generator.frozen_checkpoint", "/ckpt", "config.generator.frozen_checkpoint='/ckpt'"),
])
def test_refuses_what_the_format_cannot_describe(field, value, words):
  config = pretrain_config.get_config("size=tiny")
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(trace.TraceError) as e:
    trace.prepare(config, 4)
  message = str(e.value)
  assert words in message and "\n" not in message


def test_refuses_dropout_it_cannot_record():
  config = pretrain_config.get_config("size=tiny")
  with pytest.raises(trace.TraceError, match="dropout"):
    trace.check(config)                     # the preset's 0.1
  trace.check(trace.prepare(config, 4))     # the trace runs it at 0


def test_checking_settings_apply_unless_overridden():
  config = pretrain_config.get_config("size=tiny")
  config.learning_rate = 3e-4
  out = trace.prepare(config, 5, overridden={"learning_rate"})
  assert out.learning_rate == 3e-4                       # the user's
  assert out.optimizer.weight_decay == trace.CHECKING["optimizer.weight_decay"]
  assert out.optimizer.warmup_steps == 0 and out.num_train_steps == 5
  assert out.model.dtype == "float32" and out.model.hidden_dropout_prob == 0.0
  assert out.model.attention_probs_dropout_prob == 0.0
  assert config.model.hidden_dropout_prob == 0.1         # the caller's config is not changed


# ------------------------------------------------------------------------------------------------ the step's own
@pytest.mark.slow
def test_recording_changes_nothing_in_the_step(tmp_path):
  """The recording step (objectives with record_corruption) and the binary's step give bit-identical parameters and
  losses from the same state, batch and key, and the recorded corruption is consistent with the batch."""
  import dataclasses
  import jax
  from electra_jax import sharding
  from electra_jax.train import objectives, pretrain_lib, trainer

  config = small_config(tmp_path=tmp_path)
  tok, ids = pretrain_lib.load_tokenizer(config)
  mesh = pretrain_lib.build_mesh(config)
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=tok.get_vocab_size(), ids=ids)
  loss_fn = objectives.make_loss_fn(setup.graphdef, setup.rest,
                                    dataclasses.replace(setup.step_config, record_corruption=True))
  recording = jax.jit(trainer.make_train_step(loss_fn, setup.tx, setup.schedule, pass_step=True))
  dataset_dir, _, _ = pretrain_lib.prepare_data(config, str(tmp_path))
  loader = pretrain_lib.make_loader(config, dataset_dir, setup)
  batch = dict(loader.batch(0))
  loader.close()
  key = jax.random.key(0)
  with jax.set_mesh(mesh), sharding.use_rules(setup.rules):
    plain_state, plain = setup.train_step(setup.init_fn(), batch, key)
    rec_state, rec = recording(setup.init_fn(), batch, key)
  for a, b in zip(jax.tree.leaves(jax.device_get(plain_state)), jax.tree.leaves(jax.device_get(rec_state))):
    np.testing.assert_array_equal(a, b)
  for k in ("loss", "mlm_loss", "rtd_loss", "grad_norm"):
    assert float(plain[k]) == float(rec[k]), k
  c = jax.device_get(rec["corruption"])
  original, mask = np.asarray(batch["input_ids"]), np.asarray(batch["input_mask"])
  targets = c["generator_targets"]
  assert targets.any() and not (targets & (mask == 0)).any()
  for name in ("generator_input_ids", "discriminator_input_ids"):
    np.testing.assert_array_equal(c[name][~targets], original[~targets])
  np.testing.assert_array_equal(c["discriminator_labels"], (c["discriminator_input_ids"] != original) & (mask > 0))
  np.testing.assert_array_equal(c["discriminator_weights"], mask.astype(np.float32))
  assert (c["generator_input_ids"][targets] == ids["mask"]).mean() > 0.5   # 85% [MASK]


# ------------------------------------------------------------------------------------------------ replays
def _check_format(out):
  meta = json.load(open(os.path.join(out, "trace.json"), encoding="utf-8"))
  z = np.load(os.path.join(out, "steps.npz"))
  assert meta["format"] == "electra-pretraining-trace/1" and meta["steps"] == STEPS
  for k in trace.STEP_ARRAYS:
    assert z[k].shape == (STEPS, meta["batch_size"], meta["seq_len"]), k
  for k in trace.SCALARS:
    assert z[k].shape == (STEPS,), k
  t = z["generator_targets"]
  assert t.dtype == bool and not (t & (z["attention_mask"] == 0)).any()
  np.testing.assert_array_equal(z["discriminator_labels"], z["discriminator_input_ids"] != z["original_ids"])
  np.testing.assert_array_equal(z["generator_input_ids"][~t], z["original_ids"][~t])
  for kind in meta["networks"]:
    for when in ("initial", "final"):
      assert os.path.isfile(os.path.join(out, when, kind, "model.safetensors"))
  return meta


@pytest.mark.slow
@pytest.mark.parametrize("objective,overrides,shared", [
    ("electra_15", {}, 5),
    ("mlm", {}, 0),
    ("electra", {"generator.weight_sharing": "none"}, 0),
    ("electra", {"generator.weight_sharing": "all", "generator.hidden_fraction": 1.0,
                 "optimizer.bias_correction": False}, None),
])
def test_traces_replay_ok(tmp_path, objective, overrides, shared):
  out = str(tmp_path / "trace")
  meta = trace.record(small_config(objective, tmp_path, **overrides), STEPS, out)
  _check_format(out)
  if shared is None:   # all: every electra.* tensor of the discriminator
    assert len(meta["shared"]) > 5 and all(n.startswith("electra.") for n in meta["shared"])
  else:
    assert len(meta["shared"]) == shared
  if objective == "mlm":
    assert meta["networks"] == ["generator"] and not os.path.exists(os.path.join(out, "initial", "discriminator"))
    assert meta["loss"]["discriminator_weight"] == 0.0
  ok, line = replay.replay(out)
  assert ok, line
  assert line.startswith("OK:")


@pytest.fixture(scope="module")
def electra_trace(tmp_path_factory):
  """The acceptance commands, as a user runs them: the trace binary, then the replay binary (exit 0, OK)."""
  shared_data("corpus")
  tmp = tmp_path_factory.mktemp("electra_trace")
  out = str(tmp / "trace")
  flags = [f"--config.{k}={v}" for k, v in SMALL.items()]
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  cmd = [sys.executable, "-m", "electra_jax.experiments.trace", "--config=configs/pretrain.py:size=tiny",
         f"--steps={STEPS}", f"--out={out}", f"--config.data.cache_dir={tmp / 'data'}", *flags]
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  done = subprocess.run([sys.executable, "-m", "electra_jax.experiments.replay", out], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("OK:"), done.stdout
  return out


@pytest.mark.slow
def test_electra_trace_binary_replays_ok(electra_trace):
  meta = _check_format(electra_trace)
  assert meta["objective"] == "electra" and meta["weight_sharing"] == "embeddings"
  assert meta["shared"] == list(trace.EMBEDDINGS) and meta["tied_generator_output"]
  assert meta["optimizer"]["weight_decay"] == trace.CHECKING["optimizer.weight_decay"]


def _variant(src, dst, meta_edit=None, steps_edit=None):
  shutil.copytree(src, dst)
  if meta_edit:
    path = os.path.join(dst, "trace.json")
    meta = json.load(open(path, encoding="utf-8"))
    meta_edit(meta)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(meta, f)
  if steps_edit:
    path = os.path.join(dst, "steps.npz")
    arrays = {k: v.copy() for k, v in np.load(path).items()}
    steps_edit(arrays)
    np.savez(path, **arrays)
  return dst


def _lr(z):
  z["learning_rate"][1] *= 1.5


def _flip_label(z):
  b, i = np.argwhere(z["discriminator_weights"][1] > 0)[3]
  z["discriminator_labels"][1, b, i] = 1 - z["discriminator_labels"][1, b, i]


def _untie(meta):
  meta["shared"], meta["weight_sharing"] = [], "none"


def _decay_everything(meta):
  meta["optimizer"]["no_decay"] = []


@pytest.mark.slow
@pytest.mark.parametrize("name,meta_edit,steps_edit,first", [
    ("learning_rate", None, _lr, "step 3 "),     # update 2's rate: steps 1 and 2 agree, step 3's losses differ
    ("label", None, _flip_label, None),
    ("untied", _untie, None, None),
    ("decay_rule", _decay_everything, None, None),
])
def test_perturbed_traces_fail(electra_trace, tmp_path, capsys, name, meta_edit, steps_edit, first):
  out = _variant(electra_trace, str(tmp_path / name), meta_edit, steps_edit)
  assert replay.main([out]) == 1
  line = capsys.readouterr().out.strip()
  assert "\n" not in line and line.startswith("FAIL:"), line
  if first:
    assert line.split(": ", 2)[2].startswith(first), line


def test_refuses_an_out_folder_that_is_not_a_trace(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  config = trace.prepare(pretrain_config.get_config("size=tiny"), 2)
  with pytest.raises(trace.TraceError, match="holds something other than a trace"):
    trace.record(config, 2, str(tmp_path))
  assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_binary_refuses_in_one_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  done = subprocess.run([sys.executable, "-m", "electra_jax.experiments.trace",
                         "--config=configs/pretrain.py:size=tiny,objective=electric", "--steps=2",
                         f"--out={tmp_path / 't'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 1, done.stderr
  assert "Traceback" not in done.stderr, done.stderr
  assert done.stderr.strip().splitlines()[-1].startswith("trace: error: config.objective='electric'"), done.stderr
  assert not (tmp_path / "t").exists()
