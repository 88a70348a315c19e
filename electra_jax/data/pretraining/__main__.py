"""python -m electra_jax.data.pretraining: build the pretraining shards of a corpus (see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app, flags

from electra_jax.data import pretraining
from electra_jax.data.pretraining.build import build_dataset
from electra_jax.data.pretraining.built import length_dir
from electra_jax.runtime import cli

__doc__ = pretraining.__doc__   # --help shows the package's usage


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  f = flags.FLAGS
  try:
    lengths = [int(x) for x in f.max_seq_length]
  except ValueError:
    raise app.UsageError(f"--max_seq_length={','.join(f.max_seq_length)}: expected integers, e.g. 128 or 128,512"
                         ) from None
  if not lengths or len(set(lengths)) != len(lengths):
    raise app.UsageError(f"--max_seq_length={','.join(f.max_seq_length)}: give each length once")
  for length in lengths:
    out = f.output_dir if len(lengths) == 1 else length_dir(f.output_dir, length)
    manifest = build_dataset(   # bad input (OSError, ValueError): one line and exit status 1 (runtime.cli)
        f.corpus, f.vocab_file, out, length, lower_case=not f.no_lower_case,
        strip_accents=f.strip_accents, blanks_separate_docs=f.blanks_separate_docs,
        wikitext_markup=f.wikitext_markup, seed=f.seed, num_shards=f.num_shards, num_processes=f.num_processes,
        tfds_data_dir=f.tfds_data_dir, tfds_split=f.tfds_split, tfds_text_key=f.tfds_text_key)
    print(json.dumps({"output_dir": out, "max_seq_length": length,
                      **{k: manifest[k] for k in ("num_examples", "num_documents", "num_tokens", "num_single_segment",
                                                  "fingerprint")}}))


def _define_flags() -> None:
  flags.DEFINE_string("corpus", None, "Text file, folder, glob or tfds:NAME (comma-separated for several).")
  flags.DEFINE_string("vocab_file", None, "WordPiece vocab.txt.")
  flags.DEFINE_string("output_dir", None, "Where the shards and manifest.json go; train.pretrain takes this folder "
                      "as --config.data.dataset_dir.")
  flags.DEFINE_list("max_seq_length", ["128"], "Tokens per example; several (128,512) build one dataset per length "
                    "in OUTPUT_DIR/seq<L>, for config.phases.")
  flags.DEFINE_integer("num_processes", 1, "Worker processes.")
  flags.DEFINE_integer("num_shards", 16, "Output shards (independent of num_processes).")
  flags.DEFINE_integer("seed", 0, "Seed of the packing randomness.")
  flags.DEFINE_bool("no_lower_case", False, "Keep case (for a cased vocab).")
  flags.DEFINE_bool("strip_accents", None, "Strip accents (--nostrip_accents keeps them); default: follows lower "
                    "casing, as BERT does.")
  flags.DEFINE_bool("blanks_separate_docs", None, "A blank line ends a document (--noblanks_separate_docs: only the "
                    "end of a file does). Default: yes, except in WikiText files, where titles separate documents.")
  flags.DEFINE_bool("wikitext_markup", True, "WikiText titles start documents; heading markup and @-@ escapes cleaned.")
  flags.DEFINE_string("tfds_data_dir", None, "Folder of prepared TFDS datasets (for a TFDS corpus).")
  flags.DEFINE_string("tfds_split", "train", "TFDS split.")
  flags.DEFINE_string("tfds_text_key", "text", "TFDS feature holding the text.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, required=("corpus", "vocab_file", "output_dir"))
