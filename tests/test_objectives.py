"""Pretraining objectives (electra_jax/train/objectives.py): each loss against a numpy reference on a fixed batch, the
generator's sampling switches, weight sharing and its export, two-stage training, Electric's NCE formula."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from configs import pretrain as pretrain_config
from electra_jax import modeling, sharding
from electra_jax import checkpointing
from electra_jax.train import flops, masking, objectives, pretrain_lib

IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
VOCAB = 600


@pytest.fixture
def fast_compile():
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", False)


def _config(objective="electra", **generator):
  c = pretrain_config.get_config(f"size=tiny,objective={objective}")
  c.batch_size, c.max_seq_length = 4, 24
  c.model.update(hidden_size=32, embedding_size=16, intermediate_size=64, num_attention_heads=2,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)   # no dropout: deterministic networks
  c.generator.hidden_fraction = 0.5
  c.generator.update(generator)
  c.optimizer.warmup_steps = 1
  return c


def _batch(b=4, length=24, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000 % VOCAB + 110, VOCAB, size=(b, length)).astype(np.int32)
  mask = np.ones((b, length), np.int32)
  seg = np.zeros((b, length), np.int32)
  for i in range(b):
    n = int(rng.integers(length // 2, length + 1))
    ids[i, 0], ids[i, n // 2], ids[i, n - 1] = 101, 102, 102
    ids[i, n:], mask[i, n:] = 0, 0
    seg[i, n // 2 + 1:n] = 1
  return {"input_ids": ids, "input_mask": mask, "segment_ids": seg}


def _setup(config):
  return pretrain_lib.build_setup(config, sharding.make_mesh({"data": 1}, jax.devices()[:1]), vocab_size=VOCAB,
                                  ids=IDS)


# ------------------------------------------------------------------------------------------------ numpy references
def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_ce(logits, targets, weights):
  """The original get_softmax_output: sum(w * -log softmax[target]) / (sum(w) + 1e-6)."""
  lp = np.take_along_axis(_np_log_softmax(logits), np.asarray(targets)[..., None], -1)[..., 0]
  w = np.asarray(weights, np.float64)
  return float(np.sum(-lp * w) / (np.sum(w) + 1e-6))


def _np_sigmoid_xent(x, z):
  """tf.nn.sigmoid_cross_entropy_with_logits."""
  x = np.asarray(x, np.float64)
  return np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))


def _np_bce(logits, labels, weights):
  w = np.asarray(weights, np.float64)
  return float(np.sum(_np_sigmoid_xent(logits, labels) * w) / (np.sum(w) + 1e-6))


def _np_scatter(ids, positions, values, weights):
  out = np.array(ids)
  for b in range(out.shape[0]):
    for p in range(positions.shape[1]):
      if weights[b, p] > 0:
        out[b, positions[b, p]] = values[b, p]
  return out


def _reference_loss(setup, params, batch, rng):
  """The objective's loss from the networks' outputs, in numpy, as the original code / the paper defines it."""
  cfg = setup.step_config
  model = pretrain_lib.merge_model(setup, params)
  ids, mask, seg = (jnp.asarray(batch[k]) for k in ("input_ids", "input_mask", "segment_ids"))
  k_mask, _, k_sample, _ = jax.random.split(rng, 4)
  m = masking.mask_tokens(k_mask, ids, mask, mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions,
                               mask_id=cfg.mask_id, ignore_ids=(0, 101, 102, 103), vocab_size=cfg.vocab_size)
  pos, tgt, w = np.asarray(m.positions), np.asarray(m.targets), np.asarray(m.weights)
  ids_np, real = np.asarray(ids), np.asarray(mask, np.float64)
  if cfg.objective == "mlm":
    return _np_ce(model(m.input_ids, mask, seg, masked_positions=m.positions).logits, tgt, w)
  if cfg.objective == "electric":
    cloze = np.asarray(model.generator(ids, mask, seg), np.float64)                           # [B, L, V]
    cand = real * ~np.isin(ids_np, [0, 101, 102, 103])
    gen_loss = _np_ce(cloze, ids_np, cand)
    gen_logits = np.take_along_axis(cloze, pos[..., None], 1)
  elif model.generator is None:
    gen_loss, gen_logits = 0.0, None
  else:
    gen_logits = np.asarray(model.generator(m.input_ids, mask, seg, masked_positions=m.positions).logits)
    gen_loss = _np_ce(gen_logits, tgt, w)
  sampled = np.asarray(objectives.sample_replacements(
      k_sample, m, None if gen_logits is None else jnp.asarray(gen_logits, jnp.float32), sampling=cfg.sampling,
      temperature=cfg.temperature, vocab_size=cfg.vocab_size, disallow_correct=cfg.disallow_correct))
  corrupted = _np_scatter(ids_np, pos, sampled, w)
  is_masked = _np_scatter(np.zeros_like(ids_np), pos, np.ones_like(pos), w).astype(np.float64)
  if cfg.objective == "replace_mlm":
    main = model.discriminator(jnp.asarray(corrupted), mask, seg, masked_positions=m.positions).logits
    return cfg.gen_weight * gen_loss + _np_ce(main, tgt, w)
  if cfg.objective == "all_tokens_mlm":
    out = model.discriminator(jnp.asarray(corrupted), mask, seg)
    d = 1 / (1 + np.exp(-np.asarray(model.copy_predictions(out.last_hidden_state), np.float64)))
    softmax = np.exp(_np_log_softmax(out.logits))
    p_orig = np.take_along_axis(softmax, ids_np[..., None], -1)[..., 0]
    p = d * (corrupted == ids_np) + (1 - d) * p_orig
    return cfg.gen_weight * gen_loss + float(np.sum(-np.log(p) * real) / np.sum(real))
  disc = np.asarray(model.discriminator(jnp.asarray(corrupted), mask, seg).logits, np.float64)
  if cfg.objective == "electric":     # run_pretraining.py: logits += log_q + log(p / (1 - p)); labels = masked
    log_q = np.sum(_np_log_softmax(cloze) * np.eye(cfg.vocab_size)[corrupted], -1)
    disc = disc + log_q + np.log(cfg.mask_prob / (1 - cfg.mask_prob))
    labels = is_masked
  else:                               # labels: replaced and different from the original
    labels = is_masked * (corrupted != ids_np)
  weights = is_masked if cfg.objective == "electra_15" else real
  return cfg.gen_weight * gen_loss + cfg.disc_weight * _np_bce(disc, labels, weights)


@pytest.mark.parametrize("objective, generator", [
    ("electra", {}), ("mlm", {}), ("electra_15", {}), ("replace_mlm", {}), ("all_tokens_mlm", {}), ("electric", {}),
    ("electra", {"sampling": "uniform"}), ("electra", {"disallow_correct": True, "weight_sharing": "none"}),
])
def test_loss_matches_numpy_reference(objective, generator, fast_compile):
  del fast_compile
  setup = _setup(_config(objective, **generator))
  state = pretrain_lib.init_state(setup)
  loss_fn = jax.jit(objectives.make_loss_fn(setup.graphdef, setup.rest, setup.step_config))
  batch = _batch()
  for seed in (0, 1):
    rng = jax.random.key(seed)
    loss, out = jax.device_get(loss_fn(state["params"], {k: jnp.asarray(v) for k, v in batch.items()}, rng))
    expected = _reference_loss(setup, state["params"], batch, rng)
    assert float(loss) == pytest.approx(expected, rel=2e-4), (objective, seed)
    for key in ("replaced_fraction", "sampled_equals_original", "loss", "masked_per_seq"):
      assert key in out and np.isfinite(out[key])
    if objective != "mlm":
      assert "mlm_loss" in out or generator.get("sampling") == "uniform"
    if objective in ("electra", "electra_15", "electric"):
      assert {"disc_auc", "disc_accuracy", "sampled_mlm_accuracy"} <= set(out)


@pytest.mark.slow
def test_replaced_fraction_and_sampled_equals_original_count_what_they_say(fast_compile):
  """A generator that always proposes the original: nothing is replaced; disallow_correct: every masked token is."""
  del fast_compile
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  real = float(np.sum(batch["input_mask"]))
  for disallow in (False, True):
    setup = _setup(_config("electra", disallow_correct=disallow))
    state = pretrain_lib.init_state(setup)
    params = jax.tree.map(np.array, state["params"])
    # the generator's output bias: +50 on every token in the batch makes them the only plausible samples
    bias = np.zeros(VOCAB, np.float32)
    bias[np.unique(batch["input_ids"])] = 50.0
    params["generator"]["generator_lm_head"]["bias"] = bias
    _, out = jax.jit(objectives.make_loss_fn(setup.graphdef, setup.rest, setup.step_config))(
        params, batch, jax.random.key(0))
    masked = float(out["masked_per_seq"]) * batch["input_ids"].shape[0]
    if disallow:
      assert float(out["sampled_equals_original"]) == 0.0
      assert float(out["replaced_fraction"]) == pytest.approx(masked / real)
    else:
      assert 0.0 <= float(out["sampled_equals_original"]) <= 1.0
      assert float(out["replaced_fraction"]) == pytest.approx(
          (1 - float(out["sampled_equals_original"])) * masked / real, abs=1e-6)


# ------------------------------------------------------------------------------------------------ sampling switches
def test_uniform_sampling_passes_a_chi_square_test():
  v, n = 1000, 200_000
  targets = jnp.full((n,), 7, jnp.int32)
  draws = np.asarray(objectives.sample_uniform(jax.random.key(0), targets, v))
  counts = np.bincount(draws, minlength=v)
  assert draws.min() >= 0 and draws.max() < v
  assert stats.chisquare(counts).pvalue > 1e-3
  # disallow_correct: uniform over the other v - 1, never the target (each row its own target)
  targets = jax.random.randint(jax.random.key(1), (n,), 0, v)
  draws = np.asarray(objectives.sample_uniform(jax.random.key(2), targets, v, disallow_correct=True))
  assert not np.any(draws == np.asarray(targets))
  assert stats.chisquare(np.bincount(draws, minlength=v)).pvalue > 1e-3
  # and a sampler that is not uniform fails the same test (the test can fail)
  skewed = np.concatenate([draws, np.zeros(2000, np.int64)])
  assert stats.chisquare(np.bincount(skewed, minlength=v)).pvalue < 1e-6


def test_disallow_correct_never_draws_the_original_from_the_model():
  rows, v = 20_000, 50
  rng = np.random.default_rng(0)
  targets = rng.integers(0, v, rows).astype(np.int32)
  logits = rng.normal(size=(rows, v)).astype(np.float32)
  logits[np.arange(rows), targets] += 8.0                     # the original is by far the most likely token
  masked = masking.Masked(input_ids=jnp.zeros((1, 1), jnp.int32), positions=jnp.zeros((1, rows), jnp.int32),
                               targets=jnp.asarray(targets)[None], weights=jnp.ones((1, rows), jnp.float32))
  kw = dict(sampling="model", temperature=1.0, vocab_size=v)
  allowed = np.asarray(objectives.sample_replacements(jax.random.key(0), masked, jnp.asarray(logits)[None],
                                                      disallow_correct=False, **kw))[0]
  assert np.mean(allowed == targets) > 0.9
  drawn = np.asarray(objectives.sample_replacements(jax.random.key(0), masked, jnp.asarray(logits)[None],
                                                    disallow_correct=True, **kw))[0]
  assert not np.any(drawn == targets)
  # the others keep their relative probabilities: softmax renormalised without the original
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p[np.arange(rows), targets] = 0
  p /= p.sum(-1, keepdims=True)
  expected = p.sum(0)
  observed = np.bincount(drawn, minlength=v)
  assert stats.chisquare(observed, expected * rows / expected.sum()).pvalue > 1e-3


# ------------------------------------------------------------------------------------------------ weight sharing
def _vocab_file(tmp_path) -> str:
  tokens = [f"[unused{i}]" for i in range(VOCAB)]
  for name, i in (("[PAD]", 0), ("[UNK]", 100), ("[CLS]", 101), ("[SEP]", 102), ("[MASK]", 103)):
    tokens[i] = name
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(tokens) + "\n")
  return str(path)


@pytest.mark.parametrize("sharing", ["embeddings", "none", "all"])
def test_weight_sharing_holds_one_array_per_shared_weight(sharing):
  d = modeling.ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64)
  g = d if sharing == "all" else modeling.generator_config(d, 0.5)
  model = modeling.ElectraPretrainingModel(d, g, rngs=nnx.Rngs(0), weight_sharing=sharing)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  gen_keys = set(params["generator"])
  disc_leaves = len(jax.tree.leaves(params["discriminator"]))
  own = {"embeddings": {"electra", "generator_predictions", "generator_lm_head"},
         "none": {"electra", "generator_predictions", "generator_lm_head"},
         "all": {"generator_predictions", "generator_lm_head"}}[sharing]
  assert gen_keys == own
  if sharing == "embeddings":
    assert "embeddings" not in params["generator"]["electra"]
  if sharing == "none":
    assert "embeddings" in params["generator"]["electra"]
  # one array per weight: the state's leaves are exactly the distinct arrays the modules hold
  arrays = {id(x) for x in jax.tree.leaves(nnx.state(model.discriminator, nnx.Param))}
  arrays |= {id(x) for x in jax.tree.leaves(nnx.state(model.generator, nnx.Param))}
  assert len(jax.tree.leaves(params)) == len(arrays)
  total = len(jax.tree.leaves(params))
  gen_view = len(jax.tree.leaves(nnx.to_pure_dict(nnx.state(model.generator, nnx.Param))))
  shared = disc_leaves + gen_view - total
  expected_shared = {"embeddings": 5, "none": 0,
                     "all": len(jax.tree.leaves(params["discriminator"]["electra"]))}[sharing]
  assert shared == expected_shared


@pytest.mark.slow
def test_weight_sharing_all_trains_one_encoder_and_exports_it_to_both_folders(tmp_path, fast_compile):
  del fast_compile
  config = _config("electra", weight_sharing="all", hidden_fraction=1.0)
  setup = _setup(config)
  assert setup.model_meta["options"]["weight_sharing"] == "all"
  state = pretrain_lib.init_state(setup)
  assert "electra" not in state["params"]["generator"]
  batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in _batch().items()}
  for step in range(2):
    state, _ = pretrain_lib.run_step(setup, state, batch, jax.random.key(step))
  params = jax.device_get(state["params"])
  vocab = _vocab_file(tmp_path)
  dirs = pretrain_lib.export_hf(setup, state["params"], str(tmp_path / "export"),
                                {"vocab_file": vocab, "lowercase": True, "strip_accents": None})
  assert sorted(dirs) == ["discriminator", "generator"]
  from electra_jax import convert  # pylint: disable=import-outside-toplevel
  disc = convert.read_hf_weights(dirs["discriminator"])
  gen = convert.read_hf_weights(dirs["generator"])
  body = sorted(k for k in disc if k.startswith("electra."))
  assert body and body == sorted(k for k in gen if k.startswith("electra."))
  for k in body:
    np.testing.assert_array_equal(disc[k], gen[k])
  # the generator folder is the trained generator: same logits as the joint model's generator
  model = pretrain_lib.merge_model(setup, params)
  loaded = convert.from_hf(dirs["generator"], "ElectraForMaskedLM")
  ids = jnp.asarray(_batch()["input_ids"])
  np.testing.assert_allclose(np.asarray(loaded(ids).logits), np.asarray(model.generator(ids).logits), atol=1e-5)
  # and through the Orbax checkpoint: its model_config rebuilds the shared model, the converter writes both parts
  ckpt = checkpointing.save_params(str(tmp_path / "ckpt"), setup.model_meta, params)
  rebuilt = checkpointing.load_model(ckpt)
  assert rebuilt.generator.electra is rebuilt.discriminator.electra
  out = str(tmp_path / "gen_hf")   # the converter binary, as a user runs it (its flags live in its own process)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "electra_jax.convert", "orbax_to_hf", f"--checkpoint={ckpt}",
                         f"--out={out}", "--part=generator"], capture_output=True, text=True, cwd=repo, check=False,
                        env=dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu"), timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["hidden_size"] == 32
  again = convert.read_hf_weights(out)
  for k in body:
    np.testing.assert_array_equal(again[k], disc[k])


def test_untied_generator_has_embeddings_of_its_own_width():
  """As the original's untied_generator_embeddings=True: embedding_size = the generator's hidden size, no projection
  (two_stage keeps the discriminator's, so the encoder can be copied)."""
  disc, gen = pretrain_lib.model_configs(_config("electra", weight_sharing="none"), VOCAB)
  assert (gen.hidden_size, gen.embedding_size, disc.embedding_size) == (16, 16, 16)
  disc, gen = pretrain_lib.model_configs(_config("electra", weight_sharing="none", hidden_fraction=0.25), VOCAB)
  assert (gen.hidden_size, gen.embedding_size) == (8, 8)
  config = _config("electra", weight_sharing="none", hidden_fraction=1.0)
  config.two_stage, config.num_train_steps = 2, 4
  disc, gen = pretrain_lib.model_configs(config, VOCAB)
  assert gen.embedding_size == disc.embedding_size == 16 and gen.hidden_size == 32


def test_weight_sharing_all_needs_a_same_size_generator():
  with pytest.raises(ValueError, match="hidden_fraction=1"):
    _setup(_config("electra", weight_sharing="all"))


# ------------------------------------------------------------------------------------------------ two-stage training
@pytest.mark.slow
def test_two_stage_trains_the_generator_then_a_discriminator_initialised_from_it(fast_compile):
  del fast_compile
  config = _config("electra", weight_sharing="none", hidden_fraction=1.0)
  config.two_stage, config.num_train_steps = 3, 6
  setup = _setup(config)
  state = pretrain_lib.init_state(setup)
  batch = {k: jax.device_put(v, setup.batch_sharding) for k, v in _batch().items()}
  seen = [jax.device_get(state["params"])]
  outs = []
  for step in range(6):
    state, out = pretrain_lib.run_step(setup, state, batch, jax.random.key(step))
    seen.append(jax.device_get(state["params"]))
    outs.append(jax.device_get(out))
  flat = lambda t: {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}  # noqa: E731
  for s in range(3):      # stage 1: the discriminator does not move; the loss is the generator's
    for k, v in flat(seen[s + 1]["discriminator"]).items():
      np.testing.assert_array_equal(v, flat(seen[s]["discriminator"])[k])
    assert float(outs[s]["loss"]) == pytest.approx(float(outs[s]["mlm_loss"]), rel=1e-6)
  assert any(not np.array_equal(v, flat(seen[0]["generator"])[k]) for k, v in flat(seen[3]["generator"]).items())
  for s in range(3, 6):   # stage 2: the generator is frozen; the loss is the discriminator's
    for k, v in flat(seen[s + 1]["generator"]).items():
      np.testing.assert_array_equal(v, flat(seen[3]["generator"])[k])
    assert float(outs[s]["loss"]) == pytest.approx(config.disc_weight * float(outs[s]["rtd_loss"]), rel=1e-6)
  # the schedule restarts (warm-up again at step 3, whose update is therefore zero): after step 3 the discriminator's
  # encoder IS the generator's, which it was not before; later steps move it
  assert float(outs[3]["learning_rate"]) == 0.0 and float(outs[4]["learning_rate"]) > 0.0
  gen_enc, disc_before = flat(seen[3]["generator"]["electra"]), flat(seen[3]["discriminator"]["electra"])
  assert sorted(gen_enc) == sorted(disc_before)
  for k in gen_enc:
    np.testing.assert_array_equal(flat(seen[4]["discriminator"]["electra"])[k], gen_enc[k])
  assert all(not np.array_equal(disc_before[k], gen_enc[k]) for k in gen_enc if "layer_norm" not in k)
  assert any(not np.array_equal(flat(seen[6]["discriminator"]["electra"])[k], gen_enc[k]) for k in gen_enc)


# ------------------------------------------------------------------------------------------------ Electric
def test_electric_nce_loss_is_the_original_formula():
  """electric_logits + rtd_loss against run_pretraining.py's TF code, transcribed in numpy, and against the Electric
  paper's NCE form: -log[(n-k) e^{-E} / ((n-k) e^{-E} + k q)] for data, -log[k q / (...)] for noise."""
  rng = np.random.default_rng(0)
  b, length, v, p = 3, 10, 40, 0.15
  disc = rng.normal(size=(b, length)).astype(np.float32)
  cloze_logits = rng.normal(size=(b, length, v)).astype(np.float32) * 2
  inputs = rng.integers(0, v, size=(b, length))
  labels = (rng.random((b, length)) < 0.3).astype(np.float32)
  mask = np.ones((b, length), np.float32)
  mask[0, 7:] = 0
  log_q = np.asarray(objectives.log_softmax_at(jnp.asarray(cloze_logits), jnp.asarray(inputs)))
  ours = float(objectives.rtd_loss(objectives.electric_logits(jnp.asarray(disc), jnp.asarray(log_q), p),
                                   jnp.asarray(labels), jnp.asarray(mask)))
  # the TF code: log_q = reduce_sum(log_softmax(logits) * one_hot(input_ids)); logits += log_q + log(p / (1 - p))
  tf_log_q = np.sum(_np_log_softmax(cloze_logits) * np.eye(v)[inputs], -1)
  logits = disc + tf_log_q + np.log(p / (1 - p))
  losses = _np_sigmoid_xent(logits, labels) * mask
  assert ours == pytest.approx(float(np.sum(losses) / (1e-6 + np.sum(mask))), rel=1e-5)
  # the paper: E = disc head output (energy), k / n = p
  q, e = np.exp(tf_log_q), disc.astype(np.float64)
  data = (1 - p) * np.exp(-e) / ((1 - p) * np.exp(-e) + p * q)
  paper = np.where(labels == 1, -np.log(1 - data), -np.log(data))
  assert ours == pytest.approx(float(np.sum(paper * mask) / np.sum(mask)), rel=1e-5)


@pytest.mark.slow
def test_two_tower_generator_never_sees_the_token_it_predicts():
  """Changing token t changes the cloze logits at every position but t (the towers read t-1 and t+1 sides)."""
  g = modeling.ElectraConfig(vocab_size=VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64)
  gen = modeling.TwoTowerClozeGenerator(g, rngs=nnx.Rngs(0))
  ids = jnp.asarray(_batch(2, 12)["input_ids"])
  mask = jnp.ones_like(ids)
  base = np.asarray(gen(ids, mask, jnp.zeros_like(ids)))
  t = 5
  changed = np.asarray(gen(ids.at[:, t].set(ids[:, t] + 1), mask, jnp.zeros_like(ids)))
  np.testing.assert_allclose(changed[:, t], base[:, t], atol=1e-5)
  others = [i for i in range(1, 11) if i != t]
  assert all(np.abs(changed[:, i] - base[:, i]).max() > 1e-4 for i in others)


# ------------------------------------------------------------------------------------------------ FLOPs per objective
def test_flops_per_objective_count_what_each_computes():
  d = modeling.ElectraConfig(vocab_size=30522, embedding_size=128, hidden_size=256, num_hidden_layers=12,
                             num_attention_heads=4, intermediate_size=1024)
  g = modeling.generator_config(d, 0.25)
  kw = dict(batch_size=128, seq_len=128, num_predictions=19)
  f = {o: flops.train_flops_per_step(d, g, objective=o, **kw) for o in
       ("electra", "electra_15", "replace_mlm", "all_tokens_mlm", "electric")}
  f["mlm"] = flops.train_flops_per_step(d, None, objective="mlm", **kw)
  assert f["electra_15"] == f["electra"]
  assert f["mlm"] < f["electra"] < f["replace_mlm"] < f["all_tokens_mlm"]
  dd = flops.Dims.from_config(d, 128)
  # all-tokens: the vocabulary head on all 128 tokens instead of 19
  head = 3 * 128 * (flops.lm_head_flops(dd, 1.0) - flops.lm_head_flops(dd, 19 / 128) + flops.binary_head_flops(dd))
  assert f["all_tokens_mlm"] - f["replace_mlm"] == pytest.approx(head)
  assert f["electric"] > f["electra"]
  assert math.isfinite(f["electric"])
