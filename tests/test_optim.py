"""AdamW, schedules and layer-wise LR decay against hand-computed numbers and a numpy reference of the original."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from electra_jax.modeling import ElectraConfig, ElectraForSequenceClassification
from electra_jax.train import optim


def test_schedule_multiplies_warmup_and_linear_decay():
  s = optim.warmup_decay_schedule(1e-3, num_train_steps=100, warmup_steps=10)
  # min(1, t/10) * 1e-3 * (1 - t/100)
  for t, want in [(0, 0.0), (5, 0.5 * 0.95e-3), (10, 0.9e-3), (50, 0.5e-3), (99, 1e-5), (100, 0.0), (150, 0.0)]:
    assert float(s(t)) == pytest.approx(want, rel=1e-6, abs=1e-10), t


def test_schedule_sequential_and_power():
  s = optim.warmup_decay_schedule(1e-3, 100, 10, kind="sequential")
  for t, want in [(0, 0.0), (5, 0.5e-3), (10, 1e-3), (55, 0.5e-3), (100, 0.0)]:
    assert float(s(t)) == pytest.approx(want, rel=1e-6, abs=1e-10), t
  quadratic = optim.warmup_decay_schedule(1e-3, 100, 0, power=2.0, end_learning_rate=1e-4)
  assert float(quadratic(50)) == pytest.approx(0.9e-3 * 0.25 + 1e-4)
  with pytest.raises(ValueError, match="schedule kind"):
    optim.warmup_decay_schedule(1e-3, 100, kind="cosine")


def _tiny_classifier_params(layers=3):
  cfg = ElectraConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=layers,
                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
  model = nnx.eval_shape(lambda: ElectraForSequenceClassification(cfg, rngs=nnx.Rngs(0)))   # shapes suffice
  return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_weight_decay_mask_excludes_layer_norm_and_biases():
  params = _tiny_classifier_params()
  flat = {"/".join(optim.path_names(p)): m
          for p, m in jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params))[0]}
  assert flat["electra/embeddings/word_embeddings"] is True
  assert flat["electra/embeddings/layer_norm/scale"] is False
  assert flat["electra/embeddings/layer_norm/bias"] is False
  assert flat["electra/embeddings_project/kernel"] is True
  assert flat["electra/embeddings_project/bias"] is False
  assert flat["electra/encoder/layers/query/kernel"] is True
  assert flat["electra/encoder/layers/query/bias"] is False
  assert flat["electra/encoder/layers/attention_norm/scale"] is False
  assert flat["electra/encoder/layers/output_norm/bias"] is False
  assert flat["classifier/out_proj/kernel"] is True
  assert flat["classifier/out_proj/bias"] is False
  decayed = [k for k, v in flat.items() if v]
  assert all(k.endswith(("kernel", "embeddings")) for k in decayed), decayed


def _numpy_original_adamw(params, grads_seq, lrs, wd, mask, b1=0.9, b2=0.999, eps=1e-6, clip=1.0):
  """google-research/electra AdamWeightDecayOptimizer + tf.clip_by_global_norm, written out in numpy."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for grads, lr in zip(grads_seq, lrs):
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    scale = clip / max(norm, clip)
    for k in p:
      g = grads[k] * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      update = m[k] / (np.sqrt(v[k]) + eps)
      if mask[k]:
        update = update + wd * p[k]
      p[k] = p[k] - lr * update
  return p


