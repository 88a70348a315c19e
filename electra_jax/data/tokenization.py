"""WordPiece tokenization (BERT/ELECTRA style) through the `tokenizers` library.

    tok = load_tokenizer("vocab.txt")                       # uncased, accents stripped (BERT uncased)
    tok = load_tokenizer("vocab.txt", lowercase=False)      # cased; accents kept unless strip_accents=True
    enc = tok.encode("first segment", "second segment")     # [CLS] A [SEP] B [SEP], type ids 0/1, char offsets
    train_vocab(["corpus.txt"], "out/vocab.txt", vocab_size=30522)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from electra_jax import errors

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)


class VocabError(errors.Error, ValueError):
  """A vocab file that cannot serve as an ELECTRA vocab."""


def read_vocab(vocab_file: str | os.PathLike) -> dict[str, int]:
  """Reads a BERT `vocab.txt` (one token a line, id = line number) and checks the special tokens."""
  path = os.fspath(vocab_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"vocab file {path} does not exist")
  vocab: dict[str, int] = {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      token = line.rstrip("\n").rstrip("\r")
      if not token:
        raise VocabError(f"{path}:{lineno}: empty line in vocab file")
      if token in vocab:
        raise VocabError(f"{path}:{lineno}: token {token!r} already appears on line {vocab[token] + 1}")
      vocab[token] = lineno - 1
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise VocabError(f"{path}: vocab lacks the special tokens {missing} (needs all of {list(SPECIAL_TOKENS)})")
  return vocab


def _bert_tokenizer(vocab: dict[str, int], lowercase: bool, strip_accents: bool | None) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
  # strip_accents=None follows `lowercase`, as BERT's BasicTokenizer does.
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  cls_id, sep_id = vocab[CLS], vocab[SEP]
  tok.post_processor = processors.TemplateProcessing(
      single=f"{CLS}:0 $A:0 {SEP}:0",
      pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
      special_tokens=[(CLS, cls_id), (SEP, sep_id)])
  tok.decoder = decoders.WordPiece(prefix="##")
  return tok


def load_tokenizer(vocab_file: str | os.PathLike, lowercase: bool = True,
                   strip_accents: bool | None = None) -> tokenizers.Tokenizer:
  """A fast BERT WordPiece tokenizer for `vocab_file` (raises naming the file if it is unusable)."""
  return _bert_tokenizer(read_vocab(vocab_file), lowercase, strip_accents)


def special_ids(tok: tokenizers.Tokenizer) -> dict[str, int]:
  """{'pad': 0, 'unk': 100, 'cls': 101, 'sep': 102, 'mask': 103} for the BERT uncased vocab."""
  return {name: tok.token_to_id(t) for name, t in zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS)}


def train_vocab(files: Sequence[str | os.PathLike] | Iterable[str], output_vocab_file: str | os.PathLike,
                vocab_size: int = 30522, lowercase: bool = True, strip_accents: bool | None = None,
                min_frequency: int = 2) -> tokenizers.Tokenizer:
  """Trains a WordPiece vocab on text files and writes it as `vocab.txt`; returns the tokenizer."""
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  from tokenizers import trainers  # pylint: disable=import-outside-toplevel
  trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), continuing_subword_prefix="##")
  files = [os.fspath(f) for f in files]
  for f in files:
    if not os.path.isfile(f):
      raise FileNotFoundError(f"training file {f} does not exist")
  tok.train(files, trainer)
  vocab = tok.get_vocab()
  out = os.fspath(output_vocab_file)
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
      f.write(token + "\n")
  return load_tokenizer(out, lowercase=lowercase, strip_accents=strip_accents)
