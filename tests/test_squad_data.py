"""SQuAD reading, sliding-window featurization and span decoding, on the real dev files where possible."""

import json
import math

import numpy as np
import pytest

from electra_jax.data import squad
from electra_jax.data.tokenization import load_tokenizer
from electra_jax.eval import squad as squad_eval
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer(shared_data("vocab/bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def v1():
  return squad.load_squad(shared_data("squad/dev-v1.1.json"))


@pytest.fixture(scope="module")
def v2():
  return squad.load_squad(shared_data("squad/dev-v2.0.cs224n-dev-half.json"))


@pytest.fixture(scope="module")
def v1_train_features(v1, tok):
  return squad.featurize_squad(v1[1], tok, max_seq_length=384, doc_stride=128, max_query_length=64, is_training=True)


def test_read_real_files(v1, v2):
  version, examples = v1
  assert version == "1.1" and len(examples) == 10570
  first = examples[0]
  assert first.qid == "56be4db0acb8001400a502ec" and first.title == "Super_Bowl_50"
  assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
  assert [a.text for a in first.answers] == ["Denver Broncos"] * 3 and first.answers[0].start == 177
  assert not any(ex.is_impossible for ex in examples)
  version, examples = v2
  assert version == "2.0" and len(examples) == 6078
  impossible = [ex for ex in examples if ex.is_impossible]
  assert len(impossible) == 3168 and all(not ex.answers and ex.plausible_answers for ex in impossible)
  assert all(ex.answers for ex in examples if not ex.is_impossible)


def _dataset(qa, context="The cat sat on the mat."):
  return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}]}


@pytest.mark.parametrize("qa,message", [
    ({"id": "q1", "answers": [{"text": "cat", "answer_start": 4}]}, "question q1: no 'question' text"),
    ({"id": "q1", "question": "Who?"}, "question q1: no 'answers' field"),
    ({"id": "q1", "question": "Who?", "answers": [{"text": "cat", "answer_start": 5}]},
     r"question q1: answers\[0\] text 'cat' does not match the context at answer_start 5 \(context has 'at ' there\)"),
    ({"id": "q1", "question": "Who?", "answers": []}, "question q1: no answers"),
    ({"question": "Who?", "answers": []}, "has no 'id'"),
])
def test_malformed_records_name_file_and_id(tmp_path, qa, message):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(_dataset(qa)))
  with pytest.raises(squad.SquadFormatError, match=rf"bad.json: .*{message}"):
    squad.read_squad(path)


def test_missing_context_and_duplicate_ids(tmp_path):
  path = tmp_path / "bad.json"
  qa = {"id": "q7", "question": "Who?", "answers": [{"text": "cat", "answer_start": 4}]}
  data = _dataset(qa)
  del data["data"][0]["paragraphs"][0]["context"]
  path.write_text(json.dumps(data))
  with pytest.raises(squad.SquadFormatError, match=r"bad.json: paragraph 0 of article 'T' \(questions \['q7'\]\)"):
    squad.read_squad(path)
  data = _dataset(qa)
  data["data"][0]["paragraphs"][0]["qas"].append(qa)
  path.write_text(json.dumps(data))
  with pytest.raises(squad.SquadFormatError, match="question q7: id appears twice"):
    squad.read_squad(path)
  data = _dataset(dict(qa, is_impossible=True))
  data["version"] = "v2.0"
  path.write_text(json.dumps(data))
  with pytest.raises(squad.SquadFormatError, match="question q7: is_impossible is true but 'answers' is not empty"):
    squad.read_squad(path)


def test_doc_spans_and_max_context_by_hand():
  # 10 tokens, windows of 4 starting 3 apart: [0..3], [3..6], [6..9].
  spans = squad.doc_spans(10, 4, 3)
  assert spans == [(0, 4), (3, 4), (6, 4)]
  # Token 3: min(3, 0)+0.04 in window 0 vs min(0, 3)+0.04 in window 1 -> tie, the first window keeps it.
  # Token 4: window 1 gives min(1, 2) = 1 > 0 in window 0 (which does not contain it anyway).
  # Token 6: min(3, 0) in window 1 ties min(0, 3) in window 2, so window 1 keeps it too.
  assert squad.max_context_owner(spans, 10).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert squad.doc_spans(3, 4, 3) == [(0, 3)] and squad.doc_spans(0, 4, 3) == [(0, 0)]
  offsets = np.array([[0, 3], [4, 7], [7, 9], [10, 14]])
  assert squad.answer_token_span(offsets, 4, 9) == (1, 2)
  assert squad.answer_token_span(offsets, 5, 8) == (1, 2)  # inside word pieces: widened to whole tokens


