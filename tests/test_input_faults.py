"""Bad input and full disks end in one line naming the file (and line) and what to do, never a traceback or a wrong
model: issue 28's probes that failed, each checked here (every test fails on the code before the fix)."""

import ast
import io
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from electra_jax import checkpointing, errors, paths
from electra_jax.convert import __main__ as convert_cli
from electra_jax.data import glue, squad
from electra_jax.data.tokenization import load_tokenizer
from electra_jax.modeling import ElectraConfig
from electra_jax.train import metrics
from tests.conftest import shared_data

TINY = dict(vocab_size=30522, embedding_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=24, max_position_embeddings=32)


def _checkpoint(tmp_path, kind="ElectraForSequenceClassification", name="ckpt"):
  spec = checkpointing.ModelSpec(kind, ElectraConfig(**TINY, num_labels=2))
  params = nnx.to_pure_dict(nnx.state(spec.build(0), nnx.Param))
  meta = {**spec.meta(), "tokenizer": {"vocab_file": os.fspath(shared_data("vocab/bert-base-uncased-vocab.txt")),
                                       "lowercase": True, "strip_accents": None}}
  return checkpointing.save_params(os.fspath(tmp_path / name), meta, params)


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.slow
def test_orbax_to_hf_refuses_a_non_empty_folder_then_replaces_it_whole(tmp_path):
  ckpt = _checkpoint(tmp_path)
  out = tmp_path / "hf"
  out.mkdir()
  (out / "tokenizer.json").write_text("{}")   # an earlier export's tokenizer, which transformers would prefer
  (out / "model.safetensors").write_bytes(b"old")
  with pytest.raises(errors.Error, match=r"already exists and holds model.safetensors, tokenizer.json; pass "
                                         r"--overwrite"):
    convert_cli.orbax_to_hf(ckpt, os.fspath(out))
  assert (out / "model.safetensors").read_bytes() == b"old"   # refused: nothing touched
  convert_cli.orbax_to_hf(ckpt, os.fspath(out), overwrite=True)
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                     "tokenizer_config.json", "vocab.txt"]
  assert not [p for p in os.listdir(tmp_path) if ".partial" in p or ".old" in p]
  convert_cli.orbax_to_hf(ckpt, os.fspath(tmp_path / "new"))   # a new folder needs no flag


