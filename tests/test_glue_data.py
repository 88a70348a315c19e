"""GLUE readers, featurization, leaderboard files and the TFDS path."""

import numpy as np
import pytest

from electra_jax.data import glue
from electra_jax.data.tokenization import load_tokenizer
from tests.conftest import shared_data

# Rows per split of the real files (shared/data/README.md); QQP, MNLI and QNLI train are not on disk.
REAL_COUNTS = {
    ("cola", "train"): 8551, ("cola", "dev"): 1043, ("cola", "test"): 1063,
    ("sst2", "train"): 67349, ("sst2", "dev"): 872, ("sst2", "test"): 1821,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("mrpc", "test"): 1725,
    ("stsb", "train"): 5749, ("stsb", "dev"): 1500, ("stsb", "test"): 1379,
    ("qnli", "dev"): 5463, ("qnli", "test"): 5463,
    ("rte", "train"): 2490, ("rte", "dev"): 277, ("rte", "test"): 3000,
    ("wnli", "train"): 635, ("wnli", "dev"): 71, ("wnli", "test"): 146,
    ("ax", "test"): 1104,
}


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer(shared_data("vocab/bert-base-uncased-vocab.txt"))


@pytest.mark.parametrize("task,split", sorted(REAL_COUNTS))
def test_real_files_read_completely(task, split):
  root = shared_data("glue_data")
  examples, summary = glue.read_split_with_summary(task, root, split)
  assert len(examples) == summary.rows == REAL_COUNTS[task, split]
  assert not summary.skipped
  assert [ex.idx for ex in examples] == list(range(len(examples)))
  t = glue.TASKS[task]
  for ex in examples:
    assert ex.text_a and (ex.text_b is None) == (t.tfds_text[1] is None)
    if split == "test":
      assert ex.label is None
    elif t.is_regression:
      assert isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0
    else:
      assert isinstance(ex.label, int) and 0 <= ex.label < len(t.labels)


def test_first_rows_and_quirks():
  root = shared_data("glue_data")
  # MRPC: header starts with a UTF-8 BOM; label first, then ids, then the two strings.
  mrpc = glue.read_split("mrpc", root, "train")[0]
  assert mrpc.label == 1 and mrpc.text_a.startswith("Amrozi accused his brother , whom he called \" the witness \"")
  assert mrpc.text_b.startswith("Referring to him as only \" the witness \"")
  # CoLA train has no header: source, label, author mark, sentence.
  cola = glue.read_split("cola", root / "CoLA", "dev")  # the task folder works too
  assert cola[0] == glue.Example("dev-0", "The sailors rode the breeze clear of the rocks.", None, 1, 0)
  assert sum(ex.label == 0 for ex in cola) == 322
  rte = glue.read_split("rte", root, "dev")[0]
  assert rte.label == glue.TASKS["rte"].labels.index("not_entailment") == 1
  stsb = glue.read_split("stsb", root, "dev")[1]
  assert stsb.text_a == "A young child is riding a horse." and stsb.label == pytest.approx(4.75)
  qnli = glue.read_split("qnli", root, "test")[0]
  assert qnli.text_b.count('"') == 4  # quotes kept verbatim (QUOTE_NONE)


def _write(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_mnli_and_qqp_layouts(tmp_path):
  """MNLI and QQP are not on disk; these files follow the GLUE headers and column counts exactly."""
  parse = "( x )"
  mnli_head = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
  _write(tmp_path / "MNLI/train.tsv", ["\t".join(mnli_head + ["label1", "gold_label"]),
                                       "\t".join(["0", "1", "1e", "gov", parse, parse, parse, parse,
                                                  'He said "yes', "He agreed.", "neutral", "neutral"])])
  dev_row = ["7", "2", "2c", "fiction", parse, parse, parse, parse, "A cat.", "An animal."]
  _write(tmp_path / "MNLI/dev_matched.tsv", ["\t".join(mnli_head + [f"label{i}" for i in range(1, 6)] + ["gold_label"]),
                                             "\t".join(dev_row + ["entailment"] * 5 + ["entailment"])])
  _write(tmp_path / "MNLI/test_mismatched.tsv", ["\t".join(mnli_head), "\t".join(dev_row)])
  train = glue.read_split("mnli", tmp_path, "train")
  assert train == [glue.Example("train-0", 'He said "yes', "He agreed.", 2, 0)]
  dev = glue.read_split("mnli", tmp_path, "dev_matched")
  assert dev == [glue.Example("dev_matched-7", "A cat.", "An animal.", 1, 7)]
  assert glue.read_split("mnli", tmp_path, "test_mismatched")[0].label is None
  with pytest.raises(ValueError, match="dev_matched"):
    glue.read_split("mnli", tmp_path, "dev")

  _write(tmp_path / "QQP/dev.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                                    "201359\t303345\t303346\tWhy?\tWhy not?\t0",
                                    "263843\t69383\t380476\tHow?\tHow so?\t1"])
  _write(tmp_path / "QQP/test.tsv", ["id\tquestion1\tquestion2", "0\tA?\tB?", "1\tC?\tD?"])
  dev = glue.read_split("qqp", tmp_path / "QQP", "dev")
  assert [(ex.idx, ex.label, ex.text_b) for ex in dev] == [(0, 0, "Why not?"), (1, 1, "How so?")]
  assert [ex.idx for ex in glue.read_split("qqp", tmp_path, "test")] == [0, 1]


