"""Data: tokenization, pretraining shards and loaders, GLUE and SQuAD readers."""