def test_featurize_windows(tok):
  words = [f"w{i}" for i in range(60)]
  context = " ".join(words)
  answer_start = context.index("w50")
  ex = squad.SquadExample("q", "where is it", context, (squad.Answer("w50 w51", answer_start),))
  feats = squad.featurize_squad([ex], tok, max_seq_length=48, doc_stride=20, max_query_length=64, is_training=True)
  n_q = len(tok.encode("where is it", add_special_tokens=False).ids)
  prefix = n_q + 2
  context_tokens = len(tok.encode(context, add_special_tokens=False).ids)
  assert len(feats) == len(squad.doc_spans(context_tokens, 48 - n_q - 3, 20)) > 2
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  owners = np.zeros(context_tokens, int)
  for f in range(len(feats)):
    ids = feats.input_ids[f]
    n = int(feats.attention_mask[f].sum())
    assert ids[0] == cls and ids[prefix - 1] == sep and ids[n - 1] == sep and (ids[n:] == 0).all()
    assert (feats.token_type_ids[f, :prefix] == 0).all() and (feats.token_type_ids[f, prefix:n] == 1).all()
    in_ctx = feats.offsets[f, :, 0] >= 0
    assert in_ctx[prefix:n - 1].all() and not in_ctx[:prefix].any() and not in_ctx[n - 1:].any()
    for t in np.nonzero(feats.token_is_max_context[f])[0]:
      start, end = feats.offsets[f, t]
      owners[len(tok.encode(context[:start], add_special_tokens=False).ids)] += 1
    s, e = feats.start_positions[f], feats.end_positions[f]
    if s:
      assert context[feats.offsets[f, s, 0]:feats.offsets[f, e, 1]] == "w50 w51"
    else:
      assert e == 0
  assert (owners == 1).all()  # every context token is max-context in exactly one window
  assert (feats.start_positions > 0).sum() >= 1
  with pytest.raises(ValueError, match="leaves no room for context"):
    squad.featurize_squad([ex], tok, max_seq_length=5, doc_stride=2, max_query_length=64)


def test_featurize_real_dev_recovers_gold_answers(v1, v1_train_features):
  _, examples = v1
  feats = v1_train_features
  summary = feats.summary
  assert summary.examples == summary.answerable == 10570 and summary.features == len(feats) >= 10570
  recovered: dict[str, str] = {}
  for f in np.nonzero(feats.start_positions)[0]:
    ex = examples[feats.example_index[f]]
    text = ex.context[feats.offsets[f, feats.start_positions[f], 0]:feats.offsets[f, feats.end_positions[f], 1]]
    assert recovered.setdefault(ex.qid, text) == text
  assert len(recovered) == 10570  # every answer lies inside at least one window
  unrecoverable = set(summary.unrecoverable)
  for ex in examples:
    if ex.qid not in unrecoverable:
      assert " ".join(recovered[ex.qid].split()) == " ".join(ex.answers[0].text.split()), ex.qid
  # Answers that start or end inside a word piece ("gold" in "golden"): 32 of 10570 with the uncased vocab.
  assert 0 < len(unrecoverable) <= 0.005 * len(examples)
  dropped = squad.featurize_squad(examples[:200], load_tokenizer(shared_data("vocab/bert-base-uncased-vocab.txt")),
                                  is_training=True, drop_unrecoverable=True)
  assert dropped.summary.dropped == dropped.summary.unrecoverable
  assert set(dropped.summary.dropped).isdisjoint(examples[i].qid for i in dropped.example_index)


def _gold_logits(feats, examples, null_for_impossible=False):
  rng = np.random.default_rng(0)
  start = rng.normal(-5.0, 0.5, feats.input_ids.shape)
  end = rng.normal(-5.0, 0.5, feats.input_ids.shape)
  for f in range(len(feats)):
    s, e = feats.start_positions[f], feats.end_positions[f]
    if s:
      start[f, s], end[f, e] = 8.0, 8.0
    elif null_for_impossible and examples[feats.example_index[f]].is_impossible:
      start[f, 0], end[f, 0] = 6.0, 6.0
  return start, end


def test_postprocess_recovers_gold_spans_v1(v1, v1_train_features):
  _, examples = v1
  feats = v1_train_features
  start, end = _gold_logits(feats, examples)
  # Some gold answers are longer than the default 30 tokens; allow them here.
  preds, null_odds, nbest = squad.postprocess(examples, feats, start, end, max_answer_length=384)
  assert null_odds == {} and len(preds) == 10570
  unrecoverable = set(feats.summary.unrecoverable)
  for ex in examples:
    if ex.qid not in unrecoverable:
      assert " ".join(preds[ex.qid].split()) == " ".join(ex.answers[0].text.split())
  top = nbest[examples[0].qid]
  assert top[0]["text"] == "Denver Broncos" and sum(e["probability"] for e in top) == pytest.approx(1.0)
  assert len({e["text"] for e in top}) == len(top) <= 20
  data = json.loads(shared_data("squad/dev-v1.1.json").read_text())
  scores = squad_eval.evaluate(data, preds)
  assert scores["exact_match"] > 99.6 and scores["f1"] > 99.8


