"""Fine-tunes ELECTRA on SQuAD v1.1 or v2.0: the same trainer as electra_jax.train.finetune, for configs/squad.py.

    python -m electra_jax.train.squad --config=configs/squad.py:version=1.1,size=small --workdir=/tmp/squad1 \
        --config.init_checkpoint=/ckpt/electra_small --config.train_file=/data/squad/train-v1.1.json
    python -m electra_jax.train.squad --config=configs/squad.py:version=2.0,head=hf --workdir=/tmp/squad2

Writes WORKDIR/seed_<s>/predictions/{predictions,null_odds,predictions_thresholded,nbest_predictions}.json and the
scores of the official v1.1 / v2.0 scripts (electra_jax.eval.squad) to results.json.
"""

from __future__ import annotations

from absl import app

from electra_jax.train.finetune import main

if __name__ == "__main__":
  app.run(main)
