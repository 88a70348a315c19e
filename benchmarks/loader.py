"""Rows per second of the pretraining loader on a built dataset: is the input pipeline fast enough for a pod host?

    python -m electra_jax.data.pretraining --corpus=../shared/data/corpus --output_dir=/tmp/ds128 \
        --vocab_file=../shared/data/vocab/bert-base-uncased-vocab.txt --max_seq_length=128
    python benchmarks/loader.py --dataset_dir=/tmp/ds128 --batch_size=256 --steps=200

Two figures, each the median of --repeats timed passes over --steps batches (after one warm-up batch):
  * iterate: `next(loader)`, what the trainer calls: reading, decoding, prefetch and placement on one device;
  * local_batch: `loader.local_batch(step)` without prefetch or placement, the reading and decoding alone.
The JSON line also gives the rows/s a host needs to feed --chips chips at --tokens_per_s_per_chip each (the default is
README's ELECTRA-Base figure on one H200, 378,142 tokens/s at 512 tokens per row).
"""

from __future__ import annotations

import statistics
import sys
import time

from absl import app, flags

import common   # noqa: F401  (puts the repository root on sys.path)

flags.DEFINE_string("dataset_dir", None, "A dataset built by python -m electra_jax.data.pretraining.")
flags.DEFINE_integer("batch_size", 256, "Global batch size (one process, so all of it is this host's rows).")
flags.DEFINE_integer("steps", 200, "Batches per timed pass.")
flags.DEFINE_integer("repeats", 3, "Timed passes (the median is reported).")
flags.DEFINE_integer("prefetch", 2, "The loader's prefetch depth.")
flags.DEFINE_integer("chips", 8, "Chips a host feeds (a v5e host has 4 or 8).")
flags.DEFINE_float("tokens_per_s_per_chip", 378_142.0, "Training rate of one chip.")
FLAGS = flags.FLAGS


def _rate(fn, steps: int, repeats: int, rows: int) -> float:
  fn(0)
  rates = []
  for r in range(repeats):
    start = time.perf_counter()
    for s in range(steps):
      fn(1 + r * steps + s)
    rates.append(rows * steps / (time.perf_counter() - start))
  return statistics.median(rates)


def main(argv) -> None:
  del argv
  import jax   # pylint: disable=import-outside-toplevel
  from electra_jax.data.loader import PretrainingLoader   # pylint: disable=import-outside-toplevel

  b = FLAGS.batch_size
  with PretrainingLoader(FLAGS.dataset_dir, b, seed=0, prefetch=FLAGS.prefetch) as loader:
    seq = loader.max_seq_length
    iterate = _rate(lambda _: jax.block_until_ready(next(loader)), FLAGS.steps, FLAGS.repeats, b)
  with PretrainingLoader(FLAGS.dataset_dir, b, seed=0, prefetch=0) as loader:
    local = _rate(loader.local_batch, FLAGS.steps, FLAGS.repeats, b)
  need = FLAGS.chips * FLAGS.tokens_per_s_per_chip / seq
  result = {"dataset_dir": FLAGS.dataset_dir, "num_examples": loader.num_examples, "seq_len": seq, "batch_size": b,
            "iterate_rows_per_s": round(iterate), "local_batch_rows_per_s": round(local),
            "host_needs_rows_per_s": round(need), "chips": FLAGS.chips,
            "tokens_per_s_per_chip": FLAGS.tokens_per_s_per_chip, "headroom": round(iterate / need, 2)}
  print(f"seq {seq}, batch {b}: iterate {iterate:,.0f} rows/s, local_batch {local:,.0f} rows/s; "
        f"{FLAGS.chips} chips at {FLAGS.tokens_per_s_per_chip:,.0f} tokens/s need {need:,.0f} rows/s")
  common.emit(result)


if __name__ == "__main__":
  flags.mark_flag_as_required("dataset_dir")
  sys.exit(app.run(main))
