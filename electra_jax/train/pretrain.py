r"""ELECTRA pretraining binary (thin: flags, distributed set-up, then electra_jax.train.pretrain_lib).

    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=tiny --workdir=/tmp/electra_tiny
    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=small --workdir=runs/small \
        --config.data.corpus=/data/openwebtext --config.data.vocab_file=/data/vocab.txt --config.batch_size=128
    # several processes on one machine (CPU collectives), e.g. two of them:
    python -m electra_jax.train.pretrain ... --coordinator_address=localhost:12345 --num_processes=2 --process_id=0

    # shards built beforehand (python -m electra_jax.data.pretraining --output_dir=/data/owt128 ...), used as they are:
    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=small --workdir=runs/small \
        --config.data.dataset_dir=/data/owt128
    # 90% of the steps at 128 tokens, then 512 (a built folder then needs seq128/ and seq512/: --max_seq_length=128,512)
    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=base --workdir=runs/base \
        --config.phases=0.9:128:256,0.1:512:64 --config.data.corpus=/data/owt --config.data.vocab_file=/data/vocab.txt

Data: --config.data.corpus (raw text) is built into ArrayRecord shards once per length (WORKDIR/data, reused while the
corpus, vocab and settings stay the same); --config.data.dataset_dir (or a corpus that is such a folder) names shards
written by `python -m electra_jax.data.pretraining --output_dir=DIR`, which are read as they are: their
max_seq_length, vocab, lower casing and accent stripping must be the run's (else one line says what differs), and
config.data.vocab_file may stay empty to use the build's vocab.
Runs resume automatically from the latest complete checkpoint in WORKDIR/checkpoints. Outputs: WORKDIR/metrics.jsonl,
TensorBoard events, WORKDIR/config.json, and at the end WORKDIR/export/{discriminator,generator} (HF folders).
Bad input (missing corpus, empty corpus, vocab without the special tokens, a NaN loss) exits with status 1 and a
message naming the file or step; SIGTERM saves a checkpoint and exits 0. One run at a time per workdir (a lock file).
Config fields: configs/pretrain.py (its comments say what each does); `--config=... --config_help` lists them all
with their values. `--verbosity=1` adds the libraries' log lines and debug lines.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from electra_jax.runtime import cli, distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Pretraining configuration (configs/pretrain.py:size=...).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics, TensorBoard events and exports go here.")
distributed.define_flags()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.initialize_from_flags()   # before any other JAX call
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  result = pretrain_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)   # bad input: one line, exit 1 (cli.run)
  if result.preempted:
    logging.warning("stopped early at step %d (preemption); rerun the same command to resume", result.step)
    return
  from electra_jax.train import metrics  # pylint: disable=import-outside-toplevel
  line, warning = metrics.discriminator_summary(result.last_metrics or _last_logged(FLAGS.workdir))
  if line and distributed.is_primary():
    print(f"step {result.step}: {line}", flush=True)
  if warning:
    logging.warning("%s", warning)


def _last_logged(workdir: str) -> dict:
  """The last metrics.jsonl record with discriminator metrics (a run resumed at its last step trains nothing)."""
  from electra_jax.train import metrics  # pylint: disable=import-outside-toplevel
  return next((r for r in reversed(metrics.read_metrics(workdir)) if "disc_accuracy" in r), {})


if __name__ == "__main__":
  cli.run(main, required=("config", "workdir"))
