"""The SQuAD scorer: hand-worked cases for the official v1.1/v2.0 rules, and the real dev files."""

import json
import subprocess
import sys

import pytest

from electra_jax.data import squad as squad_data
from electra_jax.eval import squad
from tests.conftest import shared_data


@pytest.mark.parametrize("text,normalized", [
    ("The  Quick, Brown   fox!", "quick brown fox"),
    ("An apple a day", "apple day"),
    ("theater at the end", "theater at end"),        # articles only as whole words
    ("U.S.-based", "usbased"),                       # ASCII punctuation is deleted, not replaced by a space
    ("Café—Paris", "café—paris"),                    # non-ASCII punctuation stays (string.punctuation is ASCII)
    ("\tA\n", ""),
])
def test_normalize_answer(text, normalized):
  assert squad.normalize_answer(text) == normalized


def test_exact_and_f1_by_hand():
  assert squad.exact_match("the Denver Broncos.", "denver broncos")
  assert not squad.exact_match("Denver", "Denver Broncos")
  # pred {broncos}, gold {denver, broncos}: precision 1, recall 1/2.
  assert squad.f1_v1("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
  # repeated tokens count with multiplicity: pred {a1, b, b}, gold {b, c}: 1 shared -> P 1/3, R 1/2.
  assert squad.f1_v1("x b b", "b c") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
  # Empty answers: v1.1 gives F1 0 even when both are empty; v2.0 gives 1 when both normalize to nothing.
  assert squad.f1_v1("", "") == 0.0 and squad.exact_match("", "")
  assert squad.f1_v2("", "") == 1.0 and squad.f1_v2("The", "") == 1.0 and squad.f1_v2("Paris", "") == 0.0
  assert squad.f1_v2("", "Paris") == 0.0 and squad.f1_v2("Broncos", "Denver Broncos") == pytest.approx(2 / 3)


def _dataset(version, qas, context="The Denver Broncos won in 1990 in Paris."):
  return {"version": version, "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}


def _qa(qid, *answers):
  return {"id": qid, "question": "?", "answers": [{"text": a, "answer_start": 0} for a in answers]}


V2 = _dataset("v2.0", [_qa("q1", "Denver Broncos", "the Denver Broncos"), _qa("q2", "1990"), _qa("q3"), _qa("q4")])
V2_PREDS = {"q1": "Broncos", "q2": "1990", "q3": "", "q4": "Paris", "extra": "ignored"}
V2_NA = {"q1": 0.2, "q2": -1.0, "q3": 0.9, "q4": 0.5}


def test_v1_max_over_golds_and_missing(capsys):
  data = _dataset("1.1", [_qa("a", "Denver Broncos", "Broncos"), _qa("b", "1990"), _qa("c", "Paris")])
  out = squad.evaluate(data, {"a": "broncos", "b": "in 1990"})
  # a: EM 1 (second gold); b: EM 0, F1 2/3; c: missing -> 0 but still counted.
  assert out == pytest.approx({"exact_match": 100 / 3, "f1": 100 * (1 + 2 / 3) / 3})
  assert "Unanswered question c will receive score 0." in capsys.readouterr().err


def test_v2_by_hand():
  out = squad.evaluate(V2, V2_PREDS)
  # q1 F1 2/3, q2 exact, q3 correct no-answer, q4 wrong; no na_probs -> no best_* keys (as the official script).
  assert out == pytest.approx({"exact": 50.0, "f1": 100 * (2 / 3 + 2) / 4, "total": 4,
                               "HasAns_exact": 50.0, "HasAns_f1": 100 * (2 / 3 + 1) / 2, "HasAns_total": 2,
                               "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2})
  # na_prob > 0.4 for q3 and q4: both count as "no answer", which is right for both.
  out = squad.evaluate(V2, V2_PREDS, na_probs=V2_NA, na_prob_thresh=0.4)
  assert out["exact"] == pytest.approx(75.0) and out["f1"] == pytest.approx(100 * (2 / 3 + 3) / 4)
  assert out["NoAns_exact"] == 100.0 and out["HasAns_exact"] == 50.0
  # Sweep from "all empty" (2 of 4): q2 (-1.0) +1 -> 3; q1 (0.2) +0 exact / +2/3 F1; q4 (0.5) -1; q3 (0.9) 0.
  assert (out["best_exact"], out["best_exact_thresh"]) == (pytest.approx(75.0), -1.0)
  assert (out["best_f1"], out["best_f1_thresh"]) == (pytest.approx(100 * (3 + 2 / 3) / 4), 0.2)


def test_v2_gold_answers_that_normalize_to_nothing_become_empty():
  data = _dataset("v2.0", [_qa("q", "The", "an")])  # answerable by its list, but every gold normalizes to ""
  assert squad.evaluate(data, {"q": ""})["exact"] == 100.0
  assert squad.evaluate(data, {"q": "the"})["HasAns_f1"] == 100.0


def test_v2_missing_predictions_raise():
  with pytest.raises(squad.MissingPredictionsError, match=r"1 of 4 questions in data have no prediction \(e.g. q3\)"):
    squad.evaluate(V2, {k: v for k, v in V2_PREDS.items() if k != "q3"})
  with pytest.raises(ValueError, match=r"no-answer probabilities lack 1 questions \(e.g. q4\)"):
    squad.evaluate(V2, V2_PREDS, na_probs={k: v for k, v in V2_NA.items() if k != "q4"})


def test_real_v1_gold_scores_100_via_cli(tmp_path, capsys):
  path = shared_data("squad/dev-v1.1.json")
  examples = squad_data.read_squad(path)
  preds = {ex.qid: ex.answers[0].text for ex in examples}
  pred_file = tmp_path / "pred.json"
  pred_file.write_text(json.dumps(preds))
  run = subprocess.run([sys.executable, "-m", "electra_jax.eval.squad", str(path), str(pred_file)],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr
  assert json.loads(run.stdout) == {"exact_match": 100.0, "f1": 100.0}
  # v1.1 quirk, kept: question 57340d124776f419006617bf has the gold answer "." (normalizes to nothing). Predicting
  # it is an exact match but has F1 0 against every gold, so the last golds as predictions score F1 < 100.
  last = {ex.qid: ex.answers[-1].text for ex in examples}
  assert last["57340d124776f419006617bf"] == "."
  assert squad.evaluate(json.loads(path.read_text()), last) == pytest.approx(
      {"exact_match": 100.0, "f1": 100 * 10569 / 10570}, abs=1e-9)
  # One question left out: counted as 0 out of 10570, with the official message on stderr.
  qid = next(iter(preds))
  del preds[qid]
  pred_file.write_text(json.dumps(preds))
  assert squad.main([str(path), str(pred_file)]) == 0
  captured = capsys.readouterr()
  assert json.loads(captured.out)["exact_match"] == pytest.approx(100 * 10569 / 10570)
  assert f"Unanswered question {qid} will receive score 0." in captured.err


def test_real_v2_subset_gold_and_na_probs(tmp_path, capsys):
  path = shared_data("squad/dev-v2.0.cs224n-dev-half.json")
  examples = squad_data.read_squad(path)
  preds = {ex.qid: ex.answers[0].text if ex.answers else "" for ex in examples}
  (tmp_path / "pred.json").write_text(json.dumps(preds))
  assert squad.main([str(path), str(tmp_path / "pred.json")]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out == {"exact": 100.0, "f1": 100.0, "total": 6078, "HasAns_exact": 100.0, "HasAns_f1": 100.0,
                 "HasAns_total": 2910, "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 3168}
  # Always answer with the plausible answer, and give the unanswerable questions the higher na_prob.
  guesses = {ex.qid: (ex.answers or ex.plausible_answers)[0].text for ex in examples}
  na = {ex.qid: 0.9 if ex.is_impossible else 0.1 for ex in examples}
  (tmp_path / "guess.json").write_text(json.dumps(guesses))
  (tmp_path / "na.json").write_text(json.dumps(na))
  assert squad.main([str(path), str(tmp_path / "guess.json"), "--na-prob-file", str(tmp_path / "na.json"),
                     "--na-prob-thresh", "0.5"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["exact"] == 100.0 and out["NoAns_exact"] == 100.0
  assert out["best_exact"] == 100.0 and out["best_exact_thresh"] == 0.1
  assert squad.main([str(path), str(tmp_path / "guess.json"), "--na-prob-file", str(tmp_path / "na.json")]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["NoAns_exact"] == 0.0 and out["HasAns_exact"] == 100.0
  assert out["exact"] == pytest.approx(100 * 2910 / 6078)


def test_cli_errors(tmp_path, capsys):
  data = shared_data("squad/dev-v1.1.json")
  (tmp_path / "bad.json").write_text("{not json")
  assert squad.main([str(data), str(tmp_path / "bad.json")]) == 1
  assert "bad.json: prediction file is not valid JSON" in capsys.readouterr().err
  (tmp_path / "list.json").write_text('{"56be4db0acb8001400a502ec": 3}')
  assert squad.main([str(data), str(tmp_path / "list.json")]) == 1
  assert "prediction for question 56be4db0acb8001400a502ec is 3, not a str" in capsys.readouterr().err
  (tmp_path / "v2.json").write_text(json.dumps(V2))
  (tmp_path / "p.json").write_text(json.dumps({"q1": "x"}))
  assert squad.main([str(tmp_path / "v2.json"), str(tmp_path / "p.json")]) == 1
  assert "3 of 4 questions" in capsys.readouterr().err
