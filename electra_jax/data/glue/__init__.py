"""GLUE tasks: registry, TSV and TFDS readers, featurization, leaderboard files.

    from electra_jax.data import glue
    from electra_jax.data.tokenization import load_tokenizer

    examples = glue.read_split("mrpc", "/data/glue_data", "train")   # or the MRPC/ folder itself
    tok = load_tokenizer("vocab.txt")
    arrays = glue.featurize(examples, tok, max_seq_length=128, double_unordered=True)
    # arrays: input_ids, attention_mask, token_type_ids [N, L] int32; labels [N] int32 (float32 for stsb);
    # example_index [N] int32 (row of `examples` each feature came from)

    test = glue.read_split("mnli", "/data/glue_data", "test_matched")
    glue.write_predictions("mnli", {ex.idx: pred for ex, pred in zip(test, preds)},
                           "out/" + glue.submission_filename("mnli", "test_matched"))   # MNLI-m.tsv

    dev = glue.read_tfds("rte", "dev", data_dir="~/tensorflow_datasets")   # prepared TFDS glue/rte

Labels are int indices into `TASKS[task].labels` (the strings the TSVs use, in the order of the original ELECTRA/BERT
processors), floats for STS-B, and None for test splits. Malformed rows raise `GlueFormatError` naming the file and
line; `skip_malformed=True` skips them instead, counts them in a `ReadSummary` and logs that count.
"""

from __future__ import annotations

from electra_jax.data.glue.tasks import (  # noqa: F401
    Example, GlueFormatError, GlueTask, Layout, PathLike, ReadSummary, STSB_RANGE, TASKS, get_task, parse_label,
    split_file)
from electra_jax.data.glue.reading import (  # noqa: F401
    read_file, read_split, read_split_with_summary, read_tfds, tfds_records)
from electra_jax.data.glue.features import (  # noqa: F401
    PREDICTION_HEADER, featurize, format_prediction, read_predictions, submission_filename, write_predictions)
