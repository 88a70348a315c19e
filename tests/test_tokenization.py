import pytest
from transformers import BertTokenizer

from electra_jax.data import tokenization
from tests.conftest import shared_data


def test_matches_bert_uncased_tokenizer():
  vocab = shared_data("vocab/bert-base-uncased-vocab.txt")
  ours = tokenization.load_tokenizer(vocab)
  ref = BertTokenizer(vocab=str(vocab), do_lower_case=True)
  texts = [("Hello, Wörld! unaffable ELECTRA", "a second segment — with dashes"), ("Café déjà vu 東京", None)]
  for a, b in texts:
    enc = ours.encode(a, b) if b else ours.encode(a)
    want = ref(a, b) if b else ref(a)
    assert enc.ids == want["input_ids"]
    assert enc.type_ids == want["token_type_ids"]
  assert tokenization.special_ids(ours) == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def test_cased_keeps_accents_and_case(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(list(tokenization.SPECIAL_TOKENS) + ["Café", "café", "cafe"]) + "\n")
  assert tokenization.load_tokenizer(vocab, lowercase=False).encode("Café").tokens[1] == "Café"
  assert tokenization.load_tokenizer(vocab).encode("Café").tokens[1] == "cafe"


def test_vocab_without_special_tokens_is_rejected(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\nhello\n")
  with pytest.raises(tokenization.VocabError, match=r"vocab.txt.*\[CLS\]"):
    tokenization.load_tokenizer(vocab)


def test_duplicate_token_names_line(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\nhello\nhello\n")
  with pytest.raises(tokenization.VocabError, match=r"vocab.txt:4"):
    tokenization.load_tokenizer(vocab)


def test_train_vocab(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
  tok = tokenization.train_vocab([corpus], tmp_path / "v.txt", vocab_size=100, min_frequency=1)
  assert tok.encode("the fox").tokens == ["[CLS]", "the", "fox", "[SEP]"]
  assert (tmp_path / "v.txt").read_text().splitlines()[:5] == list(tokenization.SPECIAL_TOKENS)
