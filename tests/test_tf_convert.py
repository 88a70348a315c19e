"""tf_to_hf and tf_to_orbax on TensorFlow-written fixtures: HF folders that transformers 5 loads and that equal the
TensorFlow forward, a workdir that fine-tuning initialises from and that pretraining resumes with the original's Adam
state (checked against a numpy AdamWeightDecayOptimizer), and the command's bad-input lines.
"""

import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from configs import pretrain as pretrain_config
from electra_jax.convert import flatten, tf_convert, unflatten
from electra_jax.convert.tf_checkpoint import TFCheckpoint
from electra_jax import checkpointing
from electra_jax.train import finetune_lib, objectives, optim, pretrain_lib
from electra_jax.train import metrics as train_metrics
from tests.fixtures import make_tf_checkpoints as fx
from tests.test_tf_checkpoint import DATA, _rewrite, copy, fixture, load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ["--num_attention_heads=2"]


def _cli(*args) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  return subprocess.Popen([sys.executable, "-m", "electra_jax.convert", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------------------------------------ bad input (CLI)
@pytest.mark.slow
def test_bad_input_one_line_non_zero_exit_nothing_written(tmp_path):
  cases = {}
  missing = copy("separate", tmp_path / "missing")
  os.remove(os.path.join(missing, DATA))
  cases["missing"] = (missing, rf"{DATA}: missing data shard \(it holds variable \S+\)")
  truncated = copy("separate", tmp_path / "truncated")
  with open(os.path.join(truncated, DATA), "r+b") as f:
    f.truncate(1000)
  cases["truncated"] = (truncated, rf"{DATA}: truncated \(1000 bytes\) — variable \S+ needs bytes")
  flipped = copy("separate", tmp_path / "flipped")
  offset = TFCheckpoint.open(flipped).entries["electra/embeddings/position_embeddings"].offset
  with open(os.path.join(flipped, DATA), "r+b") as f:
    f.seek(offset + 5)
    b = f.read(1)
    f.seek(offset + 5)
    f.write(bytes([b[0] ^ 0x80]))
  cases["checksum"] = (flipped, rf"{DATA}: variable electra/embeddings/position_embeddings: checksum mismatch")
  other = tmp_path / "other"
  other.mkdir()
  (other / "model.ckpt-7.index").write_text("{\"this\": \"is json\"}\n" * 5)
  cases["format"] = (os.fspath(other), r"model\.ckpt-7\.index: not a TensorFlow checkpoint index")
  unknown = copy("shared", tmp_path / "unknown")
  prefix = _rewrite(unknown, lambda t: t.update({"cloze_predictions/output_bias": np.zeros(3, np.float32)}))
  cases["unknown"] = (prefix, r"model\.ckpt-2000\.index: variable cloze_predictions/output_bias is not known to the "
                              r"ELECTRA mapping")
  procs = {}
  for name, (source, _) in cases.items():
    command = "tf_to_orbax" if name in ("missing", "unknown") else "tf_to_hf"
    procs[name] = _cli(command, f"--tf_checkpoint={source}", f"--out={tmp_path / ('out_' + name)}", *HEADS)
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, (name, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"convert: error: \S+" + cases[name][1], lines[0]), (name, stderr)
    assert "Traceback" not in stderr and not stdout.strip()
    assert not os.path.exists(tmp_path / f"out_{name}") and not any(
        p.name.startswith(f"out_{name}") for p in tmp_path.iterdir()), name


def test_existing_output_is_not_overwritten(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("x")
  with pytest.raises(tf_convert.ConversionError, match=r"already exists and is not empty"):
    tf_convert.tf_to_hf(load("shared"), os.fspath(tmp_path / "out"))
  assert os.listdir(tmp_path / "out") == ["keep.txt"]


# ------------------------------------------------------------------------------------------------ Hugging Face
@pytest.mark.parametrize("name", ["separate", "shared"])
def test_tf_to_hf_folders_load_in_transformers_and_equal_the_tensorflow_forward(name, tmp_path):
  dirs = tf_convert.tf_to_hf(load(name), os.fspath(tmp_path / "hf"), vocab_file=os.path.join(fixture(name),
                                                                                            "vocab.txt"))
  ref = np.load(os.path.join(fixture(name), "reference.npz"))
  feed = {"input_ids": torch.tensor(ref["input_ids"], dtype=torch.long),
          "attention_mask": torch.tensor(ref["input_mask"], dtype=torch.long),
          "token_type_ids": torch.tensor(ref["segment_ids"], dtype=torch.long)}
  for part, cls, key in (("discriminator", transformers.ElectraForPreTraining, "disc_logits"),
                         ("generator", transformers.ElectraForMaskedLM, "gen_logits")):
    model = cls.from_pretrained(dirs[part]).eval()
    with torch.no_grad():
      logits = model(**feed).logits.numpy()
    np.testing.assert_allclose(logits, ref[key], atol=1e-5, rtol=0, err_msg=f"{name}/{part}")
  tok = transformers.AutoTokenizer.from_pretrained(dirs["generator"])
  vocab = fx.vocab()
  assert tok("The Man")["input_ids"] == [2, vocab.index("the"), vocab.index("man"), 3]   # lower-cased
  assert tok.convert_ids_to_tokens([0, 4]) == ["[PAD]", "[MASK]"]


def test_cased_vocabulary_settings_reach_the_tokenizer_files(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  conv = load("shared")
  tf_convert.tf_to_hf(conv, os.fspath(tmp_path / "cased"), vocab_file=os.path.join(fixture("shared"), "vocab.txt"),
                      lowercase=False)
  cfg = json.loads((tmp_path / "cased" / "discriminator" / "tokenizer_config.json").read_text())
  assert (cfg["do_lower_case"], cfg["strip_accents"]) == (False, False)
  assert transformers.AutoTokenizer.from_pretrained(tmp_path / "cased" / "discriminator")("The")["input_ids"][1] == 1
  with pytest.raises(tf_convert.ConversionError, match=r"3 tokens, but .* has word embeddings for 100"):
    (tmp_path / "v.txt").write_text("[PAD]\n[UNK]\n[CLS]\n")
    tf_convert.tf_to_hf(conv, os.fspath(tmp_path / "x"), vocab_file=os.fspath(tmp_path / "v.txt"))


# ------------------------------------------------------------------------------------------------ Orbax workdir
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  out = tmp_path_factory.mktemp("tf") / "workdir"
  proc = _cli("tf_to_orbax", f"--tf_checkpoint={fixture('separate')}", f"--out={out}", "--continue_pretraining",
              *HEADS)
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr
  assert "resume with: python -m electra_jax.train.pretrain" in stdout
  return os.fspath(out)


@pytest.mark.slow
def test_workdir_holds_the_networks_and_fine_tuning_initialises_from_it(workdir):
  ref = np.load(os.path.join(fixture("separate"), "reference.npz"))
  model = checkpointing.load_model(workdir)
  args = (ref["input_ids"], ref["input_mask"], ref["segment_ids"])
  np.testing.assert_allclose(np.asarray(model.discriminator(*args).logits), ref["disc_logits"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(model.generator(*args).logits), ref["gen_logits"], atol=1e-5, rtol=0)
  meta = checkpointing.read_model_config(workdir)
  assert meta["tokenizer"]["vocab_file"].endswith("separate/vocab.txt") and meta["tokenizer"]["lowercase"]
  config = checkpointing.electra_config_from_meta(meta, workdir, {}).replace(
      num_labels=3, architectures=("OriginalElectraForSequenceClassification",))
  spec = checkpointing.ModelSpec("OriginalElectraForSequenceClassification", config)
  shapes = {k: tuple(v.shape) for k, v in flatten(nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: spec.build(0)),
                                                                              nnx.Param))).items()}
  values = finetune_lib.init_values(spec, ml_collections.ConfigDict({"init_checkpoint": workdir}), "orbax", meta,
                                    shapes)
  disc = load("separate").networks["discriminator"].params
  assert set(values) == {k for k in shapes if k.startswith("electra/")}
  for k, v in values.items():
    np.testing.assert_array_equal(v, disc[k])


def test_optimizer_state_tree_is_the_trainers():
  params = {"a": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
  tx, _ = optim.create(pretrain_config.get_config("size=small").optimizer, params, learning_rate=1e-3,
                                    num_train_steps=10)
  mine = tf_convert.optimizer_state(params, params, 0)
  assert [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(mine)[0]] == [
      jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(jax.eval_shape(tx.init, params))[0]]


LR, TOTAL, WARMUP, WD = 2e-3, 5000, 2000, 0.01


def _resume_config():
  c = pretrain_config.get_config("size=tiny")
  for flag in tf_convert.resume_flags(load("separate", generator_num_attention_heads=1)):
    key, value = flag[len("--config."):].split("=")
    section, field = key.split(".")
    c[section][field] = type(c[section][field])(float(value)) if "fraction" in field else int(value)
  c.optimizer.bias_correction = False
  c.optimizer.warmup_steps = WARMUP
  c.optimizer.weight_decay = WD
  c.learning_rate = LR
  c.num_train_steps = TOTAL
  c.max_seq_length = 16
  c.batch_size = 8
  return c


def _numpy_adamw(params, grads, m, v, step, decayed):
  """google-research/electra AdamWeightDecayOptimizer after tf.clip_by_global_norm(1.0), lr schedule at `step`."""
  norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values()))
  scale = 1.0 / max(norm, 1.0)
  lr = LR * (1.0 - min(step, TOTAL) / TOTAL) * min(1.0, step / WARMUP)
  out = {}
  for k, p in params.items():
    g = grads[k] * scale
    m[k] = 0.9 * m[k] + 0.1 * g
    v[k] = 0.999 * v[k] + 0.001 * g * g
    update = m[k] / (np.sqrt(v[k]) + 1e-6) + (WD * p if decayed[k] else 0.0)
    out[k] = p - lr * update
  return out


@pytest.mark.slow
def test_pretraining_resumes_with_the_original_adam_state(workdir):
  """Three steps of our trainer from the converted state equal the original's update done in numpy."""
  config = _resume_config()
  mesh = pretrain_lib.build_mesh(config, jax.devices()[:1])   # one device: a third of the compile time
  ids = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=100, ids=ids)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), handle_sigterm=False)
  restored = ckpt.restore(setup.abstract_state["params"], setup.abstract_state["opt_state"])
  ckpt.close()
  assert restored.step == 1234 and "loader" not in restored.train_meta
  state = {"step": jnp.asarray(restored.step, jnp.int32), "params": restored.params, "opt_state": restored.opt_state}

  conv = load("separate", generator_num_attention_heads=1, with_slots=True)
  flat = lambda tree: {k: np.asarray(v, np.float64) for k, v in flatten(jax.device_get(tree)).items()}  # noqa: E731
  theta = flat(tf_convert.pretraining_tree(conv))
  m, v = flat(tf_convert.pretraining_tree(conv, "adam_m")), flat(tf_convert.pretraining_tree(conv, "adam_v"))
  # Weight decay by the original's rule on the TF names: not for names matching LayerNorm|layer_norm|bias.
  tf_name = {f"{net}/{r.jax}": r.tf for net, n in conv.networks.items() for r in n.rules}
  decayed = {k: re.search("LayerNorm|layer_norm|bias", tf_name[k]) is None for k in theta}
  assert not decayed["discriminator/electra/encoder/layers/attention_norm/scale"]
  assert not decayed["generator/generator_lm_head/bias"] and decayed["discriminator/electra/embeddings/word_embeddings"]

  loss_fn = objectives.make_loss_fn(setup.graphdef, setup.rest, setup.step_config)
  loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b, r: loss_fn(p, b, r)[0]))
  rng = np.random.default_rng(0)
  for step in range(3):
    ids_ = rng.integers(5, 100, (8, 16)).astype(np.int32)
    ids_[:, 0], ids_[:, -1] = 2, 3
    batch = {"input_ids": ids_, "input_mask": np.ones_like(ids_), "segment_ids": np.zeros_like(ids_)}
    key = jax.random.fold_in(jax.random.key(0), 1234 + step)
    as_tree = unflatten({k: jnp.asarray(x, jnp.float32) for k, x in theta.items()})
    ref_loss, grads = loss_and_grad(as_tree, batch, key)
    grads = flat(grads)
    state, metrics = pretrain_lib.run_step(setup, state, batch, jax.random.key(0))   # folded with the step inside
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_loss), rtol=1e-5)
    theta = _numpy_adamw(theta, grads, m, v, 1234 + step, decayed)
  ours = flat(state["params"])
  assert set(ours) == set(theta)
  for k in theta:
    np.testing.assert_allclose(ours[k], theta[k], rtol=1e-4, atol=1e-6, err_msg=k)
  mu = flat(state["opt_state"][1].mu)
  np.testing.assert_allclose(mu["discriminator/electra/encoder/layers/query/kernel"],
                             m["discriminator/electra/encoder/layers/query/kernel"], rtol=1e-4, atol=1e-8)
  assert int(state["opt_state"][3].count) == int(state["step"]) == 1237


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["separate", "shared"])
def test_pretrain_binary_resumes_the_converted_workdir(layout, workdir, tmp_path):
  """`python -m electra_jax.train.pretrain` continues a converted workdir on a tiny corpus in the fixture's vocabulary:
  from global_step with the Adam slots (separate layout), from step 0 (shared layout, converted without slots)."""
  run = tmp_path / "run"
  if layout == "separate":
    shutil.copytree(workdir, run)
    start = fx.STEP
  else:
    tf_convert.tf_to_orbax(load("shared"), os.fspath(run))
    start = 0
  words = [w for w in open(os.path.join(fixture("separate"), "vocab.txt"), encoding="utf-8").read().split()
           if not w.startswith("[")]
  rng = np.random.default_rng(0)
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "a.txt").write_text("\n\n".join(" ".join(rng.choice(words, 12)) + " .\n" + " ".join(rng.choice(words, 9))
                                            for _ in range(40)) + "\n")
  overrides = tf_convert.resume_flags(load(layout))
  cmd = [sys.executable, "-m", "electra_jax.train.pretrain", "--config=configs/pretrain.py:size=tiny",
         f"--workdir={run}", *overrides, "--config.optimizer.bias_correction=False", "--config.max_seq_length=16",
         "--config.batch_size=8", f"--config.num_train_steps={start + 2}", "--config.log_every_steps=1",
         f"--config.data.corpus={corpus}", f"--config.data.vocab_file={fixture(layout)}/vocab.txt",
         "--config.data.num_shards=1", "--config.export=false", "--config.peak_flops_per_device=1e11"]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resuming at step {start}" in proc.stderr and "no data-loader position" in proc.stderr
  losses = {r["step"]: r["loss"] for r in train_metrics.read_metrics(os.fspath(run)) if "loss" in r}
  assert sorted(losses) == [start + 1, start + 2] and all(np.isfinite(list(losses.values())))
  assert sorted(int(p) for p in os.listdir(run / "checkpoints") if p.isdigit()) == [start, start + 2]


