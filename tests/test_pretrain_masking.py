"""Dynamic masking, Gumbel sampling, replaced-token labels and the histogram AUC of the pretraining step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score

from electra_jax.train import masking as pl

PAD, CLS, SEP, MASK, VOCAB = 0, 101, 102, 103, 30522


def _batch(rng, b=64, length=128):
  """Packed-looking rows: [CLS] A [SEP] B [SEP] then padding, with random real lengths (some very short)."""
  ids = np.zeros((b, length), np.int32)
  mask = np.zeros((b, length), np.int32)
  for i in range(b):
    n = int(rng.integers(3, length + 1)) if i else 2   # row 0: only [CLS] [SEP], nothing maskable
    body = rng.integers(1000, VOCAB, size=n)
    body[0], body[n - 1] = CLS, SEP
    if n > 4:
      body[n // 2] = SEP
    ids[i, :n], mask[i, :n] = body, 1
  return jnp.asarray(ids), jnp.asarray(mask)


def _mask(rng, ids, mask, masking="electra", mask_prob=0.15):
  p = pl.max_predictions_per_seq(mask_prob, ids.shape[1])
  return pl.mask_tokens(rng, ids, mask, mask_prob=mask_prob, max_predictions=p, mask_id=MASK,
                        ignore_ids=(PAD, CLS, SEP, MASK), vocab_size=VOCAB, masking=masking), p


def test_max_predictions_as_the_original():
  assert pl.max_predictions_per_seq(0.15, 128) == 19
  assert pl.max_predictions_per_seq(0.15, 512) == 79
  assert pl.max_predictions_per_seq(0.25, 512) == 130


def test_counts_positions_and_targets():
  ids, mask = _batch(np.random.default_rng(0))
  m, p = _mask(jax.random.key(1), ids, mask)
  ids_np, mask_np = np.asarray(ids), np.asarray(mask)
  pos, w, tgt, new = (np.asarray(x) for x in (m.positions, m.weights, m.targets, m.input_ids))
  assert pos.shape == w.shape == tgt.shape == (64, p)
  for i in range(64):
    n_real = mask_np[i].sum()
    candidates = {j for j in range(128) if mask_np[i, j] and ids_np[i, j] not in (CLS, SEP, PAD, MASK)}
    # float32 product, rounded half to even: what tf.round(tf.cast(n, tf.float32) * mask_prob) gives
    want = min(p, max(1, int(np.round(np.float32(n_real) * np.float32(0.15)))), len(candidates))
    chosen = pos[i][w[i] > 0]
    assert len(chosen) == want, i
    assert len(set(chosen.tolist())) == want                  # without replacement
    assert set(chosen.tolist()) <= candidates                 # never [CLS]/[SEP]/padding
    np.testing.assert_array_equal(tgt[i][w[i] > 0], ids_np[i, chosen])
    assert np.all(pos[i][w[i] == 0] == 0) and np.all(tgt[i][w[i] == 0] == 0)
    untouched = np.setdiff1d(np.arange(128), chosen)
    np.testing.assert_array_equal(new[i, untouched], ids_np[i, untouched])
  assert w[0].sum() == 0   # [CLS] [SEP] only: the one prediction has no candidate and is dropped


def test_replacement_rates():
  ids, mask = _batch(np.random.default_rng(2), b=256)
  for masking, (want_mask, want_random) in (("electra", (0.85, 0.0)), ("bert", (0.8, 0.1))):
    m, _ = _mask(jax.random.key(3), ids, mask, masking)
    w = np.asarray(m.weights) > 0
    at = np.take_along_axis(np.asarray(m.input_ids), np.asarray(m.positions), axis=1)[w]
    orig = np.asarray(m.targets)[w]
    frac_mask = np.mean(at == MASK)
    frac_kept = np.mean(at == orig)
    assert abs(frac_mask - want_mask) < 0.02, (masking, frac_mask)
    assert abs((1 - frac_mask - frac_kept) - want_random) < 0.02, (masking, frac_kept)
  with pytest.raises(ValueError, match="masking"):
    _mask(jax.random.key(0), ids, mask, "spanbert")


@pytest.mark.slow
def test_masking_is_deterministic_per_key():
  ids, mask = _batch(np.random.default_rng(4), b=8)
  a, _ = _mask(jax.random.key(5), ids, mask)
  b, _ = _mask(jax.random.key(5), ids, mask)
  c, _ = _mask(jax.random.key(6), ids, mask)
  np.testing.assert_array_equal(np.asarray(a.positions), np.asarray(b.positions))
  assert not np.array_equal(np.asarray(a.positions), np.asarray(c.positions))


def test_corrupt_labels_only_real_changes():
  ids = jnp.array([[CLS, 7, 8, 9, SEP, PAD]])
  mask = jnp.array([[1, 1, 1, 1, 1, 0]])
  masked = pl.Masked(input_ids=jnp.array([[CLS, MASK, 8, MASK, SEP, PAD]]), positions=jnp.array([[1, 3, 0]]),
                     targets=jnp.array([[7, 9, 0]]), weights=jnp.array([[1.0, 1.0, 0.0]]))
  sampled = jnp.array([[7, 50, 77]])    # position 1 sampled its original; position 3 replaced; slot 3 unused
  corrupted, labels = pl.corrupt(masked, sampled, ids, mask)
  np.testing.assert_array_equal(np.asarray(corrupted), [[CLS, 7, 8, 50, SEP, PAD]])
  np.testing.assert_array_equal(np.asarray(labels), [[False, False, False, True, False, False]])


def test_categorical_sampling_follows_softmax_at_temperature():
  logits = jnp.broadcast_to(jnp.log(jnp.array([0.7, 0.2, 0.1])), (20000, 3))
  s = np.asarray(pl.sample_categorical(jax.random.key(0), logits))
  np.testing.assert_allclose(np.bincount(s, minlength=3) / len(s), [0.7, 0.2, 0.1], atol=0.015)
  hot = np.asarray(pl.sample_categorical(jax.random.key(1), logits, temperature=2.0))
  p = np.array([0.7, 0.2, 0.1]) ** 0.5
  np.testing.assert_allclose(np.bincount(hot, minlength=3) / len(hot), p / p.sum(), atol=0.015)


@pytest.mark.slow
def test_categorical_sampling_over_blocks_is_the_softmax_and_never_picks_empty_slots():
  # V = 300 over blocks of 128 (the last block short), mass spread over several blocks, some logits -inf.
  rng = np.random.default_rng(0)
  logits = rng.normal(size=300) * 1.5
  logits[[0, 127, 128, 299, 150]] = -np.inf
  logits[[5, 140, 290]] += 3.0
  p = np.exp(logits - logits.max())
  p /= p.sum()
  n = 200_000
  s = np.asarray(pl.sample_categorical(jax.random.key(2), jnp.broadcast_to(jnp.asarray(logits, jnp.float32),
                                                                            (4, n // 4, 300))))
  assert s.shape == (4, n // 4) and s.min() >= 0 and s.max() < 300
  freq = np.bincount(s.reshape(-1), minlength=300) / n
  assert freq[[0, 127, 128, 299, 150]].sum() == 0
  np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p.max() / n))
  # chi-square against the softmax: far below the 0.999 quantile of its ~294 degrees of freedom (~390)
  keep = p > 0
  chi2 = np.sum((freq[keep] - p[keep]) ** 2 / p[keep]) * n
  assert chi2 < 390, chi2
  # a single dominant logit and a one-hot distribution
  one = jnp.full((3, 1000), -jnp.inf).at[:, 777].set(0.0)
  np.testing.assert_array_equal(np.asarray(pl.sample_categorical(jax.random.key(3), one)), [777, 777, 777])


@pytest.mark.slow
@pytest.mark.parametrize("vocab", [50, 300])   # one short block; two blocks of 128 and a short one
def test_masked_lm_loss_equals_cross_entropy_and_top1_accuracy(vocab):
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 5, vocab)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, size=(2, 5)))
  targets = targets.at[0, 0].set(int(jnp.argmax(logits[0, 0])))   # at least one correct prediction
  weights = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], jnp.float32)
  loss, acc = pl.masked_lm_loss(logits, targets, weights)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  assert float(loss) == pytest.approx(float(jnp.sum(ce * weights) / jnp.sum(weights)), rel=1e-6)
  expect = float(jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / jnp.sum(weights))
  assert float(acc) == pytest.approx(expect) and expect > 0
  g = jax.grad(lambda l: pl.masked_lm_loss(l, targets, weights)[0])(logits)
  g_ref = jax.grad(lambda l: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(l, targets) * weights)
                   / jnp.sum(weights))(logits)
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-7)


def test_histogram_auc_matches_sklearn():
  rng = np.random.default_rng(0)
  labels = rng.random((32, 64)) < 0.15
  logits = rng.normal(size=labels.shape) + 1.5 * labels
  weights = (rng.random(labels.shape) < 0.9).astype(np.float32)
  got = float(pl.histogram_auc(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights)))
  keep = weights > 0
  assert got == pytest.approx(roc_auc_score(labels[keep], logits[keep]), abs=2e-3)
  assert np.isnan(float(pl.histogram_auc(jnp.zeros(4), jnp.zeros(4), jnp.ones(4))))   # no positives: undefined
  metrics = pl.discriminator_metrics(jnp.array([2.0, -1.0, 3.0, -2.0]), jnp.array([1, 1, 0, 0]),
                                     jnp.array([1.0, 1.0, 1.0, 1.0]))
  assert float(metrics["disc_accuracy"]) == pytest.approx(0.5)
  assert float(metrics["disc_precision"]) == pytest.approx(0.5)
  assert float(metrics["disc_recall"]) == pytest.approx(0.5)
  assert float(metrics["disc_auc"]) == pytest.approx(0.5)
