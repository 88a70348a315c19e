r"""Scores a fine-tuned checkpoint on the dev sets of its task, without training, and writes the predictions files.

    python -m electra_jax.eval.evaluate --config=configs/glue.py:task=mrpc --checkpoint=/tmp/mrpc/seed_0 \
        --workdir=/tmp/mrpc_eval
    python -m electra_jax.eval.evaluate --config=configs/squad.py:version=2.0,head=hf \
        --checkpoint=/hf/electra-base-squad2 --workdir=/tmp/squad2_eval        # an HF folder with a QA head

--checkpoint: a fine-tuning workdir of this project (WORKDIR/seed_<s>, its checkpoints/ or one step), whose
model_config says the head; or an HF folder (config.json + model.safetensors) with the task's HF head (head=hf).
Outputs: WORKDIR/predictions/ (GLUE dev/test TSVs; SQuAD predictions.json, null_odds.json, ...) and
WORKDIR/results.json; a summary table on stdout. Both put every score beside the task's trivial baseline on the same
rows (eval/baselines.py) and say when the score does not beat it. Exit status 1 with a message on bad input.
Config fields: configs/glue.py, configs/squad.py; `--config=... --config_help` lists them with their values.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from electra_jax.runtime import cli, distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config (configs/glue.py or configs/squad.py).",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Fine-tuned Orbax checkpoint (workdir) or HF folder.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for predictions and results.json.")
distributed.define_flags()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize_from_flags()
  from electra_jax.eval import evaluation  # pylint: disable=import-outside-toplevel
  evaluation.evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value, _WORKDIR.value)   # bad input: one line, exit 1


if __name__ == "__main__":
  cli.run(main, required=("config", "checkpoint", "workdir"))