def test_malformed_rows_name_file_and_line(tmp_path):
  rte = tmp_path / "RTE" / "dev.tsv"
  _write(rte, ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\ta\tb", "2\ta\tb\tmaybe"])
  with pytest.raises(glue.GlueFormatError, match=r"RTE/dev.tsv:3: expected 4 tab-separated columns, found 3"):
    glue.read_split("rte", tmp_path, "dev")
  examples, summary = glue.read_split_with_summary("rte", tmp_path, "dev", skip_malformed=True)
  assert [ex.idx for ex in examples] == [0]
  assert summary.rows == 3 and summary.examples == 1
  assert [line for line, _ in summary.skipped] == [3, 4]
  assert "unknown label 'maybe'" in summary.skipped[1][1] and "2 malformed rows skipped" in str(summary)

  _write(rte, ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "0\tc\td\tentailment"])
  with pytest.raises(glue.GlueFormatError, match=r"dev.tsv:3: index 0 already used on line 2"):
    glue.read_split("rte", tmp_path, "dev")
  sts = tmp_path / "STS-B" / "dev.tsv"
  _write(sts, ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
               "0\tg\tf\ty\t0\tn\tn\ta\tb\t5.5"])
  with pytest.raises(glue.GlueFormatError, match=r"STS-B/dev.tsv:2: STS-B score '5.5' is outside"):
    glue.read_split("stsb", tmp_path, "dev")
  _write(tmp_path / "WNLI/dev.tsv", ["index\tsentence_1\tsentence2\tlabel"])
  with pytest.raises(glue.GlueFormatError, match=r"WNLI/dev.tsv:1: header lacks column 'sentence1'"):
    glue.read_split("wnli", tmp_path, "dev")
  with pytest.raises(FileNotFoundError, match="CoLA"):
    glue.read_split("cola", tmp_path, "train")
  with pytest.raises(ValueError, match="unknown GLUE task"):
    glue.get_task("squad")


