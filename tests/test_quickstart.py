"""The README's first command, shrunk: every stage runs; the dev score is printed beside the majority-class baseline
and written to summary.json; the exported folder carries the task's label names, and transformers.pipeline on it
predicts what our predict command predicts. (The default, unshrunk run is what shows the model learning: too slow
for a test; its figures are in the docstring of electra_jax/quickstart.py.)"""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import transformers

from electra_jax import paths
from tests.conftest import shared_data


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
  shared_data("glue_data/SST-2")
  shared_data("corpus/wikitext-2-raw")
  proc = subprocess.run(
      [sys.executable, "-m", "electra_jax.quickstart", f"--workdir={tmp_path}", "--pretrain_steps=12",
       "--finetune_steps=6", "--max_train_examples=48", "--max_eval_examples=48"],
      capture_output=True, text=True, timeout=900, cwd=paths.REPO_ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["task"] == "sst2" and summary["metric"] == "dev/accuracy"
  # the baseline of the 48 dev rows scored: always the most frequent training label of the 48 trained on
  assert 0.3 < summary["baseline"] < 0.7 and summary["baseline_is"].startswith("always '")
  line = re.search(r"dev/accuracy\s+(0\.\d{4})\s+majority-class baseline (0\.\d{4})", out)
  assert line and float(line.group(1)) == pytest.approx(summary["dev_score"], abs=1e-4)
  assert float(line.group(2)) == pytest.approx(summary["baseline"], abs=1e-4)
  export = tmp_path / "export" / "sst2"
  assert f"Hugging Face folder            -> {export}" in out
  assert "transformers.pipeline('text-classification'" in out
  metrics = [json.loads(l) for l in (tmp_path / "pretrain" / "metrics.jsonl").read_text().splitlines()]
  assert metrics[-1]["step"] == 12 and np.isfinite(metrics[-1]["loss"])
  # quiet by default: no Orbax chatter, no libtpu line
  for chatter in ("checkpoint_manager.py", "async_checkpointer.py", "base_pytree_checkpoint_handler.py",
                  "xla_bridge.py", "libtpu"):
    assert chatter not in proc.stderr, chatter
  assert json.loads((export / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}

  texts = ["a gripping , funny and moving film", "a dull , lifeless mess"]
  pred = subprocess.run([sys.executable, "-m", "electra_jax.eval.predict", f"--model={export}",
                         "--task=text-classification"], input="\n".join(texts) + "\n", capture_output=True,
                        text=True, timeout=300)
  assert pred.returncode == 0, pred.stderr
  ours = [json.loads(l) for l in pred.stdout.splitlines()]
  pipe = transformers.pipeline("text-classification", model=str(export))
  theirs = pipe(texts)
  assert {t["label"] for t in theirs} <= {"negative", "positive"}
  assert [o["label"] for o in ours] == [t["label"] for t in theirs]
  np.testing.assert_allclose([o["score"] for o in ours], [t["score"] for t in theirs], atol=1e-5)
  # the dev predictions the README's scoring example names (it scores the full run's; this run scored 48 rows)
  assert (tmp_path / "sst2" / "seed_0" / "predictions" / "SST-2_dev.tsv").is_file()
  assert (tmp_path / "sst2_eval" / "predictions" / "SST-2_dev.tsv").is_file()
