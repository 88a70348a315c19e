"""Analytical FLOPs of ELECTRA and BERT-style MLM training, counted the way the ELECTRA paper counts them, and MFU.

    paper_train_flops(Dims(256, 12, seq_len=128, embedding=128), Dims(64, 12, seq_len=128, embedding=128),
                      batch_size=128, train_steps=1e6)                    # 1.29e18, the paper's ELECTRA-Small
    per_step = train_flops_per_step(disc_cfg, gen_cfg, batch_size=128, seq_len=128, num_predictions=19)
    mfu(per_step, seconds_per_step=0.1, num_devices=8, peak_flops_per_device=peak_flops_per_device())

Counting conventions (those of the original `flops_computation.py`; the paper's Table 1/2 numbers come from it):
  * a multiply-add is 2 FLOPs; an elementwise op 1; per element: dropout 4, LayerNorm 5, GELU 8, softmax 5;
  * attention is bidirectional (not halved as for a causal decoder); every layer sees the full sequence;
  * input embeddings are one-hot matmuls (2*E*V per token) unless `sparse_embed_lookup` (a gather, no FLOPs);
  * the discriminator's binary head runs on all tokens; the generator's (or BERT's) vocabulary softmax head runs on a
    fraction of the tokens (`output_frac`; 0.15625 = 20/128 in the paper);
  * the generator and discriminator are counted separately, each with its own width and depth.
The original counts the attention-output LayerNorm as 5 FLOPs per token rather than 5 per hidden unit (about 0.1% of a
layer); we count it the same way so that the paper's numbers reproduce to three digits (e.g. 6.42e19 for Base).

Training FLOPs: the paper assumes backward = forward, so train = 2 x forward (`paper_train_flops`, used only to compare
with the paper). For MFU we count what the hardware does: a backward pass costs about 2 x the forward (gradients with
respect to activations and to weights), so train = 3 x forward (`train_flops_per_step`, backward_factor=2), with the
generator head at the `max_predictions_per_seq` masked positions our step computes and gathered (sparse) embeddings.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax

DROPOUT = 4
LAYER_NORM = 5
ACTIVATION = 8
SOFTMAX = 5
PAPER_OUTPUT_FRAC = 0.15625


@dataclasses.dataclass(frozen=True)
class Dims:
  """Transformer sizes. embedding defaults to hidden, intermediate to 4*hidden, heads to hidden//64 (at least 1)."""
  hidden: int
  layers: int
  seq_len: int = 512
  vocab: int = 30522
  embedding: int | None = None
  intermediate: int | None = None
  heads: int | None = None
  head_size: int | None = None

  @property
  def e(self) -> int:
    return self.hidden if self.embedding is None else self.embedding

  @property
  def i(self) -> int:
    return 4 * self.hidden if self.intermediate is None else self.intermediate

  @property
  def n_heads(self) -> int:
    return max(self.hidden // 64, 1) if self.heads is None else self.heads

  @property
  def kqv(self) -> int:
    return self.hidden if self.head_size is None else self.head_size * self.n_heads

  @classmethod
  def from_config(cls, config: Any, seq_len: int) -> "Dims":
    """From an electra_jax.modeling.ElectraConfig (or anything with the HF field names)."""
    return cls(hidden=config.hidden_size, layers=config.num_hidden_layers, seq_len=seq_len, vocab=config.vocab_size,
               embedding=config.embedding_size, intermediate=config.intermediate_size,
               heads=config.num_attention_heads)


# ------------------------------------------------------------------------------------------------ forward, per sequence
def block_flops(d: Dims) -> float:
  """One post-LN transformer layer over a whole sequence (forward)."""
  h, s, kqv, heads, i = d.hidden, d.seq_len, d.kqv, d.n_heads, d.i
  attention = (3 * 2 * h * kqv + 3 * kqv            # q, k, v projections and biases
               + 2 * kqv * s                        # scores
               + (SOFTMAX + DROPOUT + 1) * s * heads  # softmax, dropout, 1/sqrt(d) scale
               + 2 * kqv * s                        # probabilities x values
               + 2 * kqv * h + h                    # output projection and bias
               + (DROPOUT + 1) * h + LAYER_NORM)    # dropout, residual; LayerNorm per token as the original
  ffn = (2 * h * i + i + ACTIVATION * i             # intermediate dense, bias, GELU
         + 2 * i * h + h                            # output dense, bias
         + (DROPOUT + 1 + LAYER_NORM) * h)          # dropout, residual, LayerNorm
  return float((attention + ffn) * s)


def input_flops(d: Dims, sparse_embed_lookup: bool = False) -> float:
  """Embeddings (word, token type, position), their LayerNorm and dropout, and the E -> H projection when E != H."""
  e, h, s = d.e, d.hidden, d.seq_len
  per_token = 0 if sparse_embed_lookup else 2 * e * d.vocab
  per_token += 2 * e * (s + 2) + 2 * e + (LAYER_NORM + DROPOUT) * e   # one-hot type/position tables, adds, LN, dropout
  if e != h:
    per_token += 2 * h * e + h
  return float(per_token * s)


def lm_head_flops(d: Dims, output_frac: float) -> float:
  """The MLM head (dense H -> E, GELU, LayerNorm, tied E x V logits, softmax, target) on output_frac of the tokens."""
  e, h, v = d.e, d.hidden, d.vocab
  per_token = (2 * h * e + e + ACTIVATION * e + LAYER_NORM * e  # generator_predictions
               + 2 * e * v + SOFTMAX * v + 2 * v)               # logits, softmax, pick the target
  return float(output_frac * per_token * d.seq_len)


def binary_head_flops(d: Dims) -> float:
  """The discriminator head (dense H -> H, GELU, dense H -> 1) on every token."""
  h = d.hidden
  return float((2 * h * h + h + ACTIVATION * h + 2 * h) * d.seq_len)


def mlm_forward_flops(d: Dims, output_frac: float, sparse_embed_lookup: bool = False) -> float:
  return d.layers * block_flops(d) + input_flops(d, sparse_embed_lookup) + lm_head_flops(d, output_frac)


def discriminator_forward_flops(d: Dims, sparse_embed_lookup: bool = False) -> float:
  return d.layers * block_flops(d) + input_flops(d, sparse_embed_lookup) + binary_head_flops(d)


def inference_flops(d: Dims) -> float:
  """One forward pass of a classifier (the paper's "infer FLOPs" column; dense embedding lookups)."""
  return discriminator_forward_flops(d)


# ------------------------------------------------------------------------------------------------ training
def paper_train_flops(discriminator: Dims | None, generator: Dims | None, batch_size: float, train_steps: float,
                      output_frac: float = PAPER_OUTPUT_FRAC) -> float:
  """Total pretraining FLOPs as the paper reports them: 2 x forward (backward assumed = forward), dense lookups.

  ELECTRA: both networks; BERT-style MLM: discriminator=None and `generator` the MLM model.
  """
  forward = 0.0
  if discriminator is not None:
    forward += discriminator_forward_flops(discriminator)
  if generator is not None:
    forward += mlm_forward_flops(generator, output_frac)
  return 2.0 * batch_size * train_steps * forward


def train_flops_per_step(disc_config: Any, gen_config: Any | None, *, batch_size: int, seq_len: int,
                         num_predictions: int, objective: str = "electra", backward_factor: float = 2.0,
                         sparse_embed_lookup: bool = True, generator_trained: bool = True) -> float:
  """Model FLOPs of one training step as our step computes it (used for MFU): (1 + backward_factor) x forward.

  `disc_config` is the discriminator-size network (the MLM model for objective "mlm"), `gen_config` the generator
  (None: no generator network, e.g. uniform sampling). Per objective (electra_jax/train/objectives.py):
    electra, electra_15   the generator with its head at `num_predictions` positions per sequence + the
                          discriminator with its binary head on every token (ELECTRA 15% computes the same);
    mlm                   the MLM model with its head at `num_predictions` positions;
    replace_mlm           the generator + a discriminator-size MLM with its head at `num_predictions` positions;
    all_tokens_mlm        the generator + a discriminator-size MLM with its head on every token + the copy head
                          (the binary head's shape) on every token;
    electric              two generator towers over the whole sequence, their cloze head (input 2 x generator
                          width) on every token, + the discriminator.
  generator_trained=False (a frozen generator, config.generator.source): the generator's forward only.
  """
  disc = Dims.from_config(disc_config, seq_len)
  frac = num_predictions / seq_len
  if objective == "mlm":
    return (1.0 + backward_factor) * batch_size * mlm_forward_flops(disc, frac, sparse_embed_lookup)
  if objective not in ("electra", "electra_15", "replace_mlm", "all_tokens_mlm", "electric"):
    raise ValueError(f"objective {objective!r}: unknown (see electra_jax/train/objectives.py)")
  forward, gen_forward = 0.0, 0.0
  if gen_config is not None:
    gen = Dims.from_config(gen_config, seq_len)
    if objective == "electric":
      tower = gen.layers * block_flops(gen) + input_flops(gen, sparse_embed_lookup)
      forward += 2 * tower + lm_head_flops(dataclasses.replace(gen, hidden=2 * gen.hidden), 1.0)
    elif generator_trained:
      forward += mlm_forward_flops(gen, frac, sparse_embed_lookup)
    else:
      gen_forward = mlm_forward_flops(gen, frac, sparse_embed_lookup)
  elif objective == "electric":
    raise ValueError("objective 'electric' needs the generator config")
  if objective == "replace_mlm":
    forward += mlm_forward_flops(disc, frac, sparse_embed_lookup)
  elif objective == "all_tokens_mlm":
    forward += mlm_forward_flops(disc, 1.0, sparse_embed_lookup) + binary_head_flops(disc)
  else:
    forward += discriminator_forward_flops(disc, sparse_embed_lookup)
  return batch_size * ((1.0 + backward_factor) * forward + gen_forward)


# ------------------------------------------------------------------------------------------------ MFU
# Dense bf16 peak FLOP/s of one JAX device, by a substring of `device.device_kind` (lower case), longest match first.
# TPU v2/v3 expose each core as a device (half a chip); v4 and later one device per chip.
PEAK_FLOPS = {
    "tpu v2": 22.5e12, "tpu v3": 61.5e12, "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12,
    "tpu v5p": 459e12, "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12, "tpu7x": 2307e12,
    "h100 pcie": 756e12, "h100": 989e12, "h200": 989e12, "h800": 989e12, "gh200": 989e12, "b200": 2250e12,
    "a100": 312e12, "a800": 312e12, "l40s": 362e12, "l4": 121e12, "a10g": 70e12, "a10": 125e12, "v100": 125e12,
    "t4": 65e12,
}


def peak_flops_per_device(device: Any = None) -> float | None:
  """The datasheet dense bf16 peak of `device` (default: the first device), or None when unknown (e.g. CPU)."""
  if device is None:
    device = jax.devices()[0]
  kind = str(getattr(device, "device_kind", "")).lower()
  for key in sorted(PEAK_FLOPS, key=len, reverse=True):
    if key in kind:
      return PEAK_FLOPS[key]
  return None


def measure_peak_flops(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
  """Measures one device's matmul FLOP/s (best of `repeats` n x n x n products); the MFU denominator on CPU."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, n), dtype)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def mfu(flops_per_step: float, seconds_per_step: float, num_devices: int, peak_flops_per_device: float | None
        ) -> float | None:
  """Model FLOPs utilisation: achieved FLOP/s over the devices' peak; None without a peak or a time."""
  if not peak_flops_per_device or seconds_per_step <= 0:
    return None
  return flops_per_step / seconds_per_step / (num_devices * peak_flops_per_device)
