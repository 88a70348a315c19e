"""Analytical FLOPs reproduce the ELECTRA paper's numbers (electra-reference.md §1.7/§1.8); MFU arithmetic."""

import pytest

from electra_jax.modeling import ElectraConfig, generator_config
from electra_jax.train import flops
from electra_jax.train.flops import Dims


def _sci(x: float) -> str:
  return f"{x:.2e}"


@pytest.mark.parametrize("name, disc, gen, batch, steps, want", [
    ("electra_small", Dims(256, 12, seq_len=128, embedding=128), Dims(64, 12, seq_len=128, embedding=128),
     128, 1e6, "1.29e+18"),
    ("electra_base", Dims(768, 12), Dims(256, 12, embedding=768), 256, 766000, "6.42e+19"),
    ("electra_400k", Dims(1024, 24), Dims(256, 24, embedding=1024), 2048, 400000, "7.12e+20"),
    ("electra_1.75M", Dims(1024, 24), Dims(256, 24, embedding=1024), 2048, 1750000, "3.11e+21"),
    ("bert_small", None, Dims(256, 12, seq_len=128, embedding=128), 128, 1.45e6, "1.42e+18"),
    ("bert_base", None, Dims(768, 12), 256, 1e6, "6.43e+19"),
    ("bert_large", None, Dims(1024, 24), 256, 1e6, "1.92e+20"),
    ("roberta", None, Dims(1024, 24, vocab=50265), 8000, 500000, "3.19e+21"),
])
def test_paper_train_flops(name, disc, gen, batch, steps, want):
  assert _sci(flops.paper_train_flops(disc, gen, batch, steps)) == want, name


def test_gpt_with_softmax_on_every_token():
  got = flops.paper_train_flops(None, Dims(768, 12, vocab=40000), 128, 960800, output_frac=1.0)
  assert _sci(got) == "3.97e+19"


def test_inference_flops_of_table_1():
  assert f"{flops.inference_flops(Dims(256, 12, seq_len=128, embedding=128)):.1e}" == "3.7e+09"   # ELECTRA-Small
  assert f"{flops.inference_flops(Dims(768, 12, seq_len=128)):.1e}" == "2.9e+10"                  # BERT/ELECTRA-Base


def test_per_step_flops_from_configs_match_the_paper_accounting():
  disc = ElectraConfig()   # HF defaults = ELECTRA-Small discriminator
  gen = generator_config(disc, 0.25)
  # 20 predictions of 128 tokens = the paper's output_frac 0.15625; backward = forward and dense lookups as the paper.
  paper_like = flops.train_flops_per_step(disc, gen, batch_size=128, seq_len=128, num_predictions=20,
                                          backward_factor=1.0, sparse_embed_lookup=False)
  assert paper_like * 1e6 == pytest.approx(flops.paper_train_flops(
      Dims(256, 12, seq_len=128, embedding=128), Dims(64, 12, seq_len=128, embedding=128), 128, 1e6), rel=1e-12)
  ours = flops.train_flops_per_step(disc, gen, batch_size=128, seq_len=128, num_predictions=19)
  dense = flops.train_flops_per_step(disc, gen, batch_size=128, seq_len=128, num_predictions=19,
                                     sparse_embed_lookup=False)
  assert ours < dense            # gathered embeddings cost no matmul
  three_x = flops.train_flops_per_step(disc, gen, batch_size=128, seq_len=128, num_predictions=20,
                                       sparse_embed_lookup=False)
  assert three_x == pytest.approx(1.5 * paper_like)
  mlm = flops.train_flops_per_step(disc, None, batch_size=128, seq_len=128, num_predictions=19, objective="mlm")
  assert 0 < mlm < ours
  # no generator network (uniform sampling): the discriminator alone
  uniform = flops.train_flops_per_step(disc, None, batch_size=128, seq_len=128, num_predictions=20,
                                       sparse_embed_lookup=False)
  assert uniform == pytest.approx(3 * 128 * flops.discriminator_forward_flops(flops.Dims.from_config(disc, 128)))
  with pytest.raises(ValueError, match="generator"):
    flops.train_flops_per_step(disc, None, batch_size=1, seq_len=128, num_predictions=19, objective="electric")


def test_mfu_and_peaks():
  assert flops.mfu(4e12, 2.0, 2, 1e12) == pytest.approx(1.0)
  assert flops.mfu(1e12, 1.0, 4, 1e12) == pytest.approx(0.25)
  assert flops.mfu(1e12, 1.0, 4, None) is None

  class Dev:
    def __init__(self, kind):
      self.device_kind = kind

  assert flops.peak_flops_per_device(Dev("NVIDIA H100 80GB HBM3")) == 989e12
  assert flops.peak_flops_per_device(Dev("NVIDIA H100 PCIe")) == 756e12
  assert flops.peak_flops_per_device(Dev("TPU v5 lite")) == 197e12
  assert flops.peak_flops_per_device(Dev("TPU v4")) == 275e12
  assert flops.peak_flops_per_device(Dev("cpu")) is None
  assert flops.measure_peak_flops(n=128, repeats=2) > 0
