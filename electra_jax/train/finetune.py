r"""Fine-tunes ELECTRA on a GLUE task or SQuAD (the config decides), then scores the dev sets and writes predictions.

    python -m electra_jax.train.finetune --config=configs/glue.py:task=mrpc,size=small --workdir=/tmp/mrpc \
        --config.init_checkpoint=/ckpt/electra_small
    python -m electra_jax.train.finetune --config=configs/glue.py:task=stsb,size=small,trials=5 --workdir=/tmp/stsb
    python -m electra_jax.train.finetune --config=configs/glue.py:task=rte,runlocal --workdir=/tmp/smoke

Everything happens in `electra_jax.train.finetune_lib.train_and_evaluate`; this file only parses flags. A restarted
command resumes every unfinished trial from its checkpoint. Bad input (a malformed data row, a checkpoint that does not
fit the config) ends the command with exit status 1 and a message naming the file and row, key or question id.
Config fields: configs/glue.py and configs/squad.py (their comments say what each does); `--config=... --config_help`
lists them all with their values. `--verbosity=1` adds the libraries' log lines and debug lines.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from electra_jax.runtime import cli, distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config (configs/glue.py or configs/squad.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder: checkpoints, metrics, predictions, results.json.")
distributed.define_flags()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize_from_flags()
  from electra_jax.train import finetune_lib  # pylint: disable=import-outside-toplevel
  finetune_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)   # bad input: one line, exit 1 (cli.run)


if __name__ == "__main__":
  cli.run(main, required=("config", "workdir"))