def test_adam_without_bias_correction_matches_numpy_reference():
  rng = np.random.default_rng(0)
  params = {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                      "bias": rng.normal(size=(3,)).astype(np.float32)},
            "layer_norm": {"scale": np.ones(3, np.float32)}}
  flat_keys = [("dense", "kernel"), ("dense", "bias"), ("layer_norm", "scale")]
  grads_seq = [{k: (rng.normal(size=params[k[0]][k[1]].shape) * 3).astype(np.float32) for k in flat_keys}
               for _ in range(4)]   # norms > 1: clipping is active
  schedule = optim.warmup_decay_schedule(1e-2, num_train_steps=10, warmup_steps=2)
  tx = optim.adamw(schedule, weight_decay=0.01, clip_norm=1.0, bias_correction=False)
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)
  for g in grads_seq:
    tree = {"dense": {"kernel": g[flat_keys[0]], "bias": g[flat_keys[1]]}, "layer_norm": {"scale": g[flat_keys[2]]}}
    updates, state = tx.update(tree, state, p)
    p = optax.apply_updates(p, updates)
  want = _numpy_original_adamw({k: params[k[0]][k[1]] for k in flat_keys}, grads_seq,
                               [float(schedule(t)) for t in range(4)], 0.01,
                               {flat_keys[0]: True, flat_keys[1]: False, flat_keys[2]: False})
  for k in flat_keys:
    np.testing.assert_allclose(np.asarray(p[k[0]][k[1]]), want[k], rtol=1e-5, atol=1e-7)
  # the first step differs from bias-corrected Adam by the factor (1 - b1) / sqrt(1 - b2) = 3.16
  assert not np.allclose(np.asarray(p["dense"]["kernel"]), params["dense"]["kernel"])


def test_clipping_scales_gradients_before_the_moments():
  params = {"w": jnp.zeros(4)}
  tx = optim.adamw(1e-3, weight_decay=0.0, clip_norm=1.0)
  state = tx.init(params)
  g = {"w": jnp.array([3.0, 4.0, 0.0, 0.0])}   # norm 5
  _, state = tx.update(g, state, params)
  adam = state[1]
  np.testing.assert_allclose(np.asarray(adam.mu["w"]), 0.1 * np.array([0.6, 0.8, 0, 0]), rtol=1e-6)


def test_bias_corrected_variant_equals_optax_adamw():
  rng = np.random.default_rng(1)
  params = {"k": jnp.asarray(rng.normal(size=(5,)), jnp.float32), "bias": jnp.asarray(rng.normal(size=(5,)),
                                                                                        jnp.float32)}
  mask = {"k": True, "bias": False}
  ours = optim.adamw(1e-2, weight_decay=0.1, clip_norm=None, bias_correction=True, mask=mask)
  ref = optax.adamw(1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.1, mask=mask)
  s1, s2 = ours.init(params), ref.init(params)
  p1 = p2 = params
  for _ in range(3):
    g = {"k": jnp.asarray(rng.normal(size=(5,)), jnp.float32), "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    u1, s1 = ours.update(g, s1, p1)
    u2, s2 = ref.update(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  for k in params:
    np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p2[k]), rtol=1e-6)


def test_layerwise_multipliers_by_hand():
  params = _tiny_classifier_params(layers=3)
  mult = optim.layerwise_lr_multipliers(params, 0.8, mode="original")   # head depth n + 2 = 5
  assert float(mult["electra"]["embeddings"]["word_embeddings"]) == pytest.approx(0.8 ** 5)
  assert float(mult["electra"]["embeddings_project"]["kernel"]) == pytest.approx(0.8 ** 5)
  q = mult["electra"]["encoder"]["layers"]["query"]["kernel"]
  assert q.shape == (3, 1, 1)
  np.testing.assert_allclose(q.ravel(), [0.8 ** 4, 0.8 ** 3, 0.8 ** 2], rtol=1e-6)
  assert mult["electra"]["encoder"]["layers"]["query"]["bias"].shape == (3, 1)
  assert float(mult["classifier"]["out_proj"]["kernel"]) == 1.0
  paper = optim.layerwise_lr_multipliers(params, 0.8, mode="paper")     # head depth n + 1 = 4
  assert float(paper["electra"]["embeddings"]["word_embeddings"]) == pytest.approx(0.8 ** 4)
  np.testing.assert_allclose(paper["electra"]["encoder"]["layers"]["output"]["kernel"].ravel(),
                             [0.8 ** 3, 0.8 ** 2, 0.8], rtol=1e-6)
  assert float(paper["classifier"]["dense"]["bias"]) == 1.0


