"""SQuAD fine-tuning end to end on the real dev files (tiny model, a few steps).

The SQuAD train files are not on disk, so these runs train on the first questions of the dev file and evaluate on
the same questions: the point is that the pipeline runs, writes the official files, and scores them like the
official scripts, not the scores themselves.
"""

import io
import json
import os
from contextlib import redirect_stdout

import pytest

from configs import squad as squad_config
from electra_jax.eval import squad as squad_eval
from electra_jax.eval import tasks
from electra_jax.train import finetune_lib
from tests.conftest import shared_data

V11 = "squad/dev-v1.1.json"
V20 = "squad/dev-v2.0.cs224n-dev-half.json"


def tiny_squad_config(version: str, head: str, data: str, **overrides):
  c = squad_config.get_config(f"version={version},head={head},size=tiny")
  path = os.fspath(shared_data(data))
  c.train_file = path   # dev as train: the train files are not part of the shared data
  c.eval_file = path
  c.vocab_file = os.fspath(shared_data("vocab/bert-base-uncased-vocab.txt"))
  c.max_seq_length = 128
  c.doc_stride = 64
  c.max_query_length = 32
  c.beam_size = 5
  c.max_train_examples = 24
  c.max_eval_examples = 24
  c.num_train_steps = 4
  c.batch_size = 8
  c.eval_batch_size = 16
  c.log_every_steps = 2
  c.checkpoint_every_steps = 0
  for k, v in overrides.items():
    c[k] = v
  return c


def _official_cli(*args) -> dict:
  out = io.StringIO()
  with redirect_stdout(out):
    assert squad_eval.main(list(args)) == 0
  return json.loads(out.getvalue())


@pytest.mark.slow
def test_squad_v11_hf_head(tmp_path):
  config = tiny_squad_config("1.1", "hf", V11)
  results = finetune_lib.train_and_evaluate(config, os.fspath(tmp_path))
  assert results["head"] == "ElectraForQuestionAnswering" and results["task"] == "squad1.1"
  assert results["train_examples"] == 24 and results["train_rows"] >= 24
  dev = results["trials"][0]["metrics"]["dev"]
  assert set(dev) == {"exact_match", "f1"}
  pred_dir = tmp_path / "seed_0" / "predictions"
  assert sorted(os.listdir(pred_dir)) == ["nbest_predictions.json", "predictions.json"]
  predictions = json.loads((pred_dir / "predictions.json").read_text())
  from electra_jax.data import squad
  _, examples = squad.load_squad(shared_data(V11))
  by_id = {ex.qid: ex for ex in examples[:24]}
  assert set(predictions) == set(by_id)
  for qid, text in predictions.items():
    assert text and text in by_id[qid].context
  # The same file scored by the official-equivalent CLI gives the run's numbers (on the 24-question slice).
  subset = tmp_path / "subset.json"
  with open(shared_data(V11), encoding="utf-8") as f:
    subset.write_text(json.dumps(tasks.subset_squad(json.load(f), set(by_id))))
  assert _official_cli(os.fspath(subset), os.fspath(pred_dir / "predictions.json")) == pytest.approx(dev)


@pytest.mark.slow
def test_squad_v20_original_head(tmp_path):
  config = tiny_squad_config("2.0", "original", V20)
  assert config.answerable_classifier and config.na_threshold == -2.75
  results = finetune_lib.train_and_evaluate(config, os.fspath(tmp_path))
  assert results["head"] == "OriginalElectraForQuestionAnswering" and results["task"] == "squad2.0"
  dev = results["trials"][0]["metrics"]["dev"]
  for key in ("exact", "f1", "total", "HasAns_exact", "NoAns_exact", "best_exact", "best_exact_thresh", "best_f1",
              "best_f1_thresh"):
    assert key in dev
  assert dev["total"] == 24
  pred_dir = tmp_path / "seed_0" / "predictions"
  assert sorted(os.listdir(pred_dir)) == ["nbest_predictions.json", "null_odds.json", "predictions.json",
                                          "predictions_thresholded.json"]
  predictions = json.loads((pred_dir / "predictions.json").read_text())
  null_odds = json.loads((pred_dir / "null_odds.json").read_text())
  thresholded = json.loads((pred_dir / "predictions_thresholded.json").read_text())
  assert set(predictions) == set(null_odds) == set(thresholded) and len(predictions) == 24
  assert all(predictions.values())  # the original writes the best non-null span; the null odds decide
  for qid, text in thresholded.items():
    assert text == ("" if null_odds[qid] > -2.75 else predictions[qid])
  subset = tmp_path / "subset.json"
  with open(shared_data(V20), encoding="utf-8") as f:
    subset.write_text(json.dumps(tasks.subset_squad(json.load(f), set(predictions))))
  official = _official_cli(os.fspath(subset), os.fspath(pred_dir / "predictions.json"), "--na-prob-file",
                           os.fspath(pred_dir / "null_odds.json"), "--na-prob-thresh", "-2.75")
  assert official == pytest.approx(dev)
  # Thresholded predictions scored without the null odds give the same exact / f1.
  plain = _official_cli(os.fspath(subset), os.fspath(pred_dir / "predictions_thresholded.json"))
  assert plain["exact"] == pytest.approx(dev["exact"]) and plain["f1"] == pytest.approx(dev["f1"])