def test_postprocess_v2_null_threshold(v2, tok):
  _, examples = v2
  examples = examples[:400]
  feats = squad.featurize_squad(examples, tok, is_training=True)
  start, end = _gold_logits(feats, examples, null_for_impossible=True)
  preds, null_odds, _ = squad.postprocess(examples, feats, start, end, version_2=True)
  for ex in examples:
    if ex.is_impossible:
      assert preds[ex.qid] == "" and null_odds[ex.qid] > 0
    elif ex.qid not in feats.summary.unrecoverable:
      assert preds[ex.qid] == ex.answers[0].text and null_odds[ex.qid] < 0
  # A threshold above every null odds always picks the best span where there is one.
  always, _, nbest = squad.postprocess(examples, feats, start, end, version_2=True, null_threshold=1e9)
  for ex in examples:
    assert always[ex.qid] == next((e["text"] for e in nbest[ex.qid] if e["text"]), "")
  assert sum(bool(always[ex.qid]) for ex in examples if ex.is_impossible) > 150


def _toy_features(tok):
  context = "Alpha beta gamma delta. Alpha beta again."
  ex = squad.SquadExample("t1", "which", context, (squad.Answer("beta gamma", 6),))
  return ex, squad.featurize_squad([ex], tok, max_seq_length=32, doc_stride=8, max_query_length=8)


def test_decode_candidates_by_hand(tok):
  ex, feats = _toy_features(tok)
  p = 3  # [CLS] which [SEP]
  assert ex.context[feats.offsets[0, p + 1, 0]:feats.offsets[0, p + 2, 1]] == "beta gamma"
  cands = [[(p + 1, p + 2, 5.0), (p + 5, p + 6, 5.0), (p + 1, p + 2, 4.0), (p, p + 1, 4.5),
            (1, 2, 9.0), (p + 2, p + 1, 9.0), (p, p + 7, 9.0)]]  # question tokens, end < start, too long: dropped
  preds, odds, nbest = squad.decode_candidates([ex], feats, cands, max_answer_length=4)
  assert preds == {"t1": "beta gamma"} and odds == {}
  # Ties keep candidate order; repeated texts ("beta gamma" at 4.0, the other "Alpha beta" at 4.5) are dropped.
  assert [(e["text"], e["score"], e["start_char"]) for e in nbest["t1"]] == [("beta gamma", 5.0, 6),
                                                                             ("Alpha beta", 5.0, 24)]
  assert [e["probability"] for e in nbest["t1"]] == pytest.approx([0.5, 0.5])
  # BERT/HF null handling: null odds = null score - best span score.
  preds, odds, nbest = squad.decode_candidates([ex], feats, cands, null_scores=[6.0], max_answer_length=4)
  assert odds == {"t1": 1.0} and preds == {"t1": ""}
  assert [e["text"] for e in nbest["t1"]] == ["", "beta gamma", "Alpha beta"]
  preds, _, _ = squad.decode_candidates([ex], feats, cands, null_scores=[6.0], null_threshold=1.5,
                                        max_answer_length=4)
  assert preds == {"t1": "beta gamma"}
  # ELECTRA answerability head: absolute null odds, always the best span with an infinite threshold.
  preds, odds, nbest = squad.decode_candidates([ex], feats, cands, null_scores=[-2.0], null_odds_relative=False,
                                               null_threshold=math.inf, max_answer_length=4)
  assert preds == {"t1": "beta gamma"} and odds == {"t1": -2.0} and "" not in [e["text"] for e in nbest["t1"]]
  # No valid span at all: v1 predicts "", v2 predicts "" with infinite null odds.
  assert squad.decode_candidates([ex], feats, [[(1, 2, 3.0)]])[0] == {"t1": ""}
  preds, odds, _ = squad.decode_candidates([ex], feats, [[]], null_scores=[0.0])
  assert preds == {"t1": ""} and odds == {"t1": math.inf}


def test_read_squad_tfds_matches_json(v1, v2):
  import tensorflow_datasets as tfds
  _, examples = v2
  sample = examples[:3] + [ex for ex in examples if ex.is_impossible][:3]

  def as_record(ex):
    def answers(items):
      return {"text": np.array([a.text.encode() for a in items], dtype=object),
              "answer_start": np.array([a.start for a in items], np.int32)}
    return {"id": ex.qid.encode(), "title": ex.title.encode(), "context": ex.context.encode(),
            "question": ex.question.encode(), "answers": answers(ex.answers),
            "is_impossible": np.bool_(ex.is_impossible), "plausible_answers": answers(ex.plausible_answers)}

  def fake_source(builder, split, **_):
    assert builder.name == "squad" and builder.builder_config.name == "v2.0" and split == "validation"
    return [as_record(ex) for ex in sample]

  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    assert squad.read_squad_tfds("v2.0", "dev", data_dir="/nonexistent") == sample
  # Random strings from the real squad/v1.1 feature spec: answers do not match their contexts, which is reported.
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(squad.SquadFormatError, match=r"TFDS squad/v1.1 validation: question \S+: answers\[0\]"):
      squad.read_squad_tfds("v1.1", "validation", data_dir="/nonexistent")
