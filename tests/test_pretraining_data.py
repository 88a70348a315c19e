"""Tests of the pretraining-data builder (electra_jax/data/pretraining/) on the real WikiText-2 corpus and vocab."""

import filecmp
import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from electra_jax.data import pretraining as pt
from electra_jax.data.tokenization import VocabError, read_vocab
from tests.conftest import shared_data

CLS, SEP, PAD = 101, 102, 0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vocab():
  return str(shared_data("vocab/bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def wiki():
  return str(shared_data("corpus/wikitext-2-raw/wiki.valid.raw"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, wiki, vocab):
  out = tmp_path_factory.mktemp("wiki1")
  return out, pt.build_dataset(wiki, vocab, out, 128, num_processes=1)


def read_all(out, manifest):
  from array_record.python.array_record_module import ArrayRecordReader
  records = []
  for shard in manifest["shards"]:
    reader = ArrayRecordReader(str(out / shard["file"]))
    assert reader.num_records() == shard["num_examples"]
    records += reader.read(0, shard["num_examples"]) if shard["num_examples"] else []
  return pt.decode_records(records, manifest["id_dtype"], manifest["max_seq_length"]), records


def check_packing(batch, max_len):
  """Every example: [CLS] A [SEP] (B [SEP]) then padding; segment ids 0 then 1; mask a prefix of ones."""
  ids, mask, seg = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  for i in range(len(ids)):
    n = int(mask[i].sum())
    assert 3 <= n <= max_len and mask[i, :n].all()
    assert ids[i, 0] == CLS and ids[i, n - 1] == SEP and not ids[i, n:].any() and not seg[i, n:].any()
    seps = np.flatnonzero(ids[i, :n] == SEP)
    assert len(seps) in (1, 2) and not (ids[i, 1:n] == CLS).any() and not (ids[i, :n] == PAD).any()
    n_a = int(seps[0]) + 1
    assert not seg[i, :n_a].any() and seg[i, n_a:n].all()
    if len(seps) == 2:
      assert seps[1] == n - 1 and n_a < n - 1
    else:
      assert n_a == n


def test_real_corpus_examples_obey_packing(built):
  out, manifest = built
  batch, _ = read_all(out, manifest)
  assert len(batch["input_ids"]) == manifest["num_examples"] > 1000
  check_packing(batch, 128)
  lengths = batch["input_mask"].sum(1)
  # 95% of the targets are max_seq_length; only random targets and document ends give shorter examples.
  assert 0.75 < np.mean(lengths == 128) < 0.97
  assert manifest["num_tokens"] == lengths.sum()
  single = np.mean(batch["segment_ids"].sum(1) == 0)
  assert manifest["num_single_segment"] == (batch["segment_ids"].sum(1) == 0).sum()
  # 10% by the coin, plus examples that hold a single sentence (document ends, short random targets).
  assert 0.08 < single < 0.2


def test_manifest(built, wiki, vocab):
  out, manifest = built
  on_disk = json.loads((out / pt.MANIFEST).read_text())
  assert on_disk == manifest
  assert manifest["format_version"] == pt.FORMAT_VERSION and manifest["format"] == pt.FORMAT_NAME
  assert manifest["vocab_sha256"] == hashlib.sha256(open(vocab, "rb").read()).hexdigest()
  assert manifest["lower_case"] is True and manifest["strip_accents"] is None
  assert manifest["max_seq_length"] == 128 and manifest["seed"] == 0 and manifest["id_dtype"] == "uint16"
  assert manifest["sources"] == [{"file": os.path.abspath(wiki), "bytes": os.path.getsize(wiki),
                                  "mtime_ns": os.stat(wiki).st_mtime_ns}]
  assert len(manifest["shards"]) == 16
  assert sum(s["num_examples"] for s in manifest["shards"]) == manifest["num_examples"]
  assert manifest["num_documents"] == 60  # WikiText-2 valid: 60 articles, titles separate them
  assert sorted(os.listdir(out)) == sorted([pt.MANIFEST] + [s["file"] for s in manifest["shards"]])


def test_parallel_build_is_deterministic_and_equals_single_process(built, tmp_path, wiki, vocab):
  out1, manifest1 = built
  manifest2 = pt.build_dataset(wiki, vocab, tmp_path, 128, num_processes=2)
  assert manifest2 == manifest1
  for shard in manifest1["shards"]:
    assert filecmp.cmp(out1 / shard["file"], tmp_path / shard["file"], shallow=False), shard["file"]
  other = pt.build_dataset(wiki, vocab, tmp_path / "seed1", 128, seed=1)
  assert other["fingerprint"] != manifest1["fingerprint"]


def test_wikitext_documents(wiki):
  docs = list(pt.text_file_documents(wiki))
  assert len(docs) == 60
  assert docs[0][0] == "Homarus gammarus" and docs[0][1].startswith("Homarus gammarus , known as")
  assert "Description" in docs[0]  # section heading markup reduced to its text
  assert not any("@-@" in line or line.startswith("=") for doc in docs for line in doc)
  # Explicit blanks_separate_docs=True: every blank line (WikiText puts them around each heading) ends a document.
  assert len(list(pt.text_file_documents(wiki, blanks_separate_docs=True))) > 500
  raw = list(pt.text_file_documents(wiki, blanks_separate_docs=False, wikitext_markup=False))
  assert len(raw) == 1 and raw[0][0] == "= Homarus gammarus ="


def test_split_sentences():
  text = ("Homarus gammarus is a species of the Black Sea . It is related to H. americanus and the U.S. one . "
          "Mr. Smith said \"Hi.\" Then 5 more! Really? yes. 1990 was fine")
  assert pt.split_sentences(text) == [
      "Homarus gammarus is a species of the Black Sea .", "It is related to H. americanus and the U.S. one .",
      "Mr. Smith said \"Hi.\"", "Then 5 more!", "Really? yes.", "1990 was fine"]
  assert pt.split_sentences("   ") == []


def synthetic_sentences(rng, n, length=10):
  return [[rng.randrange(1000, 2000) for _ in range(length)] for _ in range(n)]


def test_builder_rules_on_equal_sentences():
  """10-token sentences: A takes 6 sentences (60 < (128-3)//2 = 62), a 7th on the coin; B gets the rest, cut."""
  builder = pt.ExampleBuilder(128, CLS, SEP)
  rng = random.Random(0)
  examples = []
  for d in range(40):
    examples += builder.build(synthetic_sentences(rng, 600), random.Random(f"0:{d}"))[:-1]  # drop doc-end flushes
  assert len(examples) > 1500
  single = [e for e in examples if e[1] == len(e[0])]
  assert 0.08 < len(single) / len(examples) < 0.125
  full_pairs = [e for e in examples if len(e[0]) == 128 and e[1] != 128]
  n_a = {e[1] for e in full_pairs}
  assert n_a == {62, 72}  # [CLS] + 60 or 70 tokens + [SEP]
  short = [e for e in examples if len(e[0]) < 128]
  assert 0.02 < len(short) / len(examples) < 0.08  # the 5% random target lengths
  for ids, num_a in examples:
    assert ids[0] == CLS and ids[num_a - 1] == SEP and ids[-1] == SEP and len(ids) <= 128


def test_builder_truncates_and_flushes_at_document_end():
  builder = pt.ExampleBuilder(16, CLS, SEP)
  long = list(range(1000, 1040))
  examples = builder.build([long, [7, 8, 9]], random.Random("x"))
  assert examples[0][0][:15] == [CLS] + long[:14] and len(examples[0][0]) <= 16
  assert examples[-1] == ([CLS, 7, 8, 9, SEP], 5)  # the leftover sentence of the document becomes its own example
  assert builder.build([], random.Random(0)) == [] and builder.build([[]], random.Random(0)) == []
  with pytest.raises(ValueError, match="at least 5"):
    pt.ExampleBuilder(4, CLS, SEP)


def write_distinct_docs(folder, vocab, wikitext):
  """Documents whose words come from disjoint vocab slices; returns the word sets and the files."""
  words = [t for t in read_vocab(vocab) if t.isascii() and t.isalpha() and t.islower() and len(t) >= 5][200:]
  rng = random.Random(1)
  sizes = [1, 3, 40, 2, 60, 1, 25, 5, 80, 1, 12, 30]
  docs, files = [], []
  for f in range(2):
    lines = []
    for k in range(len(sizes) // 2):
      d = len(docs)
      pool = words[d * 30:(d + 1) * 30]
      docs.append(set(pool))
      sentences = [" ".join(rng.choice(pool) for _ in range(rng.randint(4, 14))).capitalize() + " ."
                   for _ in range(sizes[f * len(sizes) // 2 + k])]
      if wikitext:
        lines += [" ", f" = {pool[0]} = ", " "]
        for j in range(0, len(sentences), 7):
          lines += [" " + " ".join(sentences[j:j + 7]) + " ", " ", f" = = {pool[1]} = = ", " "]
      else:
        lines += [" ".join(sentences[j:j + 4]) for j in range(0, len(sentences), 4)] + [""]
    path = folder / f"part{f}.txt"
    path.write_text("\n".join(lines) + "\n")
    files.append(path)
  return docs, files


@pytest.mark.parametrize("wikitext", [False, True])
def test_examples_never_cross_documents(tmp_path, vocab, wikitext):
  from electra_jax.data.tokenization import load_tokenizer
  docs, _ = write_distinct_docs(tmp_path, vocab, wikitext)
  out = tmp_path / "out"
  manifest = pt.build_dataset(str(tmp_path), vocab, out, 32, num_shards=3)
  assert manifest["num_documents"] == len(docs)
  batch, _ = read_all(out, manifest)
  check_packing(batch, 32)
  tok = load_tokenizer(vocab)
  seen = set()
  for ids, mask in zip(batch["input_ids"], batch["input_mask"]):
    tokens = {tok.id_to_token(int(i)) for i in ids[mask == 1]} - {"[CLS]", "[SEP]", "."}
    owners = [d for d, words in enumerate(docs) if tokens <= words]
    assert len(owners) == 1, tokens
    seen.add(owners[0])
  assert seen == set(range(len(docs)))


def test_tfds_source(tmp_path, vocab, monkeypatch):
  import tensorflow_datasets as tfds
  texts = [b"First document . It has two sentences .", b"Second one .\n\nWith a blank line inside .", b""]

  def fake_data_source(name, split, data_dir):
    assert (name, split, data_dir) == ("wikipedia/20230601.en", "train", str(tmp_path))
    return [{"text": t, "title": b"t"} for t in texts]

  monkeypatch.setattr(tfds, "data_source", fake_data_source)
  manifest = pt.build_dataset("tfds:wikipedia/20230601.en", vocab, tmp_path / "out", 64, tfds_data_dir=str(tmp_path))
  assert manifest["num_documents"] == 3 and manifest["num_examples"] == 2
  assert manifest["sources"][0]["tfds"] == "wikipedia/20230601.en"
  with pytest.raises(pt.CorpusError, match="no text feature 'body'"):
    pt.build_dataset("wikipedia/20230601.en", vocab, tmp_path / "o2", 64, tfds_data_dir=str(tmp_path),
                     tfds_text_key="body")


def test_tfds_not_prepared_is_a_clear_error(tmp_path, vocab):
  with pytest.raises(pt.CorpusError, match="cannot open TFDS dataset 'wikipedia/20230601.en'"):
    pt.build_dataset("tfds:wikipedia/20230601.en", vocab, tmp_path / "out", tfds_data_dir=str(tmp_path))
  with pytest.raises(pt.CorpusError, match="pass tfds_data_dir"):
    pt.build_dataset("tfds:c4/en", vocab, tmp_path / "out")


def test_bad_inputs(tmp_path, vocab, wiki):
  with pytest.raises(FileNotFoundError, match="corpus path .*nope.txt does not exist"):
    pt.build_dataset(str(tmp_path / "nope.txt"), vocab, tmp_path / "out")
  with pytest.raises(pt.CorpusError, match="matches no files"):
    pt.build_dataset(str(tmp_path / "*.txt"), vocab, tmp_path / "out")
  blank = tmp_path / "blank.txt"
  blank.write_text("\n \n\n")
  with pytest.raises(pt.EmptyCorpusError, match="gave no examples"):
    pt.build_dataset(str(blank), vocab, tmp_path / "out")
  empty_dir = tmp_path / "emptydir"
  empty_dir.mkdir()
  with pytest.raises(pt.EmptyCorpusError, match="holds no files"):
    pt.build_dataset(str(empty_dir), vocab, tmp_path / "out")
  bad_utf8 = tmp_path / "bad.txt"
  bad_utf8.write_bytes(b"fine line .\nbad \xff byte\n")
  with pytest.raises(pt.CorpusError, match=r"bad.txt:2: not valid UTF-8"):
    pt.build_dataset(str(bad_utf8), vocab, tmp_path / "out")
  no_specials = tmp_path / "vocab.txt"
  no_specials.write_text("[PAD]\n[UNK]\nthe\n")
  with pytest.raises(VocabError, match=r"vocab.txt: vocab lacks the special tokens \['\[CLS\]'"):
    pt.build_dataset(wiki, str(no_specials), tmp_path / "out")
  with pytest.raises(ValueError, match="max_seq_length"):
    pt.build_dataset(wiki, vocab, tmp_path / "out", 4)


def test_failed_rebuild_keeps_the_dataset_that_was_there(tmp_path, vocab):
  """Issue 20, probe 4: a rebuild with a bad corpus emptied a folder holding a good dataset."""
  good = tmp_path / "good.txt"
  good.write_text("One sentence here . Another one there .\n")
  out = tmp_path / "out"
  (tmp_path / "out").mkdir()
  (out / "notes.txt").write_text("not ours")
  pt.build_dataset(str(good), vocab, out, 32, num_shards=2)
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}
  assert pt.read_manifest(out)["num_examples"] == 1
  good.write_text("\n\n")
  with pytest.raises(pt.EmptyCorpusError):
    pt.build_dataset(str(good), vocab, out, 32, num_shards=2)
  assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before   # untouched, no staging left
  good.write_text("A new sentence . And one more here .\nThird one .\n")
  assert pt.build_dataset(str(good), vocab, out, 32, num_shards=2)["num_tokens"] != \
      json.loads(before["manifest.json"])["num_tokens"]
  assert sorted(os.listdir(out)) == sorted(before) and (out / "notes.txt").read_text() == "not ours"


def test_ensure_dataset_reuses_matching_cache(tmp_path, vocab, monkeypatch):
  corpus = tmp_path / "c.txt"
  corpus.write_text("A first sentence . A second sentence .\n\nAnother document here .\n")
  cache = tmp_path / "cache"
  path1, m1 = pt.ensure_dataset(str(corpus), vocab, cache, 32, num_shards=2)
  assert m1["num_examples"] == 2 and os.listdir(cache) == [os.path.basename(path1)]

  def no_build(*args, **kwargs):
    raise AssertionError("rebuilt a dataset that was in the cache")

  with monkeypatch.context() as m:
    m.setattr(pt.build, "_build", no_build)
    path2, m2 = pt.ensure_dataset(str(corpus), vocab, cache, 32, num_shards=2)
  assert (path2, m2) == (path1, m1)
  path3, _ = pt.ensure_dataset(str(corpus), vocab, cache, 64, num_shards=2)  # another request: another folder
  assert path3 != path1
  os.remove(os.path.join(path1, pt.MANIFEST))  # an incomplete dataset is rebuilt, not used
  path4, m4 = pt.ensure_dataset(str(corpus), vocab, cache, 32, num_shards=2)
  assert path4 == path1 and m4 == m1
  assert not [n for n in os.listdir(cache) if ".partial" in n]


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "electra_jax.data.pretraining", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli(tmp_path, vocab, wiki):
  corpus = tmp_path / "c.txt"
  corpus.write_text("".join(open(wiki).readlines()[:200]))
  out = tmp_path / "out"
  ok = run_cli(f"--corpus={corpus}", f"--vocab_file={vocab}", f"--output_dir={out}", "--max_seq_length=64",
               "--num_processes=2", "--num_shards=4", "--strip_accents")
  assert ok.returncode == 0, ok.stderr
  manifest = pt.read_manifest(out)
  assert json.loads(ok.stdout.strip().splitlines()[-1])["num_examples"] == manifest["num_examples"] > 0
  assert manifest["max_seq_length"] == 64 and manifest["strip_accents"] is True and manifest["lower_case"] is True
  missing = run_cli(f"--corpus={tmp_path / 'missing'}", f"--vocab_file={vocab}", f"--output_dir={out}")
  assert missing.returncode != 0 and "missing does not exist" in missing.stderr
  bad_vocab = tmp_path / "v.txt"
  bad_vocab.write_text("[PAD]\nthe\n")
  bad = run_cli(f"--corpus={corpus}", f"--vocab_file={bad_vocab}", f"--output_dir={out}", "--no_lower_case")
  assert bad.returncode != 0 and "lacks the special tokens" in bad.stderr
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n")
  failed = run_cli(f"--corpus={empty}", f"--vocab_file={vocab}", f"--output_dir={out}")
  assert failed.returncode == 1 and "gave no examples" in failed.stderr and "Traceback" not in failed.stderr
  assert pt.read_manifest(out) == manifest   # the dataset that was there is intact