def test_layerwise_multipliers_reproduce_the_reference_table():
  # electra-reference.md §1.5: n=12, 0.8 as coded: 0.044 / 0.055 / 0.64 / 1.0; as described: 0.055 / 0.069 / 0.8;
  # n=24, 0.9 as coded: 0.065 / 0.072 / 0.81.
  def tree(n):
    return {"electra": {"embeddings": {"word_embeddings": np.zeros((5, 2))},
                        "encoder": {"layers": {"query": {"kernel": np.zeros((n, 2, 2))}}}},
            "classifier": {"kernel": np.zeros((2, 2))}}

  for n, decay, mode, want in [(12, 0.8, "original", (0.044, 0.055, 0.64)), (12, 0.8, "paper", (0.055, 0.069, 0.8)),
                               (24, 0.9, "original", (0.065, 0.072, 0.81))]:
    m = optim.layerwise_lr_multipliers(tree(n), decay, mode)
    layers = m["electra"]["encoder"]["layers"]["query"]["kernel"].ravel()
    got = (float(m["electra"]["embeddings"]["word_embeddings"]), float(layers[0]), float(layers[-1]))
    np.testing.assert_allclose(got, want, atol=5e-4)
    assert float(m["classifier"]["kernel"]) == 1.0


def test_layerwise_decay_scales_each_layer_slice_of_the_update():
  params = {"electra": {"embeddings": {"word_embeddings": jnp.ones((4, 2))},
                        "encoder": {"layers": {"dense": {"kernel": jnp.ones((3, 2, 2))}}}},
            "head": {"kernel": jnp.ones((2, 2))}}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  mult = optim.layerwise_lr_multipliers(params, 0.5, "paper")   # head depth 4
  plain = optim.adamw(1.0, weight_decay=0.0, clip_norm=None)
  scaled = optim.adamw(1.0, weight_decay=0.0, clip_norm=None, lr_multipliers=mult)
  u_plain, _ = plain.update(grads, plain.init(params), params)
  u_scaled, _ = scaled.update(grads, scaled.init(params), params)
  layer_u = np.asarray(u_scaled["electra"]["encoder"]["layers"]["dense"]["kernel"])
  base = np.asarray(u_plain["electra"]["encoder"]["layers"]["dense"]["kernel"])
  for i, factor in enumerate([0.5 ** 3, 0.5 ** 2, 0.5 ** 1]):
    np.testing.assert_allclose(layer_u[i], base[i] * factor, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u_scaled["electra"]["embeddings"]["word_embeddings"]),
                             np.asarray(u_plain["electra"]["embeddings"]["word_embeddings"]) * 0.5 ** 4, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(u_scaled["head"]["kernel"]), np.asarray(u_plain["head"]["kernel"]))


def test_create_from_config_and_errors():
  params = _tiny_classifier_params()
  cfg = {"warmup_proportion": 0.1, "layerwise_lr_decay": 0.8, "weight_decay": 0.0, "bias_correction": True}
  tx, schedule = optim.create(cfg, params, learning_rate=1e-4, num_train_steps=100)
  assert float(schedule(10)) == pytest.approx(1e-4 * 0.9)     # warmup = 10 steps
  updates, _ = jax.jit(lambda p: tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p))(params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  np.testing.assert_allclose(np.asarray(updates["classifier"]["out_proj"]["bias"]), 0.0)   # lr(0) = 0
  with pytest.raises(ValueError, match="one stack of encoder layers"):
    optim.layerwise_lr_multipliers({"head": {"kernel": np.zeros((2, 2))}}, 0.8)
  with pytest.raises(ValueError, match="mode"):
    optim.layerwise_lr_multipliers(params, 0.8, mode="wrong")


def test_zero_warmup_proportion_means_no_warmup():
  assert optim.resolve_warmup({"warmup_proportion": 0.0, "warmup_steps": 10_000}, 1000) == 0
  assert optim.resolve_warmup({"warmup_proportion": 0.1, "warmup_steps": 10_000}, 1000) == 100
  assert optim.resolve_warmup({"warmup_proportion": -1.0, "warmup_steps": 50}, 1000) == 50


def _numpy_tfa_lamb(params, grads_seq, lrs, wd, decay_mask, adapt_mask, b1=0.9, b2=0.999, eps=1e-6, clip=1.0):
  """TensorFlow Addons' LAMB (what NVIDIA's ELECTRA recipe runs) after tf.clip_by_global_norm, in numpy."""
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
    norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in grads.values()))
    scale = clip / max(norm, clip)
    for k in p:
      g = grads[k].astype(np.float64) * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      update = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      if decay_mask[k]:
        update = update + wd * p[k]
      ratio = 1.0
      if adapt_mask[k]:
        w_norm, u_norm = np.linalg.norm(p[k]), np.linalg.norm(update)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
      p[k] = p[k] - lr * ratio * update
  return p