@pytest.mark.slow   # writes an Orbax checkpoint (seconds on a loaded 2-core machine)
def test_orbax_to_hf_refuses_the_original_head_with_what_to_do(tmp_path):
  ckpt = _checkpoint(tmp_path, kind="OriginalElectraForSequenceClassification")
  with pytest.raises(errors.Error, match="the original ELECTRA head.*fine-tune with head=hf"):
    convert_cli.orbax_to_hf(ckpt, os.fspath(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()


@pytest.mark.slow   # writes an Orbax checkpoint (seconds on a loaded 2-core machine)
def test_disk_full_while_exporting_is_one_line_naming_the_folder(tmp_path, monkeypatch):
  import safetensors.numpy
  from safetensors import SafetensorError
  ckpt = _checkpoint(tmp_path)

  def full(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
      f.write(b"partial")
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')

  monkeypatch.setattr(safetensors.numpy, "save_file", full)
  with pytest.raises(errors.DiskFullError, match=r"hf\S*: disk full while writing model.safetensors") as e:
    convert_cli.orbax_to_hf(ckpt, os.fspath(tmp_path / "hf"))
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]   # no half-written folder left


def test_disk_full_while_building_the_dataset_names_the_folder(tmp_path, monkeypatch):
  from array_record.python import array_record_module
  from electra_jax.data.pretraining import build_dataset
  real = array_record_module.ArrayRecordWriter

  class FullWriter:
    def __init__(self, path, options):
      self._w = real(path, options)

    def write(self, record):
      raise RuntimeError("INTERNAL: Failed to write: No space left on device [28]")

    def close(self):
      self._w.close()

  monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FullWriter)
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("One sentence here. And another one.\n\nA second document with words.\n")
  out = tmp_path / "shards"
  with pytest.raises(errors.DiskFullError, match=f"{re.escape(os.fspath(out))}: disk full while building"):
    build_dataset(os.fspath(corpus), shared_data("vocab/bert-base-uncased-vocab.txt"), os.fspath(out),
                  max_seq_length=32, num_shards=2)


# ------------------------------------------------------------------------------------------------ bad files
def _sst2_folder(tmp_path, dev_lines, train_lines=None):
  folder = tmp_path / "glue_data" / "SST-2"
  folder.mkdir(parents=True)
  (folder / "dev.tsv").write_bytes(b"sentence\tlabel\n" + b"".join(dev_lines))
  (folder / "train.tsv").write_bytes(b"sentence\tlabel\n" + b"".join(train_lines or [b"a fine film\t1\n"]))
  return tmp_path / "glue_data"


def test_glue_tsv_that_is_not_utf8_names_file_and_line(tmp_path):
  data = _sst2_folder(tmp_path, [b"a fine film\t1\n", b"caf\xe9 noir\t0\n"])
  with pytest.raises(glue.GlueFormatError, match=r"SST-2/dev.tsv:3: not valid UTF-8"):
    glue.read_split("sst2", data, "dev")


def test_header_only_files_are_refused_when_read(tmp_path):
  data = _sst2_folder(tmp_path, [], train_lines=[])
  (data / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\n")
  with pytest.raises(glue.GlueFormatError, match=r"SST-2/dev.tsv: no examples \(only a header\)"):
    glue.read_split("sst2", data, "dev")
  with pytest.raises(glue.GlueFormatError, match=r"SST-2/train.tsv: no examples"):   # "no training examples"
    glue.read_split("sst2", data, "train")


def test_squad_json_that_is_not_utf8_names_file_and_line(tmp_path):
  path = tmp_path / "dev.json"
  path.write_bytes(b'{"version": "1.1",\n "data": [\n{"title": "caf\xe9"}]}\n')
  with pytest.raises(squad.SquadFormatError, match=r"dev.json:3: not valid UTF-8"):
    squad.load_squad(path)
  from electra_jax.eval import squad as squad_eval
  with pytest.raises(ValueError, match=r"dev.json:3: not valid UTF-8"):
    squad_eval._load_json(os.fspath(path), "dataset")


def test_no_squad_features_names_the_file():
  tok = load_tokenizer(shared_data("vocab/bert-base-uncased-vocab.txt"))
  with pytest.raises(squad.SquadFormatError, match=r"^train.json: no SQuAD features \(0 questions\)"):
    squad.featurize_squad([], tok, is_training=True, source="train.json")


@pytest.mark.parametrize("line,problem", [(b"[1, 2]\n", "a JSON list, not an object"),
                                          (b'{"step": 2, "loss": "\xff"}\n', "not valid UTF-8")])
def test_metrics_jsonl_that_this_project_did_not_write(tmp_path, line, problem):
  (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 2.0}\n' + line)
  with pytest.raises(metrics.MetricsFileError, match=rf"metrics.jsonl:2: {problem}"):
    metrics.MetricWriter(tmp_path, resume_step=1, tensorboard=False, enabled=True)   # a resumed run reads it
  with pytest.raises(metrics.MetricsFileError, match=rf"metrics.jsonl:2: {problem}"):
    metrics.read_metrics(tmp_path)


@pytest.mark.slow
def test_binary_stdin_to_predict_is_one_line(tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  (hf / "model.safetensors").write_bytes(b"")
  proc = subprocess.run([sys.executable, "-m", "electra_jax.eval.predict", f"--model={hf}",
                         "--task=text-classification"], input=b"fine\n\x89PNG\r\n\x1a\n\xff\xd8\n",
                        capture_output=True, timeout=300, cwd=paths.REPO_ROOT)
  err = proc.stderr.decode()
  assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
  assert "predict: error: standard input, line 2: not valid UTF-8" in err


# ------------------------------------------------------------------------------------------------ smaller things
@pytest.mark.slow
def test_config_field_given_as_a_flag_gets_a_hint():
  proc = subprocess.run([sys.executable, "-m", "electra_jax.train.finetune", "--config=configs/glue.py:task=rte",
                         "--workdir=/nonexistent", "--init_checkpoint=/x"], capture_output=True, text=True,
                        timeout=300, cwd=paths.REPO_ROOT)
  assert proc.returncode == 2
  assert "did you mean --config.init_checkpoint?" in proc.stderr


@pytest.mark.slow   # writes an Orbax checkpoint (seconds on a loaded 2-core machine)
def test_reading_a_writable_checkpoint_logs_no_read_only_notice(tmp_path, caplog):
  ckpt = _checkpoint(tmp_path)
  with caplog.at_level(logging.INFO):
    checkpointing.load_model(ckpt)
  assert not [r for r in caplog.records if "read only" in r.getMessage()]


BINARIES = ("electra_jax/train/finetune.py", "electra_jax/train/pretrain.py", "electra_jax/eval/evaluate.py",
            "electra_jax/eval/predict.py", "electra_jax/convert/__main__.py",
            "electra_jax/data/pretraining/__init__.py",
            "configs/glue.py", "configs/squad.py", "configs/pretrain.py")


@pytest.mark.parametrize("path", BINARIES)
def test_help_examples_have_no_runs_of_spaces(path):
  """--help prints the docstring: a backslash continuation in a non-raw docstring joins two lines with the second's
  indentation (`--workdir=/tmp/mrpc         --config...`)."""
  doc = ast.get_docstring(ast.parse((paths.REPO_ROOT / path).read_text()), clean=False)
  joined = [line for line in doc.splitlines() if re.search(r"\S {3,}--", line)]
  assert not joined, joined


def test_squad_defaults_name_files_that_exist_or_say_what_to_pass(monkeypatch):
  from configs import squad as squad_config
  from electra_jax.eval.tasks import SquadAdapter
  data = shared_data()
  monkeypatch.setenv(paths.ENV_VAR, os.fspath(data))
  adapter = SquadAdapter(squad_config.get_config("version=2.0"), tokenizer=None)
  assert adapter._file("eval_file", "dev") == os.fspath(data / "squad" / "dev-v2.0.cs224n-dev-half.json")
  v1 = SquadAdapter(squad_config.get_config("version=1.1"), tokenizer=None)
  assert v1._file("eval_file", "dev") == os.fspath(data / "squad" / "dev-v1.1.json")
  with pytest.raises(FileNotFoundError, match=r"train-v2.0.json does not exist; pass --config.train_file=.* holds "
                                              r"dev-v1.1.json"):
    adapter._file("train_file", "train")


def test_runtime_fields_at_one_path_in_every_config():
  from configs import glue as glue_config, pretrain as pretrain_config, squad as squad_config
  for c in (pretrain_config.get_config("size=small"), glue_config.get_config(), squad_config.get_config()):
    for field in ("dtype", "param_dtype", "scan_layers", "remat_policy", "kernels"):
      assert field in c.model and field not in c, field
  assert glue_config.get_config().head == "hf" and squad_config.get_config().head == "hf"   # exportable default
  assert np.isscalar(pretrain_config.get_config("size=base").model.scan_layers)