def test_squad_version_mismatch_is_reported(tmp_path):
  config = tiny_squad_config("1.1", "original", V20)
  with pytest.raises(tasks.TaskError, match=r"dev-v2\.0\.cs224n-dev-half\.json is SQuAD v2\.0 data"):
    finetune_lib.train_and_evaluate(config, os.fspath(tmp_path))


def test_squad_record_without_context_names_the_question(tmp_path):
  with open(shared_data(V11), encoding="utf-8") as f:
    data = json.load(f)
  data["data"] = data["data"][:1]
  paragraph = data["data"][0]["paragraphs"][0]
  del paragraph["context"]
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(data))
  config = tiny_squad_config("1.1", "hf", V11, train_file=os.fspath(bad))
  with pytest.raises(ValueError, match=rf"bad\.json: paragraph 0 .* \(questions \['{paragraph['qas'][0]['id']}'"):
    finetune_lib.train_and_evaluate(config, os.fspath(tmp_path / "run"))


def test_squad_from_tfds_is_scored_like_the_json(tmp_path):
  """TFDS records (served by tfds.testing.mock_data) feed the same features, and the rebuilt JSON scores alike."""
  import numpy as np
  import tensorflow_datasets as tfds
  from electra_jax.data import squad
  from electra_jax.data.tokenization import load_tokenizer
  _, examples = squad.load_squad(shared_data(V20))
  sample = examples[:6] + [ex for ex in examples[6:] if ex.is_impossible][:4]

  def answers(items):
    return {"text": np.array([a.text.encode() for a in items], dtype=object),
            "answer_start": np.array([a.start for a in items], np.int32)}

  def fake_source(builder, split, **_):
    assert builder.name == "squad" and builder.builder_config.name == "v2.0"
    return [{"id": ex.qid.encode(), "title": ex.title.encode(), "context": ex.context.encode(),
             "question": ex.question.encode(), "answers": answers(ex.answers),
             "is_impossible": np.bool_(ex.is_impossible), "plausible_answers": answers(ex.plausible_answers)}
            for ex in sample]

  config = tiny_squad_config("2.0", "original", V20, data_source="tfds", tfds_data_dir="/nonexistent",
                             max_train_examples=-1, max_eval_examples=-1)
  tok = load_tokenizer(config.vocab_file)
  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    adapter = tasks.make_adapter(config, tok)
    train, info = adapter.train_arrays()
    [dev] = adapter.eval_sets(include_test=True)
  assert info["train_examples"] == 10 and set(train) == {"input_ids", "attention_mask", "token_type_ids",
                                                         "start_positions", "end_positions", "is_impossible"}
  data, dev_examples, _, source = dev.payload
  assert dev_examples == sample and source == "TFDS squad/v2.0 validation"
  assert squad.parse_squad(data)[1] == sample  # the rebuilt JSON holds the same questions
  gold = {ex.qid: (ex.answers[0].text if ex.answers else "") for ex in sample}
  scores = squad_eval.evaluate(data, gold)
  assert scores["exact"] == scores["f1"] == 100.0 and scores["NoAns_total"] == sum(ex.is_impossible for ex in sample)
