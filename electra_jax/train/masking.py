"""The pieces every pretraining objective is made of: dynamic masking, sampling of replacements, the masked-LM loss,
the discriminator's metrics, and the step's static configuration (StepConfig).

Masking follows google-research/electra: per sequence n = min(P, max(1, round(mask_prob * #real tokens))) positions
([CLS]/[SEP] count as real tokens but are never chosen, nor [MASK] or padding), P = max_predictions_per_seq =
int((mask_prob + 0.005) * max_seq_length); 85% of them become [MASK], 15% keep their token (masking="bert": 80% [MASK],
10% a random token, 10% kept), drawn without replacement. Replacements are sampled from softmax(logits / temperature)
by inverting the CDF with one uniform per position (the distribution of the original's Gumbel-max). The discriminator
AUC comes from a fixed-bin histogram of the step's logits (4096 bins over [-16, 16]): the exact AUC of logits rounded
to 1/128. objectives.py composes these into each objective's loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from electra_jax import ops

OBJECTIVES = ("electra", "mlm", "electra_15", "replace_mlm", "all_tokens_mlm", "electric")
SAMPLINGS = ("model", "uniform")   # the generator's: its softmax, or uniform over the vocabulary
MASKINGS = ("electra", "bert")

# ------------------------------------------------------------------------------------------------ masking
def max_predictions_per_seq(mask_prob: float, max_seq_length: int) -> int:
  """As the original: int((mask_prob + 0.005) * max_seq_length) (19 at 0.15 and 128)."""
  return int((mask_prob + 0.005) * max_seq_length)


@struct.dataclass
class Masked:
  input_ids: jax.Array     # [B, L] with the chosen positions replaced
  positions: jax.Array     # [B, P] int32; 0 where weights is 0
  targets: jax.Array       # [B, P] original token ids; 0 where weights is 0
  weights: jax.Array       # [B, P] float32, 1 for a real prediction


def scatter_positions(ids: jax.Array, positions: jax.Array, values: jax.Array, weights: jax.Array) -> jax.Array:
  """ids[b, positions[b, p]] = values[b, p] where weights[b, p] > 0 (other slots are dropped)."""
  b, length = ids.shape
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], positions.shape)
  cols = jnp.where(weights > 0, positions, length)  # out of range -> dropped
  return ids.at[rows, cols].set(values.astype(ids.dtype), mode="drop")


def mask_tokens(rng: jax.Array, input_ids: jax.Array, input_mask: jax.Array, *, mask_prob: float,
                max_predictions: int, mask_id: int, ignore_ids: tuple[int, ...], vocab_size: int,
                masking: str = "electra") -> Masked:
  """Dynamic masking of a batch (see the module docstring)."""
  if masking not in MASKINGS:
    raise ValueError(f"masking {masking!r}: must be one of {MASKINGS}")
  k_pos, k_kind, k_random = jax.random.split(rng, 3)
  real = input_mask.astype(bool)
  candidates = real
  for i in ignore_ids:
    candidates = candidates & (input_ids != i)
  num_tokens = jnp.sum(input_mask, axis=-1).astype(jnp.float32)
  num = jnp.clip(jnp.round(num_tokens * mask_prob).astype(jnp.int32), 1, max_predictions)  # round half to even, as TF
  scores = jnp.where(candidates, jax.random.gumbel(k_pos, input_ids.shape), -jnp.inf)
  top, positions = jax.lax.top_k(scores, max_predictions)
  chosen = (jnp.arange(max_predictions)[None, :] < num[:, None]) & jnp.isfinite(top)
  positions = jnp.where(chosen, positions, 0).astype(jnp.int32)
  weights = chosen.astype(jnp.float32)
  targets = jnp.where(chosen, jnp.take_along_axis(input_ids, positions, axis=1), 0)
  u = jax.random.uniform(k_kind, positions.shape)
  mask_rate, random_rate = (0.85, 0.0) if masking == "electra" else (0.8, 0.1)
  random_ids = jax.random.randint(k_random, positions.shape, 0, vocab_size, dtype=input_ids.dtype)
  values = jnp.where(u < mask_rate, jnp.asarray(mask_id, input_ids.dtype),
                     jnp.where(u < mask_rate + random_rate, random_ids, targets))
  return Masked(input_ids=scatter_positions(input_ids, positions, values, weights), positions=positions,
                targets=targets.astype(input_ids.dtype), weights=weights)


def _block_sums(a: jax.Array, block: int) -> jax.Array:
  """[R, V] -> [R, ceil(V / block)]: sums over consecutive blocks of `block` columns (the last may be shorter).

  The whole blocks are summed through a reshape and the short tail on its own: padding V up to a multiple of `block`
  would copy the [R, V] operand (XLA's CPU backend does not fuse the pad into the reduction).
  """
  r, v = a.shape
  full = v // block
  parts = [a[:, :full * block].reshape(r, full, block).sum(-1)] if full else []
  if v % block:
    parts.append(a[:, full * block:].sum(-1, keepdims=True))
  return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def softmax_stats(x: jax.Array, block: int = 128) -> tuple[jax.Array, jax.Array]:
  """(row max m [R], block masses [R, ceil(V / block)]) of x [R, V]: mass[r, j] = sum of exp(x - m) over block j.

  Enough for both the cross-entropy (logsumexp = m + log(sum of the masses)) and CDF-inversion sampling, so the
  masked-LM loss and the replacement sampler read the [R, V] logits twice between them (XLA merges the two identical
  computations); neither materialises the softmax. No gradient flows through them.
  """
  x = jax.lax.stop_gradient(x)
  m = jnp.max(x, axis=-1)
  return m, _block_sums(jnp.exp(x - m[:, None]), block)


def _last_positive(a: jax.Array) -> jax.Array:
  """Index of the last entry > 0 on the last axis (rounding must never pick an empty slot); 0 if none."""
  return jnp.max(jnp.where(a > 0, jnp.arange(a.shape[-1]), 0), -1)


def sample_categorical(rng: jax.Array, logits: jax.Array, temperature: float = 1.0, block: int = 128,
                       uniforms: jax.Array | None = None) -> jax.Array:
  """One sample per row of softmax(logits / temperature) [..., V] by inverting its CDF with one uniform per row.

  The same distribution as Gumbel-max (argmax(logits / T + Gumbel noise)), for a fraction of its cost: Gumbel-max needs
  V random numbers and two logarithms per row and a variadic (value, index) reduction, which together took ~10% of the
  ELECTRA-Small step on XLA's CPU backend; this needs one exponential per logit and one random number per row. The CDF
  is searched in two levels: over the block masses of `softmax_stats` (blocks of `block` logits), then inside the
  chosen block, whose `block` exponentials are recomputed from its logits. Logits of probability 0 (-inf, or
  underflowed) are never chosen. `uniforms` ([...] in [0, 1)): the per-row draws, when made beforehand (the draws of
  `rng` for the whole batch, sliced for a micro-batch).
  """
  lead, v = logits.shape[:-1], logits.shape[-1]
  x = jax.lax.stop_gradient(logits).reshape(-1, v).astype(jnp.float32)
  if temperature != 1.0:
    x = x / temperature
  m, mass = softmax_stats(x, block)
  cum = jnp.cumsum(mass, -1)                                                 # [R, nb]
  u = jax.random.uniform(rng, (x.shape[0],)) if uniforms is None else uniforms.reshape(-1)
  target = u * cum[:, -1]                                                    # in [0, total)
  b = jnp.minimum(jnp.sum(cum <= target[:, None], -1), _last_positive(mass))
  before = jnp.take_along_axis(cum, b[:, None], 1)[:, 0] - jnp.take_along_axis(mass, b[:, None], 1)[:, 0]
  idx = b[:, None] * block + jnp.arange(block)                               # the chosen block's vocabulary ids
  inner = jnp.where(idx < v, jnp.exp(jnp.take_along_axis(x, jnp.minimum(idx, v - 1), 1) - m[:, None]), 0.0)
  rest = jnp.maximum(target - before, 0.0)[:, None]   # >= 0, so leading empty slots are always skipped
  i = jnp.minimum(jnp.sum(jnp.cumsum(inner, -1) <= rest, -1), _last_positive(inner))
  return (b * block + i).reshape(lead)


def corrupt(masked: Masked, sampled: jax.Array, input_ids: jax.Array, input_mask: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """(discriminator input, labels): the sampled tokens at the masked positions; label 1 where a real token was
  replaced by a different one (a sample equal to the original counts as original)."""
  corrupted = scatter_positions(masked.input_ids, masked.positions, sampled, masked.weights)
  return corrupted, (corrupted != input_ids) & input_mask.astype(bool)


# ------------------------------------------------------------------------------------------------ losses and metrics
def safe_div(a, b):
  return a / jnp.maximum(b, 1e-6)


def masked_lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array, kernels: str = "auto",
                   denominator: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy over the weighted positions, accuracy of the top prediction there); `denominator`: the
  weights' sum over the whole batch when `weights` are one micro-batch's (then the two add up over micro-batches).

  The cross-entropy is `ops.cross_entropy_rows` in the forms `kernels` names, its logsumexp from `softmax_stats`,
  which it shares with `sample_categorical`. A prediction counts as correct when the target's logit is the row
  maximum (an argmax would be a variadic reduction; the two differ only on exact ties).
  """
  v = logits.shape[-1]
  x = logits.reshape(-1, v).astype(jnp.float32)
  t = targets.reshape(-1).astype(jnp.int32)
  w = weights.reshape(-1).astype(jnp.float32)
  m, mass = softmax_stats(x)
  losses = ops.cross_entropy_rows(x, t, lse=m + jnp.log(jnp.sum(mass, -1)), kernels=kernels)
  top = jnp.take_along_axis(jax.lax.stop_gradient(x), t[:, None], 1)[:, 0] >= m
  den = jnp.sum(w) if denominator is None else denominator
  return safe_div(jnp.sum(losses * w), den), safe_div(jnp.sum(top * w), den)


def histogram_auc(logits: jax.Array, labels: jax.Array, weights: jax.Array, num_bins: int = 4096,
                  limit: float = 16.0) -> jax.Array:
  """ROC AUC from per-bin counts of positive and negative logits (ties within a bin count 1/2); NaN if undefined."""
  scaled = (jnp.clip(logits, -limit, limit) + limit) / (2 * limit) * num_bins
  idx = jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, num_bins - 1).reshape(-1)
  w = weights.astype(jnp.float32).reshape(-1)
  y = labels.astype(jnp.float32).reshape(-1)
  pos = jnp.zeros(num_bins, jnp.float32).at[idx].add(w * y)
  neg = jnp.zeros(num_bins, jnp.float32).at[idx].add(w * (1 - y))
  neg_below = jnp.cumsum(neg) - neg
  pairs = jnp.sum(pos) * jnp.sum(neg)
  return jnp.where(pairs > 0, jnp.sum(pos * (neg_below + 0.5 * neg)) / jnp.maximum(pairs, 1.0), jnp.nan)


