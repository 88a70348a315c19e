"""The README's first command, shrunk: every stage runs, a dev score and the export path are printed, and
transformers.pipeline on the exported folder predicts what our predict command predicts."""

import pytest
import json
import re
import subprocess
import sys

import numpy as np
import transformers

from electra_jax import paths
from tests.conftest import shared_data


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
  shared_data("glue_data/MRPC")
  shared_data("corpus/wikitext-2-raw")
  proc = subprocess.run(
      [sys.executable, "-m", "electra_jax.quickstart", f"--workdir={tmp_path}", "--pretrain_steps=12",
       "--finetune_steps=6", "--max_train_examples=48", "--max_eval_examples=48"],
      capture_output=True, text=True, timeout=900, cwd=paths.REPO_ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert re.search(r"dev/accuracy\s+0\.\d{4}", out)
  export = tmp_path / "export" / "mrpc"
  assert f"Hugging Face folder            -> {export}" in out
  metrics = [json.loads(l) for l in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["step"] == 12 and np.isfinite(metrics[-1]["loss"])

  texts = ["The cat sat on the mat.\tA cat was sitting on the mat.", "Stocks fell.\tThe weather is nice."]
  pred = subprocess.run([sys.executable, "-m", "electra_jax.eval.predict", f"--model={export}",
                         "--task=text-classification"], input="\n".join(texts) + "\n", capture_output=True,
                        text=True, timeout=300)
  assert pred.returncode == 0, pred.stderr
  ours = [json.loads(l) for l in pred.stdout.splitlines()]
  pipe = transformers.pipeline("text-classification", model=str(export))
  theirs = pipe([{"text": a, "text_pair": b} for a, b in (t.split("\t") for t in texts)])
  assert [o["label"] for o in ours] == [t["label"] for t in theirs]
  np.testing.assert_allclose([o["score"] for o in ours], [t["score"] for t in theirs], atol=1e-5)
