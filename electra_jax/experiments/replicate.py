r"""Replicates the ELECTRA paper's ablations at a chosen scale (thin binary: flags, then experiments.harness).

    python -m electra_jax.experiments.replicate --suite=efficiency --workdir=/tmp/rep
    python -m electra_jax.experiments.replicate --suite=all --workdir=/tmp/rep_all          # every suite, shared runs
    python -m electra_jax.experiments.replicate --suite=sharing,generator_size --size=small --workdir=gs://b/rep \
        --corpus=/data/openwebtext --override=finetune.seeds=5

Suites (electra_jax/experiments/suites.py): efficiency (paper Table 5's five objectives), sharing, generator_size,
mlm_vs_electra (with earlier checkpoints scored), attention_dropout (attention-probability dropout off), or `all`.
Sizes (configs/replicate.py): micro (default; a CPU), small (ELECTRA-Small on an accelerator), smoke
(tests). Running the same command again resumes where it stopped. Writes WORKDIR/results.json, results.md and PNGs.
"""

from __future__ import annotations

import logging
import shlex
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("suite", "efficiency", "Suite name(s), comma-separated, or 'all'.")
flags.DEFINE_string("workdir", None, "Where the runs, results.json, results.md and plots go (resumable).")
flags.DEFINE_string("size", "micro", "configs/replicate.py size: smoke, micro or small.")
flags.DEFINE_string("corpus", "", "Pretraining corpus (files, folders, globs, tfds:NAME); default: the size's.")
flags.DEFINE_multi_string("override", [], "FIELD=VALUE of configs/replicate.py (repeatable), e.g. finetune.seeds=5.")
flags.DEFINE_string("publish_dir", "", "Also copy results.json, results.md, stages.jsonl and the plots here "
                    "(e.g. benchmarks/replication/micro).")
flags.DEFINE_boolean("verbose", False, "Log everything at INFO (default: progress, the loops' step lines, warnings).")
flags.mark_flags_as_required(["workdir"])


class _StepLinesAndWarnings(logging.Filter):
  """Keeps warnings and the training loops' step lines (they carry the stage's own ETA); drops other INFO records
  and Orbax's notes that the pretraining checkpoint is opened read-only (as it should be)."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if record.levelno >= logging.WARNING:
      return "read only" not in message and "read_only=True" not in message
    return " | ETA " in message


def _progress_lines_only() -> None:
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  for handler in [*logging.getLogger().handlers, absl_logging.get_absl_handler()]:
    handler.addFilter(_StepLinesAndWarnings())


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=import-outside-toplevel
  from electra_jax.data.pretraining import CorpusError, IncompleteDatasetError
  from electra_jax.data.tokenization import VocabError
  from electra_jax import checkpointing
  from electra_jax.experiments import ExperimentError, harness, run_configs, suites
  from electra_jax.train import finetune_lib, loop
  logging.getLogger().setLevel(logging.INFO)
  checkpointing.quiet_orbax_logging()
  if not FLAGS.verbose:
    _progress_lines_only()
  try:
    names = suites.suite_names(FLAGS.suite)
    hc = run_configs.config_module("replicate").get_config(f"size={FLAGS.size}")
    if FLAGS.corpus:
      hc.corpus = FLAGS.corpus
    for text in FLAGS.override:
      key, value = run_configs.parse_override(text, hc)
      run_configs.set_field(hc, key, value)
    if not hc.corpus:
      raise ExperimentError(f"size {FLAGS.size} has no default corpus: pass --corpus=...")
    command = "python -m electra_jax.experiments.replicate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    harness.run(names, hc, FLAGS.workdir, command=command)
    if FLAGS.publish_dir:
      print(f"copied {harness.publish(FLAGS.workdir, FLAGS.publish_dir)} files to {FLAGS.publish_dir}")
  except (CorpusError, VocabError, IncompleteDatasetError, FileNotFoundError, checkpointing.CheckpointError,
          loop.NonFiniteLossError, finetune_lib.FinetuneError, ValueError) as e:
    logging.debug("replicate failed", exc_info=True)
    print(f"replicate: error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt as e:   # Ctrl-C, or a preemption notice (SIGTERM) that stopped a stage after a checkpoint
    print(f"replicate: stopped: {e or 'interrupted'}; the same command resumes", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)
