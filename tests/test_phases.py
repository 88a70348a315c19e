"""Phases of sequence length (train/phases.py) and built datasets handed to train.pretrain (train/pretrain_data.py)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from configs import pretrain as pretrain_config
from electra_jax.data import pretraining as pt
from electra_jax.train import phases, pretrain_data
from tests.conftest import shared_data
from tests.test_pretrain_e2e import REPO, assert_ok, child_env, command, losses, records, run


def test_phases_parse_fractions_counts_and_default():
  assert phases.parse("", 100, 128, 32) == [phases.Phase(0, 0, 100, 128, 32)]
  got = phases.parse("0.9:128:256,0.1:512:64", 1001, 128, 32)
  assert [p.as_list() for p in got] == [[0, 901, 128, 256], [901, 1001, 512, 64]]
  got = phases.parse("6:32, 4:64:8", 10, 128, 16)
  assert [p.as_list() for p in got] == [[0, 6, 32, 16], [6, 10, 64, 8]]
  assert [phases.phase_at(got, s).index for s in (0, 5, 6, 9, 10)] == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("spec,match", [("6:32,3:64", "add up to"), ("6:32:8:1", "STEPS:SEQ_LEN"),
                                        ("x:32", "must be numbers"), ("1.5:32", "fraction <= 1"),
                                        ("0:32,10:64", "steps > 0")])
def test_phases_refuse_bad_specs(spec, match):
  with pytest.raises(phases.PhaseError, match=match):
    phases.parse(spec, 10, 128, 16)


class _Loader:
  def __init__(self, phase, position):
    self.phase, self.position, self.restored = phase, position, None

  def restore(self, state):
    self.restored = state

  def state(self):
    return {"next_step": self.position}

  def close(self):
    pass


def test_resume_position_is_found_in_the_right_phase():
  plan = phases.parse("6:32:16,4:64:8", 10, 128, 16)
  spec = [p.as_list() for p in plan]
  data = phases.PhasedData(plan, _Loader, {})
  data.open(8, {"loader": {"next_step": 2}, "phase": 1, "phases": spec})          # mid phase 2: its own position
  assert (data.phase.index, data.loader.position, data.loader.restored) == (1, 2, {"next_step": 2})
  data.open(6, {"loader": {"next_step": 6}, "phase": 0, "phases": spec})          # saved at the boundary: phase 2 at 0
  assert (data.phase.index, data.loader.position, data.loader.restored) == (1, 0, None)
  data.open(4, {"loader": {"next_step": 4}, "phase": 0, "phases": spec})
  assert (data.phase.index, data.loader.restored) == (0, {"next_step": 4})
  assert data.train_meta() == {"loader": {"next_step": 4}, "phase": 0, "phases": spec}
  with pytest.raises(phases.PhaseError, match="config.phases now gives"):
    data.open(4, {"loader": {}, "phase": 0, "phases": [[0, 5, 32, 16], [5, 10, 64, 8]]})
  with pytest.raises(phases.PhaseError, match="saved in phase 0, but step 8 belongs to phase 1"):
    data.open(8, {"loader": {}, "phase": 0, "phases": spec})


# ------------------------------------------------------------------------------------------------ built datasets
@pytest.fixture(scope="module")
def vocab():
  return str(shared_data("vocab/bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, vocab):
  """A two-length build by the data CLI: OUT/seq32 and OUT/seq64."""
  wiki = shared_data("corpus/wikitext-2-raw/wiki.valid.raw")
  root = tmp_path_factory.mktemp("built")
  corpus = root / "corpus.txt"
  corpus.write_text("".join(open(wiki, encoding="utf-8").readlines()[:300]))
  out = root / "out"
  proc = subprocess.run([sys.executable, "-m", "electra_jax.data.pretraining", f"--corpus={corpus}",
                         f"--vocab_file={vocab}", f"--output_dir={out}", "--max_seq_length=32,64", "--num_shards=2"],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [json.loads(line)["max_seq_length"] for line in proc.stdout.strip().splitlines()] == [32, 64]
  return out


@pytest.fixture(scope="module")
def built_small(tmp_path_factory, vocab):
  """The layout of a two-length CLI build (OUT/seq32, OUT/seq64), built in-process from a few paragraphs."""
  wiki = shared_data("corpus/wikitext-2-raw/wiki.valid.raw")
  root = tmp_path_factory.mktemp("built_small")
  corpus = root / "corpus.txt"
  corpus.write_text("".join(open(wiki, encoding="utf-8").readlines()[:60]))
  for length in (32, 64):
    pt.build_dataset(str(corpus), vocab, pt.length_dir(root / "out", length), length, num_shards=2)
  return root / "out"


def _config(**data):
  config = pretrain_config.get_config("size=tiny")
  config.data.corpus, config.data.vocab_file = "", ""
  for k, v in data.items():
    config.data[k] = v
  return config


def test_a_built_dataset_is_found_by_length_and_checked(built_small, vocab, tmp_path):
  built = built_small
  config = _config(dataset_dir=str(built))
  assert pretrain_data.vocab_file(config) == vocab      # the build's vocab when config.data.vocab_file is empty
  dirs = pretrain_data.prepare_datasets(config, str(tmp_path), [64, 32])
  assert dirs == {64: str(built / "seq64"), 32: str(built / "seq32")}
  assert not (tmp_path / "data").exists()                # nothing rebuilt
  as_corpus = _config(corpus=str(built / "seq64"), vocab_file=vocab)    # a corpus that is a built dataset
  assert pretrain_data.prepare_datasets(as_corpus, str(tmp_path), [64]) == {64: str(built / "seq64")}
  with pytest.raises(pt.DatasetMismatchError, match=r"max_seq_length 64 vs 128"):
    pretrain_data.prepare_datasets(_config(dataset_dir=str(built / "seq64")), str(tmp_path), [128])
  with pytest.raises(pt.IncompleteDatasetError, match=r"no pretraining dataset of max_seq_length 128 .*\[32, 64\]"):
    pretrain_data.prepare_datasets(config, str(tmp_path), [128])
  other = tmp_path / "vocab.txt"
  other.write_text(open(vocab, encoding="utf-8").read().replace("\nthe\n", "\nteh\n", 1))
  with pytest.raises(pt.DatasetMismatchError, match=r"vocab .*sha256"):
    pretrain_data.prepare_datasets(_config(dataset_dir=str(built), vocab_file=str(other)), str(tmp_path), [32])
  with pytest.raises(pt.DatasetMismatchError, match=r"lower_case True vs False"):
    pretrain_data.prepare_datasets(_config(dataset_dir=str(built), lower_case=False), str(tmp_path), [32])


@pytest.mark.slow
def test_train_pretrain_uses_cli_shards_and_refuses_a_mismatch(built, tmp_path):
  environ = child_env(str(tmp_path / "jax_cache"))
  work = str(tmp_path / "run")
  args = ["--config.num_train_steps=2", "--config.log_every_steps=1", "--config.export=false",
          "--config.data.corpus=", "--config.data.vocab_file=", f"--config.data.dataset_dir={built}"]
  proc = run(command(work, str(tmp_path / "cache"), *args), environ)
  assert_ok(proc)
  assert [r["step"] for r in records(work)] == [1, 2]
  assert f"pretraining data {built / 'seq64'} (built)" in proc.stderr
  assert not (tmp_path / "cache").exists()
  bad = run(command(str(tmp_path / "bad"), str(tmp_path / "cache"), *args[:-1],
                    f"--config.data.dataset_dir={built / 'seq32'}"), environ)
  assert bad.returncode == 1
  message = [line for line in bad.stderr.splitlines() if line.startswith("pretrain: error:")]
  assert message and "max_seq_length 32 vs 64" in message[0], bad.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ a phased run
@pytest.mark.slow
def test_a_phased_run_resumes_exactly_in_either_phase(built, tmp_path):
  """12 steps: 6 at 32 tokens x 16, then 6 at 64 x 8, checkpoints every 4 (step 8 lies inside phase 2). Resumed from
  step 4 (phase 1: the switch happens after the resume) and from step 8 (phase 2's own data position), the losses
  equal the uninterrupted run's."""
  environ = child_env(str(tmp_path / "jax_cache"))
  args = ["--config.num_train_steps=12", "--config.phases=6:32:16,6:64:8", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=4", "--config.export=false", "--config.data.corpus=",
          "--config.data.vocab_file=", f"--config.data.dataset_dir={built}"]
  ref_dir = str(tmp_path / "reference")
  proc = run(command(ref_dir, str(tmp_path / "cache"), *args), environ)
  assert_ok(proc)
  assert "phase 2 of 2: steps 7..12 at 64 tokens x 8" in proc.stderr
  ref = losses(ref_dir)
  assert sorted(ref) == list(range(1, 13))
  for resume_at in (4, 8):
    work = str(tmp_path / f"from_{resume_at}")
    shutil.copytree(ref_dir, work)
    for step in (s for s in (4, 8, 12) if s > resume_at):   # as if killed right after the checkpoint of resume_at
      shutil.rmtree(os.path.join(work, "checkpoints", str(step)))
    again = run(command(work, str(tmp_path / "cache"), *args), environ)
    assert_ok(again)
    assert f"resuming at step {resume_at}" in again.stderr
    assert losses(work) == ref, (resume_at, losses(work), ref)
