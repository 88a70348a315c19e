r"""Pretraining data: raw text -> packed ELECTRA examples in ArrayRecord shards, plus the CLI that builds them.

    python -m electra_jax.data.pretraining --corpus=../shared/data/corpus/wikitext-2-raw \
        --vocab_file=../shared/data/vocab/bert-base-uncased-vocab.txt --output_dir=/tmp/wt2 \
        --max_seq_length=128 --num_processes=2 [--no_lower_case] [--strip_accents] [--tfds_data_dir=...]
    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=small --workdir=/tmp/run \
        --config.max_seq_length=128 --config.data.dataset_dir=/tmp/wt2     # trains on the shards built above

Training on a built dataset: `train.pretrain` reads OUTPUT_DIR as is when `--config.data.dataset_dir` (or
`--config.data.corpus`) names it, without rebuilding; the run's max_seq_length, vocab (by content), lower casing and
accent stripping must be those of the build (a mismatch is refused in one line naming what differs), and
config.data.vocab_file may be left empty to use the build's. `--max_seq_length=128,512` builds one dataset per length
in OUTPUT_DIR/seq128 and OUTPUT_DIR/seq512, for runs whose config.phases train at several lengths.

    manifest = build_dataset("corpus/", "vocab.txt", "out/", max_seq_length=128, num_processes=2)
    path, manifest = ensure_dataset("corpus/", "vocab.txt", cache_dir="cache/")   # builds once, then reuses

`--corpus` takes files, folders (read recursively), globs, or `tfds:NAME` (e.g. `tfds:wikipedia/20230601.en`, or a bare
NAME with --tfds_data_dir) for a TFDS text dataset prepared as array_record; several specs may be comma-separated.

Documents: in text files a blank line ends a document (`blanks_separate_docs`, as in the original) and so does the end
of a file; with `wikitext_markup` (on by default) a WikiText title line ` = Title = ` also starts a new document,
heading markup (`= = Section = =`) is reduced to its text and the ` @-@ `, ` @,@ `, ` @.@ ` escapes are joined again.
The default `blanks_separate_docs=None` means True except in WikiText files (first non-blank line a title), where
blank lines only surround headings, so that only titles separate documents (True there would make every section, and
every heading line, a document of its own). A TFDS record is one document. Lines are cut into sentences by
`split_sentences` (rules below), sentences are WordPiece-tokenized and packed by `ExampleBuilder`, which follows
google-research/electra build_pretraining_dataset.py:
  * sentences are accumulated until their length reaches the target length, which is max_seq_length, except that 5% of
    examples draw a target uniformly from [5, max_seq_length]; the sentence that crosses the target is kept and cut;
  * 10% of examples are single-segment; otherwise segment A aims at (target - 3) // 2 tokens: a sentence joins A while
    A is empty or stays under that length, or (B still empty, A still short) on a fair coin; the rest go to B;
  * A is cut to max_seq_length - 2 and B to what is left; `[CLS] A [SEP] B [SEP]` (no B part when B is empty),
    segment ids 0 then 1; the end of a document flushes what has been gathered, so no example crosses documents.
Deliberate differences from the original: (1) sentences come from the rule-based splitter instead of one line per
sentence; (2) randomness is seeded: document d uses `random.Random(f"{seed}:{d}")`, and its first example draws its
target length by the 5% rule itself instead of inheriting the previous document's draw (same distribution), so the
output does not depend on how documents are spread over processes; (3) sentences that tokenize to nothing are dropped.

Output layout (`output_dir`): `pretrain-SSSSS-of-NNNNN.array_record` shards and `manifest.json`. Document d goes to
shard d % num_shards, in document order, so the shards are byte-identical for any `num_processes` (worker j writes the
shards s with s % num_processes == j). Every file is written under a `.partial` name and renamed when complete; the
manifest is written last, so a directory without `manifest.json` is never a dataset. `build_dataset` builds in a
staging folder inside `output_dir` and swaps the result in only when the build succeeded, so a failed rebuild (a bad
corpus, an empty one, a kill) leaves the dataset that was there intact. Each record (format version 1) is
    uint16 little-endian n          number of real tokens ([CLS] A [SEP] B [SEP], 0 < n <= max_seq_length)
    uint16 little-endian n_a        tokens with segment id 0 ([CLS] A [SEP])
    n token ids, little-endian `manifest["id_dtype"]` (uint16 when the vocab has at most 65536 entries, else uint32)
`decode_records` pads it back to input_ids / input_mask / segment_ids of length max_seq_length.

Sentence rule (`split_sentences`): a sentence ends at `.`, `!` or `?` (closing quotes/brackets may follow) when
whitespace and then an upper-case letter, a digit or an opening quote/bracket come next, unless the word before the
period is a single letter (an initial: `H. gammarus`), contains a period itself (`U.S.`, `e.g.`), or is a common
abbreviation (`Mr.`, `Dr.`, `St.`, `No.`, ...).
"""

from __future__ import annotations

from electra_jax.data.pretraining.records import (  # noqa: F401
    CorpusError, EmptyCorpusError, FORMAT_NAME, FORMAT_VERSION, IncompleteDatasetError, MANIFEST, PARTIAL,
    RecordError, SENTENCE_SPLITTER, WRITER_OPTIONS, decode_records, encode_example, id_dtype_for, shard_name)
from electra_jax.data.pretraining.corpus import (  # noqa: F401
    BuildOptions, ExampleBuilder, Source, TextFile, TfdsSource, iter_documents, split_sentences,
    text_file_documents)
from electra_jax.data.pretraining.build import (  # noqa: F401
    build_dataset, ensure_dataset, read_manifest, resolve_sources)
from electra_jax.data.pretraining.built import (  # noqa: F401
    DatasetMismatchError, built_lengths, check_dataset, find_dataset, is_dataset, length_dir)
