"""The original ELECTRA heads: shapes, losses, Glorot init, the joint end head, beam search and layer-wise LR decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from electra_jax import sharding
from electra_jax.convert import flatten
from electra_jax.modeling import ElectraConfig
from electra_jax.modeling.original_heads import (QA_HIDDEN_SIZE, OriginalElectraForQuestionAnswering,
                                                 OriginalElectraForSequenceClassification, answer_mask,
                                                 beam_candidates)
from electra_jax.train import optim
from tests.conftest import shared_data

CFG = ElectraConfig(vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=128)


def _qa_inputs(batch=3, length=16, question=5):
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 2000, (batch, length)).astype(np.int32)
  types = np.zeros((batch, length), np.int32)
  types[:, question:] = 1
  mask = np.ones((batch, length), np.int32)
  mask[0, -3:] = 0  # padding in the first row
  types[0, -3:] = 0
  return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


@pytest.fixture(scope="module")
def qa_model():
  """One model for the QA tests (building a model costs seconds of compilation); tests reset its options."""
  model = OriginalElectraForQuestionAnswering(CFG, rngs=nnx.Rngs(0))
  yield model


def _params(model):
  return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


# ------------------------------------------------------------------------------------------------ GLUE head
@pytest.mark.slow
def test_classification_head_shapes_loss_and_dropout():
  model = OriginalElectraForSequenceClassification(CFG.replace(num_labels=3), rngs=nnx.Rngs(0))
  ids, mask, types = _qa_inputs()
  labels = jnp.asarray([0, 2, 1])
  out = model(ids, mask, types, labels=labels)
  assert out.logits.shape == (3, 3)
  expected = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
  np.testing.assert_allclose(out.loss, expected, rtol=1e-6)
  # Only [CLS] -> dropout -> one dense layer: the logits are exactly that layer on h[:, 0].
  h0 = out.last_hidden_state[:, 0]
  np.testing.assert_allclose(out.logits, h0 @ model.classifier.kernel[...] + model.classifier.bias[...], rtol=1e-5,
                             atol=1e-6)
  trained = model(ids, mask, types, labels=labels, dropout_rng=jax.random.key(1))
  assert not np.allclose(trained.logits, out.logits)  # dropout is on in training
  assert set(_params(model)) - {k for k in _params(model) if k.startswith("electra/")} == {
      "classifier/kernel", "classifier/bias"}


@pytest.mark.slow
def test_regression_head_uses_squared_error():
  model = OriginalElectraForSequenceClassification(CFG.replace(num_labels=1), rngs=nnx.Rngs(0))
  ids, mask, types = _qa_inputs()
  scores = jnp.asarray([0.5, 3.2, 4.8])
  out = model(ids, mask, types, labels=scores)
  assert out.logits.shape == (3, 1)
  np.testing.assert_allclose(out.loss, np.mean((np.asarray(out.logits[:, 0]) - np.asarray(scores)) ** 2), rtol=1e-6)


def test_head_kernels_are_glorot_uniform_with_logical_axes(qa_model):
  model = qa_model
  params = _params(model)
  for name, (fan_in, fan_out) in {"qa_hidden": (64, QA_HIDDEN_SIZE), "answerable_hidden": (64, QA_HIDDEN_SIZE),
                                  "start_logits": (32, 1), "end_logits": (QA_HIDDEN_SIZE, 1)}.items():
    kernel, bias = params[f"{name}/kernel"], params[f"{name}/bias"]
    assert kernel.shape == (fan_in, fan_out)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.8 * limit  # uniform over the whole range, not N(0, 0.02)
    assert not bias.any()
  # Every parameter carries logical axis names the sharding table covers (this raises otherwise).
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharding.logical_to_sharding(nnx.state(model), mesh)


# ------------------------------------------------------------------------------------------------ SQuAD head
@pytest.mark.slow
def test_qa_training_outputs_and_loss(qa_model):
  model = qa_model
  model.answerable_weight = 0.5
  ids, mask, types = _qa_inputs()
  starts, ends, impossible = jnp.asarray([6, 0, 9]), jnp.asarray([8, 0, 12]), jnp.asarray([0, 1, 0])
  out = model(ids, mask, types, start_positions=starts, end_positions=ends, is_impossible=impossible)
  assert out.start_logits.shape == out.end_logits.shape == (3, 16)
  assert out.answerable_logit.shape == (3,)
  assert out.start_top_index is None  # no beam search in training
  allowed = np.asarray(answer_mask(mask, types)) > 0
  assert allowed[:, 0].all() and not allowed[:, 1:5].any() and not allowed[0, -3:].any()
  # Positions outside the context (other than [CLS]) are pushed down by 1000.
  assert (np.asarray(out.start_logits)[~allowed] < -500).all()
  assert (np.asarray(out.end_logits)[~allowed] < -500).all()
  ce = lambda logits, pos: optax.softmax_cross_entropy_with_integer_labels(logits, pos).mean()  # noqa: E731
  span = (ce(out.start_logits, starts) + ce(out.end_logits, ends)) / 2
  bce = optax.sigmoid_binary_cross_entropy(out.answerable_logit, impossible.astype(jnp.float32)).mean()
  np.testing.assert_allclose(out.loss, span + 0.5 * bce, rtol=1e-5)


@pytest.mark.slow
def test_answerability_loss_weight(qa_model):
  ids, mask, types = _qa_inputs()
  kw = dict(start_positions=jnp.asarray([6, 0, 9]), end_positions=jnp.asarray([8, 0, 12]),
            is_impossible=jnp.asarray([0, 1, 0]))
  losses = {}
  for w in (0.0, 0.5, 1.0):
    qa_model.answerable_weight = w
    out = qa_model(ids, mask, types, **kw)
    losses[w] = float(out.loss)
    bce = float(optax.sigmoid_binary_cross_entropy(out.answerable_logit, jnp.asarray([0.0, 1.0, 0.0])).mean())
  assert bce > 0
  np.testing.assert_allclose(losses[0.5] - losses[0.0], 0.5 * bce, rtol=1e-4)
  np.testing.assert_allclose(losses[1.0] - losses[0.0], bce, rtol=1e-4)
  no_cls = OriginalElectraForQuestionAnswering(CFG, answerable_classifier=False, rngs=nnx.Rngs(0))
  assert "answerable_hidden/kernel" not in _params(no_cls)
  out = no_cls(ids, mask, types, start_positions=kw["start_positions"], end_positions=kw["end_positions"])
  np.testing.assert_allclose(out.loss, losses[0.0], rtol=1e-5)  # same encoder and span layers (same seed)
  assert not np.asarray(out.answerable_logit).any()


def test_end_logits_are_dense_of_concatenated_start_and_token(qa_model):
  model = qa_model
  ids, mask, types = _qa_inputs()
  starts = jnp.asarray([6, 7, 9])
  out = model(ids, mask, types, start_positions=starts)
  h = np.asarray(out.last_hidden_state)
  p = _params(model)
  start_repr = np.repeat(h[np.arange(3), np.asarray(starts)][:, None], h.shape[1], axis=1)
  x = np.concatenate([start_repr, h], axis=-1) @ p["qa_hidden/kernel"] + p["qa_hidden/bias"]
  x = np.asarray(jax.nn.gelu(x, approximate=False))
  logits = (x @ p["end_logits/kernel"] + p["end_logits/bias"])[..., 0]
  logits = logits + 1000.0 * (np.asarray(answer_mask(mask, types)) - 1.0)
  np.testing.assert_allclose(out.end_logits, logits, rtol=1e-4, atol=1e-3)
  other = model(ids, mask, types, start_positions=jnp.asarray([10, 11, 12]))
  assert not np.allclose(other.end_logits, out.end_logits)  # the end is conditioned on the start


def test_beam_search_matches_teacher_forced_end_logits(qa_model):
  k = 4
  model = qa_model
  model.beam_size = k
  ids, mask, types = _qa_inputs()
  out = model(ids, mask, types)
  assert out.start_top_index.shape == out.start_top_log_probs.shape == (3, k)
  assert out.end_top_index.shape == out.end_top_log_probs.shape == (3, k, k)
  slp = np.asarray(out.start_top_log_probs)
  assert (np.diff(slp, axis=1) <= 1e-6).all() and (slp <= 0).all()
  np.testing.assert_allclose(slp, np.sort(np.asarray(jax.nn.log_softmax(out.start_logits)), axis=1)[:, ::-1][:, :k],
                             rtol=1e-5, atol=1e-5)
  allowed = np.asarray(answer_mask(mask, types)) > 0
  for i in range(k):
    forced = model(ids, mask, types, start_positions=out.start_top_index[:, i])
    lp = np.asarray(jax.nn.log_softmax(forced.end_logits))
    top = np.argsort(-lp, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.sort(top, axis=1), np.sort(np.asarray(out.end_top_index[:, i]), axis=1))
    np.testing.assert_allclose(np.take_along_axis(lp, np.asarray(out.end_top_index[:, i]), 1),
                               out.end_top_log_probs[:, i], rtol=1e-4, atol=1e-4)
    for b in range(3):
      assert allowed[b, np.asarray(out.start_top_index[b, i])]
      assert allowed[b, np.asarray(out.end_top_index[b, i])].all()


@pytest.mark.slow
def test_beam_decoding_on_real_squad_gives_valid_spans(qa_model):
  from electra_jax.data import squad
  from electra_jax.data.tokenization import load_tokenizer
  path = shared_data("squad/dev-v2.0.cs224n-dev-half.json")
  tok = load_tokenizer(shared_data("vocab/bert-base-uncased-vocab.txt"))
  _, examples = squad.load_squad(path)
  examples = examples[:6]
  feats = squad.featurize_squad(examples, tok, max_seq_length=96, doc_stride=32, max_query_length=32)
  assert len(feats) > len(examples)  # the contexts need several windows at this length
  model = qa_model
  model.beam_size = 5
  out = model(feats.input_ids, feats.attention_mask, feats.token_type_ids)
  cands = beam_candidates(out.start_top_log_probs, out.start_top_index, out.end_top_log_probs, out.end_top_index)
  assert len(cands) == len(feats) and all(len(c) == 25 for c in cands)
  preds, null_odds, nbest = squad.decode_candidates(
      examples, feats, cands, null_scores=np.asarray(out.answerable_logit), null_odds_relative=False,
      max_answer_length=30, null_threshold=float("inf"))
  assert set(preds) == set(null_odds) == {ex.qid for ex in examples}
  for ex in examples:
    assert null_odds[ex.qid] == pytest.approx(min(float(out.answerable_logit[f])
                                                  for f in np.nonzero(feats.example_index == examples.index(ex))[0]))
    for entry in nbest[ex.qid]:
      assert entry["text"] and entry["text"] in ex.context
      assert ex.context[entry["start_char"]:entry["end_char"]] == entry["text"]
    assert preds[ex.qid] == nbest[ex.qid][0]["text"]


# ------------------------------------------------------------------------------------------------ layer-wise decay
@pytest.mark.slow
@pytest.mark.parametrize("mode,top", [("original", 2), ("paper", 1)])
def test_layerwise_lr_decay_on_the_original_heads_param_tree(qa_model, mode, top):
  """Through the fine-tuning config's optimizer: the update of each parameter scales with decay^(depth from top)."""
  from configs import glue as glue_config
  config = glue_config.get_config(f"task=mrpc,size=small,recipe={mode}")
  assert config.optimizer.layerwise_lr_decay == 0.8 and config.optimizer.layerwise_lr_decay_mode == mode
  opt = config.optimizer
  opt.warmup_proportion = -1.0     # no warmup: the full learning rate at step 0
  opt.warmup_steps = 0
  opt.weight_decay = 0.0
  opt.clip_norm = 0.0
  n = CFG.num_hidden_layers
  params = nnx.to_pure_dict(nnx.state(qa_model, nnx.Param))
  tx, _ = optim.create(opt, params, learning_rate=1.0, num_train_steps=10)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = {k: np.asarray(v) for k, v in flatten(updates).items()}
  unit = -flat["qa_hidden/kernel"].flat[0]  # the head: multiplier 1
  assert unit > 0
  d = 0.8
  top_depth = n + top
  expect = {
      "electra/embeddings/word_embeddings": d ** top_depth,           # decay^(n+2) as coded, decay^(n+1) in the paper
      "electra/embeddings_project/kernel": d ** top_depth,
      "start_logits/kernel": 1.0,
      "answerable_logit/bias": 1.0,
  }
  for k, m in expect.items():
    np.testing.assert_allclose(-flat[k], unit * m, rtol=1e-5, err_msg=k)
  q = -flat["electra/encoder/layers/query/kernel"]  # [n, H, H]: layer i has depth i + 1
  for i in range(n):
    np.testing.assert_allclose(q[i], unit * d ** (top_depth - (i + 1)), rtol=1e-5, err_msg=f"layer {i}")
  np.testing.assert_allclose(q[-1].flat[0] / unit, d ** top, rtol=1e-5)  # the top layer: decay^2 as coded, ^1 paper
