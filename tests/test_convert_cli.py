"""The converter command: HF <-> Orbax, both ways, for a head and for a generator + discriminator pair."""

import pytest
import subprocess
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file

CFG = dict(vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=24, max_position_embeddings=32)


def _run(*args):
  return subprocess.run([sys.executable, "-m", "electra_jax.convert", *args], capture_output=True, text=True,
                        timeout=300)


def _same_tensors(a_dir, b_dir):
  a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
  assert sorted(a) == sorted(b)
  for k in a:
    assert np.array_equal(a[k], b[k]), k


@pytest.mark.slow
def test_head_round_trip_through_orbax(tmp_path):
  torch.manual_seed(0)
  transformers.ElectraForTokenClassification(transformers.ElectraConfig(**CFG, num_labels=5)).save_pretrained(
      tmp_path / "hf")
  r = _run("hf_to_orbax", f"--hf_dir={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
  assert r.returncode == 0, r.stderr
  r = _run("orbax_to_hf", f"--checkpoint={tmp_path / 'ckpt'}", f"--out={tmp_path / 'back'}")
  assert r.returncode == 0, r.stderr
  _same_tensors(tmp_path / "hf", tmp_path / "back")
  assert transformers.ElectraForTokenClassification.from_pretrained(tmp_path / "back").config.num_labels == 5


@pytest.mark.slow
def test_generator_and_discriminator_through_a_pretraining_checkpoint(tmp_path):
  torch.manual_seed(0)
  disc = transformers.ElectraForPreTraining(transformers.ElectraConfig(**CFG))
  gen = transformers.ElectraForMaskedLM(transformers.ElectraConfig(**dict(CFG, hidden_size=8, num_attention_heads=1,
                                                                          intermediate_size=32)))
  gen.electra.embeddings.load_state_dict(disc.electra.embeddings.state_dict())   # trained tied, as released
  disc.save_pretrained(tmp_path / "disc")
  gen.save_pretrained(tmp_path / "gen")
  r = _run("hf_to_orbax", f"--hf_dir={tmp_path / 'disc'}", f"--hf_generator_dir={tmp_path / 'gen'}",
           f"--out={tmp_path / 'ckpt'}")
  assert r.returncode == 0, r.stderr
  for part in ("discriminator", "generator"):
    r = _run("orbax_to_hf", f"--checkpoint={tmp_path / 'ckpt'}", f"--part={part}", f"--out={tmp_path / part}")
    assert r.returncode == 0, r.stderr
  _same_tensors(tmp_path / "disc", tmp_path / "discriminator")
  _same_tensors(tmp_path / "gen", tmp_path / "generator")


@pytest.mark.slow
def test_bad_input_exits_non_zero_with_message(tmp_path):
  r = _run("hf_to_orbax", f"--hf_dir={tmp_path / 'missing'}", f"--out={tmp_path / 'x'}")
  assert r.returncode == 1 and "missing/config.json does not exist" in r.stderr
  r = _run("orbax_to_hf", f"--checkpoint={tmp_path / 'nothing'}", f"--out={tmp_path / 'y'}")
  assert r.returncode == 1 and "does not exist" in r.stderr
  r = _run("sideways", "--out=z")
  assert r.returncode == 2 and "usage" in r.stderr