def discriminator_metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
  w = weights.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  pred = (logits > 0).astype(jnp.float32)
  true_pos = jnp.sum(w * pred * y)
  return {
      "disc_accuracy": safe_div(jnp.sum(w * (pred == y)), jnp.sum(w)),
      "disc_precision": safe_div(true_pos, jnp.sum(w * pred)),
      "disc_recall": safe_div(true_pos, jnp.sum(w * y)),
      "disc_auc": histogram_auc(logits, y, w),
      "disc_replaced_fraction": safe_div(jnp.sum(w * y), jnp.sum(w)),
  }


# ------------------------------------------------------------------------------------------------ the step
@dataclasses.dataclass(frozen=True)
class StepConfig:
  objective: str
  mask_prob: float
  max_predictions: int
  masking: str
  gen_weight: float
  disc_weight: float
  temperature: Any                 # a float, or step -> temperature (train/generator.py temperature_schedule)
  vocab_size: int
  pad_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  sampling: str = "model"          # "model" or "uniform" (no generator network)
  disallow_correct: bool = False   # never sample the original token
  two_stage: int = 0               # > 0: the generator alone for this many steps, then the discriminator alone
  record_corruption: bool = False  # metrics["corruption"]: the step's corruption (objectives.corruption_record)
  frozen_generator: bool = False   # a fixed external generator: inference mode (no dropout), no MLM loss