def test_featurize_pairs_truncation_and_double_unordered(tok):
  examples = [glue.Example("t-0", "one two three four five six", "seven eight", 1, 0),
              glue.Example("t-1", "alpha", None, 0, 1)]
  ids = {w: tok.token_to_id(w) for w in "one two three four five six seven eight alpha".split()}
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  out = glue.featurize(examples, tok, max_seq_length=8, double_unordered=True)
  # Longest-first: 6 + 2 tokens into 8 - 3 = 5 slots drops the tail of the first sentence only.
  assert out["input_ids"][0].tolist() == [cls, ids["one"], ids["two"], ids["three"], sep, ids["seven"],
                                          ids["eight"], sep]
  assert out["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
  assert out["input_ids"][1].tolist() == [cls, ids["alpha"], sep, 0, 0, 0, 0, 0]
  assert out["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
  # The swapped copy of the pair comes last and points at the same example.
  assert out["input_ids"][2].tolist() == [cls, ids["seven"], ids["eight"], sep, ids["one"], ids["two"],
                                          ids["three"], sep]
  assert out["example_index"].tolist() == [0, 1, 0]
  assert out["labels"].tolist() == [1, 0, 1] and out["labels"].dtype == np.int32
  # Equal lengths: the second sentence gives up a token first, as in BERT's _truncate_seq_pair.
  tie = glue.featurize([glue.Example("t", "one two three", "four five six", 0, 0)], tok, max_seq_length=7)
  assert tie["input_ids"][0].tolist() == [cls, ids["one"], ids["two"], sep, ids["four"], ids["five"], sep]


def test_featurize_real_pairs_match_bert_encoding(tok):
  examples = glue.read_split("stsb", shared_data("glue_data"), "dev")[:50]
  out = glue.featurize(examples, tok, max_seq_length=128)
  assert out["labels"].dtype == np.float32 and out["labels"][0] == 5.0
  for row, ex in enumerate(examples):
    enc = tok.encode(ex.text_a, ex.text_b)  # short pairs: nothing to truncate
    n = len(enc.ids)
    assert out["input_ids"][row, :n].tolist() == enc.ids
    assert out["token_type_ids"][row, :n].tolist() == enc.type_ids
    assert out["attention_mask"][row].sum() == n
  test = glue.featurize(glue.read_split("stsb", shared_data("glue_data"), "test")[:3], tok, 32, regression=True)
  assert np.isnan(test["labels"]).all()


def test_write_and_read_predictions(tmp_path):
  path = tmp_path / "sub" / glue.submission_filename("mnli", "test_matched")
  assert path.name == "MNLI-m.tsv"
  glue.write_predictions("mnli", {2: 0, 0: 1, 1: "neutral"}, path)
  assert path.read_text() == "index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n"
  assert glue.read_predictions("mnli", path) == {0: 1, 1: 2, 2: 0}
  glue.write_predictions("stsb", np.array([4.25, 0.1234]), tmp_path / "STS-B.tsv")
  assert (tmp_path / "STS-B.tsv").read_text() == "index\tprediction\n0\t4.250\n1\t0.123\n"
  glue.write_predictions("ax", [2, 1], tmp_path / "AX.tsv")
  assert (tmp_path / "AX.tsv").read_text().splitlines()[1:] == ["0\tneutral", "1\tentailment"]
  glue.write_predictions("cola", np.array([1, 0]), tmp_path / "CoLA.tsv")
  assert (tmp_path / "CoLA.tsv").read_text().splitlines() == ["index\tprediction", "0\t1", "1\t0"]
  assert [glue.submission_filename(t) for t in ("cola", "sst2", "mrpc", "stsb", "qqp", "qnli", "rte", "wnli",
                                                  "ax")] == ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv",
                                                             "QQP.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
  assert glue.submission_filename("mnli", "test_mismatched") == "MNLI-mm.tsv"
  with pytest.raises(ValueError, match="index 0: rte prediction 2 is not a label index"):
    glue.write_predictions("rte", [2], tmp_path / "RTE.tsv")
  (tmp_path / "bad.tsv").write_text("index\tprediction\n0\tentailment\n0\tentailment\n")
  with pytest.raises(glue.GlueFormatError, match=r"bad.tsv:3: index 0 already appears on line 2"):
    glue.read_predictions("rte", tmp_path / "bad.tsv")


def test_registry_matches_tfds_builders():
  import tensorflow_datasets as tfds
  import tensorflow_datasets.text.glue  # noqa: F401
  for t in glue.TASKS.values():
    features = tfds.builder(t.tfds_name, data_dir="/nonexistent").info.features
    assert t.tfds_text[0] in features and (t.tfds_text[1] is None or t.tfds_text[1] in features)
    if t.tfds_labels is None:
      assert t.is_regression
    else:
      assert list(features["label"].names) == list(t.tfds_labels)


def test_read_tfds_with_mock_data():
  import tensorflow_datasets as tfds
  # Random records generated from the real builders' feature specs, served through tfds.data_source (no TF).
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    for task in ("mrpc", "cola", "stsb"):
      examples = glue.read_tfds(task, "dev", data_dir="/nonexistent")
      assert len(examples) == 4 and all(isinstance(ex.text_a, str) for ex in examples)
  # Controlled records: TFDS MNLI labels (entailment, neutral, contradiction) map onto ours by name.
  records = [{"premise": b"A p.", "hypothesis": b"A h.", "label": np.int64(k), "idx": np.int32(i)}
             for i, k in enumerate([0, 1, 2, -1])]

  def fake_source(builder, split, **_):
    assert builder.name == "glue" and split == "validation_mismatched"
    return records[:3]

  with tfds.testing.mock_data(as_data_source_fn=fake_source):
    examples = glue.read_tfds("mnli", "dev_mismatched", data_dir="/nonexistent")
  labels = glue.TASKS["mnli"].labels
  assert [labels[ex.label] for ex in examples] == ["entailment", "neutral", "contradiction"]
  assert examples[0] == glue.Example("dev_mismatched-0", "A p.", "A h.", 1, 0)

  with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **_: records):
    assert glue.read_tfds("ax", "test", data_dir="/nonexistent")[3].label is None  # TFDS writes -1 for "no label"
    with pytest.raises(glue.GlueFormatError, match="glue/mnli train record 3: unlabelled record in a labelled split"):
      glue.read_tfds("mnli", "train", data_dir="/nonexistent")


def test_read_tfds_unprepared_and_tfrecord_errors(tmp_path, monkeypatch):
  import importlib.util

  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import dataset_builder
  with pytest.raises(FileNotFoundError, match=r"no prepared TFDS dataset glue/rte under .*tfds_empty"):
    glue.read_tfds("rte", "dev", data_dir=tmp_path / "tfds_empty")
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed: the tfrecord fallback would be taken")
  # A dataset prepared as tfrecord: data_source refuses it, and without TensorFlow we say what to do.
  def no_random_access(*args, **kwargs):
    raise NotImplementedError("Random access data source for file format FileFormat.TFRECORD is not supported.")
  monkeypatch.setattr(tfds, "data_source", no_random_access)
  monkeypatch.setattr(dataset_builder.DatasetBuilder, "is_prepared", lambda self: True)
  with pytest.raises(glue.GlueFormatError, match=r"stored as .*TFRECORD.*needs TensorFlow, which is not installed"):
    glue.read_tfds("rte", "dev", data_dir=tmp_path)