@pytest.mark.slow
def test_shared_layout_becomes_a_shared_encoder_pretraining_workdir(tmp_path):
  """untied_generator=False: one encoder under discriminator/electra serves both heads, and the trainer built with
  config.generator.weight_sharing=all restores the workdir."""
  conv = load("shared")
  out = tf_convert.tf_to_orbax(conv, os.fspath(tmp_path / "wd"))
  ref = np.load(os.path.join(fixture("shared"), "reference.npz"))
  model = checkpointing.load_model(out)
  assert model.weight_sharing == "all" and model.generator.electra is model.discriminator.electra
  args = (ref["input_ids"], ref["input_mask"], ref["segment_ids"])
  np.testing.assert_allclose(np.asarray(model.generator(*args).logits), ref["gen_logits"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(model.discriminator(*args).logits), ref["disc_logits"], atol=1e-5, rtol=0)
  config = pretrain_config.get_config("size=tiny")
  for flag in tf_convert.resume_flags(conv):
    key, value = flag[len("--config."):].split("=")
    section, field = key.split(".")
    config[section][field] = value if field == "weight_sharing" else float(value) if "fraction" in field else int(value)
  config.max_seq_length = 16
  setup = pretrain_lib.build_setup(config, pretrain_lib.build_mesh(config, jax.devices()[:1]), vocab_size=100,
                                   ids={"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4})
  assert sorted(setup.abstract_state["params"]["generator"]) == ["generator_lm_head", "generator_predictions"]
  ckpt = checkpointing.Checkpointer(os.path.join(out, "checkpoints"), handle_sigterm=False)
  restored = ckpt.restore(setup.abstract_state["params"], setup.abstract_state["opt_state"])
  ckpt.close()
  assert restored.step == 0 and int(restored.opt_state[3].count) == 0
  np.testing.assert_array_equal(np.asarray(restored.params["generator"]["generator_lm_head"]["bias"]),
                                conv.networks["generator"].params["generator_lm_head/bias"])