@pytest.mark.parametrize("skip_adaptive", [True, False])
def test_lamb_matches_the_tensorflow_addons_reference(skip_adaptive):
  rng = np.random.default_rng(0)
  params = {"dense/kernel": rng.normal(size=(4, 3)).astype(np.float32),
            "dense/bias": rng.normal(size=(3,)).astype(np.float32),
            "layer_norm/scale": (1 + 0.1 * rng.normal(size=(3,))).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(4)]
  decay_mask = {"dense/kernel": True, "dense/bias": False, "layer_norm/scale": False}
  adapt_mask = decay_mask if skip_adaptive else {k: True for k in params}
  cfg = {"name": "lamb", "b1": 0.878, "b2": 0.974, "eps": 1e-6, "weight_decay": 0.01, "clip_norm": 1.0,
         "lamb_skip_adaptive": skip_adaptive, "warmup_steps": 2, "schedule": "sequential", "lr_decay_power": 0.5}
  schedule = optim.schedule_from_config(cfg, 6e-3, 10)
  tree = {"dense": {"kernel": params["dense/kernel"], "bias": params["dense/bias"]},
          "layer_norm": {"scale": params["layer_norm/scale"]}}
  tx = optim.create(cfg, tree, schedule)
  state, p = tx.init(tree), jax.tree.map(jnp.asarray, tree)
  for grads in grads_seq:
    g = {"dense": {"kernel": grads["dense/kernel"], "bias": grads["dense/bias"]},
         "layer_norm": {"scale": grads["layer_norm/scale"]}}
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  want = _numpy_tfa_lamb(params, grads_seq, [float(schedule(t)) for t in range(4)], 0.01, decay_mask, adapt_mask,
                         b1=0.878, b2=0.974)
  np.testing.assert_allclose(p["dense"]["kernel"], want["dense/kernel"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p["dense"]["bias"], want["dense/bias"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(p["layer_norm"]["scale"], want["layer_norm/scale"], rtol=1e-5, atol=1e-7)
  # NVIDIA's schedule: linear warmup to the peak, then polynomial decay (power 0.5) over the remaining steps.
  assert float(schedule(1)) == pytest.approx(3e-3) and float(schedule(2)) == pytest.approx(6e-3)
  assert float(schedule(6)) == pytest.approx(6e-3 * 0.5 ** 0.5, rel=1e-6)


def test_nvidia_preset_is_lamb_with_their_published_hyperparameters():
  from configs import pretrain_nvidia
  c = pretrain_nvidia.get_config()
  o = c.optimizer
  assert (o.name, o.b1, o.b2, o.eps, o.weight_decay, o.lr_decay_power, o.schedule) == \
      ("lamb", 0.878, 0.974, 1e-6, 0.01, 0.5, "sequential")
  assert o.lamb_skip_adaptive and o.warmup_steps == 2000 and o.clip_norm == 1.0
  assert (c.learning_rate, c.num_train_steps, c.max_seq_length) == (6e-3, 10_000, 128)
  assert c.batch_size == 176 * 8 * 48 and c.gradient_accumulation_steps == 48
  assert (c.model.hidden_size, c.model.num_hidden_layers, c.disc_weight) == (768, 12, 50.0)
  tx = optim.create(o, {"w": jnp.zeros((2, 2))}, optim.schedule_from_config(o, c.learning_rate, c.num_train_steps))
  assert isinstance(tx, optax.GradientTransformation)
  with pytest.raises(ValueError, match="optimizer.name='sgd'"):
    optim.create({"name": "sgd"}, {"w": jnp.zeros(2)}, optax.constant_schedule(1.0))
