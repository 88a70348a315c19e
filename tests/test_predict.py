"""The prediction command gives what transformers.pipeline gives on the same exported folder."""

import pytest
import json
import subprocess
import sys

import numpy as np
import torch
import transformers

from electra_jax.convert import from_hf, to_hf
from electra_jax.eval import predict
from tests.conftest import shared_data

TINY = dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
            max_position_embeddings=64)
TEXTS = ["A gripping, funny and moving film.", "Dull.", "John Smith moved from Paris to Berlin in 1999.",
         "Tokenization of unaffable words works"]


def _export(head, tmp_path, **cfg):
  vocab = shared_data("vocab/bert-base-uncased-vocab.txt")
  torch.manual_seed(0)
  hf = getattr(transformers, head)(transformers.ElectraConfig(vocab_size=30522, **TINY, **cfg))
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(torch.randn_like(p) * 0.3)
  hf.save_pretrained(tmp_path / "hf")
  out = tmp_path / "export"
  to_hf(from_hf(tmp_path / "hf"), out, vocab_file=vocab)   # what our trainers export: weights + tokenizer files
  return out


def test_text_classification_matches_pipeline(tmp_path):
  path = _export("ElectraForSequenceClassification", tmp_path, id2label={0: "negative", 1: "positive", 2: "mixed"})
  ours = predict.predict(str(path), "text-classification", TEXTS + ["first part\tsecond part"])
  pipe = transformers.pipeline("text-classification", model=str(path))
  theirs = pipe(TEXTS + [{"text": "first part", "text_pair": "second part"}])
  assert [o["label"] for o in ours] == [t["label"] for t in theirs]
  np.testing.assert_allclose([o["score"] for o in ours], [t["score"] for t in theirs], atol=1e-5)


def test_token_classification_matches_pipeline(tmp_path):
  path = _export("ElectraForTokenClassification", tmp_path, id2label={0: "O", 1: "B-PER", 2: "B-LOC"})
  ours = predict.predict(str(path), "token-classification", TEXTS)
  theirs = transformers.pipeline("token-classification", model=str(path))(TEXTS)
  assert len(ours) == len(theirs)
  for o, t in zip(ours, theirs):
    assert [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in o] == \
        [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in t]
    np.testing.assert_allclose([e["score"] for e in o], [float(e["score"]) for e in t], atol=1e-5)


def test_question_answering_agrees_with_torch_logits(tmp_path):
  path = _export("ElectraForQuestionAnswering", tmp_path)
  question, context = "Where did John move?", "John Smith moved from Paris to Berlin in 1999."
  [ours] = predict.predict(str(path), "question-answering", [f"{question}\t{context}"])
  tok = transformers.AutoTokenizer.from_pretrained(path)
  enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
  offsets = enc.pop("offset_mapping")[0].numpy()
  with torch.no_grad():
    out = transformers.ElectraForQuestionAnswering.from_pretrained(path)(**enc)
  ctx = (enc["token_type_ids"][0].numpy() == 1) & (enc["input_ids"][0].numpy() != tok.sep_token_id)
  sm = lambda x: np.exp(x - x.max()) / np.exp(x - x.max()).sum()  # noqa: E731
  ps = sm(np.where(ctx, out.start_logits[0].numpy(), -1e4))
  pe = sm(np.where(ctx, out.end_logits[0].numpy(), -1e4))
  scores = np.triu(np.tril(np.outer(ps, pe), 14)) * np.outer(ctx, ctx)
  s, e = np.unravel_index(scores.argmax(), scores.shape)
  assert ours["answer"] == context[offsets[s][0]:offsets[e][1]]
  assert abs(ours["score"] - scores[s, e]) < 1e-5
  # A context longer than one window is read in several windows and still yields a span of the context.
  long_context = " ".join([context] * 40)
  [far] = predict.predict(str(path), "question-answering", [f"{question}\t{long_context}"], max_length=64,
                          doc_stride=32)
  assert far["answer"] and long_context[far["start"]:far["end"]] == far["answer"]


def _cli(path, task, stdin):
  return subprocess.run([sys.executable, "-m", "electra_jax.eval.predict", f"--model={path}", f"--task={task}"],
                        input=stdin, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_empty_and_overlong_input(tmp_path):
  path = _export("ElectraForSequenceClassification", tmp_path)
  empty = _cli(path, "text-classification", "")
  assert empty.returncode == 2 and "no input" in empty.stderr
  blank_line = _cli(path, "text-classification", "fine\n\nalso fine\n")
  assert blank_line.returncode == 2 and "line 2 is empty" in blank_line.stderr
  long = _cli(path, "text-classification", "word " * 200 + "\nshort\n")
  assert long.returncode == 0, long.stderr
  assert "line 1 is 202 tokens long; truncated to 64" in long.stderr
  assert [json.loads(l)["label"] for l in long.stdout.splitlines()] and len(long.stdout.splitlines()) == 2
  wrong = _cli(path, "question-answering", "q\tc\n")
  assert wrong.returncode == 2 and "needs an ElectraForQuestionAnswering" in wrong.stderr
