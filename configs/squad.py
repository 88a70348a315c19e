r"""SQuAD v1.1 / v2.0 fine-tuning.

    python -m electra_jax.train.finetune --config=configs/squad.py:version=2.0,size=base --workdir=/tmp/squad2 \
        --config.init_checkpoint=/ckpt/electra_base --config.train_file=/data/squad/train-v2.0.json
    python -m electra_jax.eval.evaluate --config=configs/squad.py:version=1.1 --checkpoint=/tmp/squad1/seed_0 \
        --workdir=/tmp/squad1_eval

Arguments after the colon: version (1.1 or 2.0), and size, head, recipe, trials, runlocal as in configs/glue.py. The
official train files are not part of the shared data; point `train_file` at them (a run without one stops before
training and says so). The dev file defaults to the data folder's: dev-v1.1.json, and for v2.0 dev-v2.0.json or,
where only that is there, dev-v2.0.cs224n-dev-half.json (a subset of it; data/README.md). Outputs: predictions.json
(the best non-null span of every question, as the original ELECTRA writes it), null_odds.json (v2.0) and, for v2.0,
predictions_thresholded.json ("" where the null odds exceed `na_threshold`: a leaderboard-style submission).
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import glue as glue_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, version="1.1", size="small", head="hf", recipe="original", trials=1,
                         runlocal=False)
  version = arg.version.lower().lstrip("v")
  if version not in ("1.1", "2.0"):
    raise ValueError(f"version={arg.version!r}: must be 1.1 or 2.0")
  c = glue_config.base_config(arg.size, arg.head, arg.recipe, arg.trials)
  c.family = "squad"
  c.task = f"squad{version}"
  c.version = version
  # "" = <data dir>/squad/train-v<version>.json and dev-v<version>.json (official file names); for v2.0 the dev
  # default falls back to the data folder's dev-v2.0.cs224n-dev-half.json. No train file ships with the data.
  c.train_file = ""
  c.eval_file = ""
  c.data_source = "json"            # "json" (train_file / eval_file) or "tfds" (a prepared squad/v<version>)
  c.tfds_data_dir = ""
  c.num_train_epochs = 2.0
  c.max_seq_length = 512            # the original's SQuAD setting (BERT used 384)
  c.doc_stride = 128
  c.max_query_length = 64
  c.n_best_size = 20
  c.max_answer_length = 30
  c.drop_unrecoverable = True       # skip training questions whose answer is not recoverable at token boundaries
  # Original head (XLNet-style): beam over starts x ends, answerability classifier (its loss weighted 0.5).
  c.beam_size = 20
  c.answerable_classifier = version == "2.0"
  c.answerable_weight = 0.5
  # v2.0: a question counts as unanswerable where its null odds exceed this. Original head: the answerability logit
  # (the original's qa_na_threshold, -2.75). HF head: null score - best span score (BERT's default 0.0).
  c.na_threshold = -2.75 if arg.head == "original" else 0.0
  if arg.runlocal:
    glue_config.runlocal(c)
    c.max_seq_length = 128
    c.doc_stride = 64
    c.beam_size = 5
  return c
