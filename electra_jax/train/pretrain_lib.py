"""ELECTRA replaced-token-detection pretraining (and the BERT-style MLM baseline): masking, the train step, the loop.

    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=tiny --workdir=/tmp/electra_tiny

    from electra_jax.train import pretrain_lib
    result = pretrain_lib.train_and_evaluate(config, workdir)     # resumes from workdir; returns a TrainResult

    setup = pretrain_lib.build_setup(config, mesh, vocab_size=30522, ids=special_ids(tok))   # pieces, for tests
    state = pretrain_lib.init_state(setup)                          # {"step", "params", "opt_state"}, born sharded
    state, metrics = setup.train_step(state, batch, jax.random.fold_in(base_key, step))

One step (objective "electra", as google-research/electra run_pretraining.py):
  1. dynamic masking: per sequence, n = min(P, max(1, round(mask_prob * #real tokens))) positions ([CLS]/[SEP] count
     as real tokens but are never chosen, nor [MASK] or padding), P = max_predictions_per_seq = int((mask_prob + 0.005)
     * max_seq_length); 85% of them become [MASK], 15% keep their token (masking="bert": 80% [MASK], 10% a random
     token, 10% kept). Positions are drawn without replacement (Gumbel top-k); the original draws with replacement
     (tf.random.categorical), so it occasionally masks fewer distinct tokens. Positions are a fixed [B, P] array with
     weights 0 on the unused slots;
  2. the generator predicts the masked tokens (vocabulary logits only at those P positions): MLM loss = mean CE over
     the weighted positions;
  3. replacements are sampled from softmax(generator logits / temperature) under stop_gradient (by inverting the
     CDF with one uniform per position: the distribution of the original's Gumbel-max, at a fraction of its cost);
  4. the discriminator sees the corrupted sequence; label 1 where the token was replaced AND differs from the original;
     RTD loss = sigmoid BCE averaged over the real tokens;
  5. loss = gen_weight * MLM + disc_weight * RTD (1 and 50). Objective "mlm": BERT-style masked LM of a
     discriminator-size ElectraForMaskedLM (steps 1-2 only).
The other objectives (electra_15, replace_mlm, all_tokens_mlm, electric) and the generator switches (sampling,
disallow_correct, weight_sharing, two_stage) are composed in electra_jax/train/objectives.py.
Discriminator AUC is computed on device from a fixed-bin histogram of the step's logits (4096 bins over [-16, 16]):
pairs in the same bin count 1/2, so it is the exact AUC of logits rounded to 1/128.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from electra_jax import modeling, sharding
from electra_jax.train import checkpointing, compiling, distributed, flops, metrics as metrics_lib, optim

# The objectives (electra_jax/train/objectives.py says what each one trains) and the generator's sampling.
OBJECTIVES = ("electra", "mlm", "electra_15", "replace_mlm", "all_tokens_mlm", "electric")
SAMPLINGS = ("model", "uniform")
MASKINGS = ("electra", "bert")


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient norm became NaN or Inf."""


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


def sample_categorical(rng: jax.Array, logits: jax.Array, temperature: float = 1.0, block: int = 128) -> jax.Array:
  """One sample per row of softmax(logits / temperature) [..., V] by inverting its CDF with one uniform per row.

  The same distribution as Gumbel-max (argmax(logits / T + Gumbel noise)), for a fraction of its cost: Gumbel-max needs
  V random numbers and two logarithms per row and a variadic (value, index) reduction, which together took ~10% of the
  ELECTRA-Small step on XLA's CPU backend; this needs one exponential per logit and one random number per row. The CDF
  is searched in two levels: over the block masses of `softmax_stats` (blocks of `block` logits), then inside the
  chosen block, whose `block` exponentials are recomputed from its logits. Logits of probability 0 (-inf, or
  underflowed) are never chosen.
  """
  lead, v = logits.shape[:-1], logits.shape[-1]
  x = jax.lax.stop_gradient(logits).reshape(-1, v).astype(jnp.float32)
  if temperature != 1.0:
    x = x / temperature
  m, mass = softmax_stats(x, block)
  cum = jnp.cumsum(mass, -1)                                                 # [R, nb]
  target = jax.random.uniform(rng, (x.shape[0],)) * cum[:, -1]              # in [0, total)
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
def _safe_div(a, b):
  return a / jnp.maximum(b, 1e-6)


@jax.custom_vjp
def _cross_entropy_rows(x: jax.Array, targets: jax.Array, m: jax.Array, mass: jax.Array) -> jax.Array:
  """logsumexp(x) - x[target] per row of x [R, V], the logsumexp from softmax_stats(x) = (m, mass)."""
  return _cross_entropy_rows_fwd(x, targets, m, mass)[0]


def _cross_entropy_rows_fwd(x, targets, m, mass):
  lse = m + jnp.log(jnp.sum(mass, -1))
  return lse - jnp.take_along_axis(x, targets[:, None], 1)[:, 0], (x, targets, lse)


def _cross_entropy_rows_bwd(res, g):
  # d/dx = softmax(x) - one_hot(target), as one elementwise pass over [R, V] (the target by comparison with an iota:
  # no scatter). m and mass are statistics of x under stop_gradient: the full derivative is the one above.
  x, targets, lse = res
  one_hot = jax.lax.broadcasted_iota(targets.dtype, x.shape, 1) == targets[:, None]
  return g[:, None] * (jnp.exp(x - lse[:, None]) - one_hot), None, None, None


_cross_entropy_rows.defvjp(_cross_entropy_rows_fwd, _cross_entropy_rows_bwd)


def masked_lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy over the weighted positions, accuracy of the top prediction there).

  The cross-entropy has a hand-written gradient (softmax - one-hot in one pass over the logits; autodiff of
  logsumexp and of a one-hot product made three), and shares `softmax_stats` with `sample_categorical`. A prediction
  counts as correct when the target's logit is the row maximum (an argmax would be a variadic reduction, 30x slower
  on XLA's CPU backend; the two differ only on exact ties).
  """
  v = logits.shape[-1]
  x = logits.reshape(-1, v).astype(jnp.float32)
  t = targets.reshape(-1).astype(jnp.int32)
  w = weights.reshape(-1).astype(jnp.float32)
  m, mass = softmax_stats(x)
  losses = _cross_entropy_rows(x, t, m, mass)
  top = jnp.take_along_axis(jax.lax.stop_gradient(x), t[:, None], 1)[:, 0] >= m
  return _safe_div(jnp.sum(losses * w), jnp.sum(w)), _safe_div(jnp.sum(top * w), jnp.sum(w))


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
      "disc_accuracy": _safe_div(jnp.sum(w * (pred == y)), jnp.sum(w)),
      "disc_precision": _safe_div(true_pos, jnp.sum(w * pred)),
      "disc_recall": _safe_div(true_pos, jnp.sum(w * y)),
      "disc_auc": histogram_auc(logits, y, w),
      "disc_replaced_fraction": _safe_div(jnp.sum(w * y), jnp.sum(w)),
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
  temperature: float
  vocab_size: int
  pad_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  sampling: str = "model"          # "model" or "uniform" (no generator network)
  disallow_correct: bool = False   # never sample the original token
  two_stage: int = 0               # > 0: the generator alone for this many steps, then the discriminator alone


def make_loss_fn(graphdef: nnx.GraphDef, rest: nnx.State, cfg: StepConfig) -> Callable:
  """loss_fn(params, batch, rng, step=None) -> (loss, metrics), pure; params a nested dict of arrays.

  Every objective is composed in electra_jax/train/objectives.py (which builds on this module's masking, sampling
  and masked-LM loss, hence the import here)."""
  from electra_jax.train import objectives  # pylint: disable=import-outside-toplevel
  return objectives.make_loss_fn(graphdef, rest, cfg)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    two_stage: tuple[int, Any, Any] | None = None) -> Callable:
  """train_step(state, batch, rng) -> (state, metrics); state = {"step", "params", "opt_state"}.

  two_stage = (N, frozen_in_stage_1, frozen_in_stage_2) (objectives.two_stage_frozen): at step N the discriminator's
  encoder is initialised from the generator's; the frozen parameters of the current stage keep their values (no
  update, no weight decay); loss_fn gets the step. The loop needs nothing else."""

  def train_step(state, batch, rng):
    params = state["params"]
    extra = ()
    if two_stage is not None:
      from electra_jax.train import objectives  # pylint: disable=import-outside-toplevel
      params = objectives.copy_generator_into_discriminator(params, state["step"] == two_stage[0])
      extra = (state["step"],)
    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, *extra)
    with jax.named_scope("optimizer"):   # names the update's ops in profiles (benchmarks/profile_step.py)
      updates, opt_state = tx.update(grads, state["opt_state"], params)
      new_params = optax.apply_updates(params, updates)
    if two_stage is not None:
      first = state["step"] < two_stage[0]
      new_params = jax.tree.map(lambda f1, f2, old, new: jnp.where(jnp.where(first, f1, f2), old, new),
                                two_stage[1], two_stage[2], params, new_params)
    params = new_params
    # The parameters' norm is measured where metrics are logged (run(): param_norm), not here: on XLA's CPU backend,
    # which has no multi-output fusion, a reduction over the new parameters or the updates split AdamW's one pass per
    # parameter into several (optimizer op time 34 -> 16 ms per ELECTRA-Small step without them).
    out.update(grad_norm=optax.tree.norm(grads), learning_rate=schedule(state["step"]))
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, out

  return train_step


# ------------------------------------------------------------------------------------------------ set-up
def model_configs(config: Any, vocab_size: int) -> tuple[modeling.ElectraConfig, modeling.ElectraConfig | None]:
  """(discriminator or MLM config, generator config or None) from config.model / config.generator."""
  m = config.model
  if int(m.get("vocab_size", 0) or 0) not in (0, vocab_size):
    raise ValueError(f"config.model.vocab_size={m.vocab_size} but the vocab file has {vocab_size} tokens")
  heads = int(m.get("num_attention_heads", 0) or 0) or max(1, m.hidden_size // 64)
  objective = config.objective
  disc = modeling.ElectraConfig(
      vocab_size=vocab_size, embedding_size=int(m.embedding_size or m.hidden_size), hidden_size=int(m.hidden_size),
      num_hidden_layers=int(m.num_hidden_layers), num_attention_heads=heads,
      intermediate_size=int(m.get("intermediate_size", 0) or 4 * m.hidden_size),
      hidden_dropout_prob=float(m.hidden_dropout_prob),
      attention_probs_dropout_prob=float(m.attention_probs_dropout_prob),
      max_position_embeddings=int(m.max_position_embeddings), dtype=config.dtype, param_dtype=config.param_dtype,
      scan_layers=bool(config.scan_layers), remat_policy=config.remat_policy,
      architectures=(("ElectraForMaskedLM",) if objective in ("mlm", "replace_mlm", "all_tokens_mlm") else
                     ("ElectraForPreTraining",)))
  if disc.max_position_embeddings < config.max_seq_length:
    raise ValueError(f"max_seq_length={config.max_seq_length} exceeds config.model.max_position_embeddings="
                     f"{disc.max_position_embeddings}")
  g = generator_options(config)
  if objective == "mlm" or g["sampling"] == "uniform":
    return disc, None
  fractions = (float(config.generator.hidden_fraction), float(config.generator.layers_fraction))
  if g["weight_sharing"] == "all" or g["two_stage"] > 0:
    what = "generator.weight_sharing='all'" if g["weight_sharing"] == "all" else "two_stage"
    if fractions != (1.0, 1.0):
      raise ValueError(f"{what} needs the generator the discriminator's size: set generator.hidden_fraction=1 and "
                       f"generator.layers_fraction=1 (they are {fractions[0]} and {fractions[1]})")
    gen = disc.replace(architectures=("ElectraForMaskedLM",))
  else:
    gen = modeling.generator_config(disc, *fractions)
  if g["weight_sharing"] == "none" and g["two_stage"] == 0:
    # the original's untied generator (untied_generator_embeddings=True) builds its own embeddings at its own width
    # (embedding_size=None -> hidden size), without a projection; two_stage keeps the discriminator's width so that
    # the generator's encoder can be copied into it
    gen = gen.replace(embedding_size=gen.hidden_size)
  return disc, gen


def generator_options(config: Any) -> dict[str, Any]:
  """config.generator's sampling / disallow_correct / weight_sharing and config.two_stage, validated."""
  gen = config.generator
  out = {"sampling": str(gen.get("sampling", "model")), "disallow_correct": bool(gen.get("disallow_correct", False)),
         "weight_sharing": str(gen.get("weight_sharing", "embeddings")), "two_stage": int(config.get("two_stage", 0))}
  if out["sampling"] not in SAMPLINGS:
    raise ValueError(f"config.generator.sampling={out['sampling']!r}: must be one of {SAMPLINGS}")
  if out["weight_sharing"] not in modeling.WEIGHT_SHARING:
    raise ValueError(f"config.generator.weight_sharing={out['weight_sharing']!r}: must be one of "
                     f"{modeling.WEIGHT_SHARING}")
  objective = config.objective
  if out["sampling"] == "uniform" and objective not in ("electra", "electra_15", "replace_mlm", "all_tokens_mlm"):
    raise ValueError(f"config.generator.sampling='uniform' with objective {objective!r}: uniform replacements need an "
                     f"objective that samples (electra, electra_15, replace_mlm, all_tokens_mlm)")
  if out["weight_sharing"] == "all" and objective == "electric":
    raise ValueError("config.generator.weight_sharing='all' with objective 'electric': the two-tower generator is "
                     "causal and cannot be the discriminator")
  if out["two_stage"] < 0:
    raise ValueError(f"config.two_stage={out['two_stage']}: must be >= 0 (0 = off)")
  if out["two_stage"] > 0:
    if objective != "electra" or out["sampling"] != "model" or out["weight_sharing"] == "all":
      raise ValueError("config.two_stage needs objective 'electra', generator.sampling='model' and "
                       "generator.weight_sharing 'embeddings' or 'none'")
    if out["two_stage"] >= int(config.num_train_steps):
      raise ValueError(f"config.two_stage={out['two_stage']} leaves no discriminator steps "
                       f"(num_train_steps={config.num_train_steps})")
  return out


@dataclasses.dataclass
class Setup:
  """Everything a training step needs, built once from the config."""
  config: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  disc_config: modeling.ElectraConfig
  gen_config: modeling.ElectraConfig | None
  step_config: StepConfig
  graphdef: nnx.GraphDef
  rest: nnx.State
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: dict[str, Any]
  state_shardings: dict[str, Any]
  batch_sharding: jax.sharding.NamedSharding
  train_step: Callable
  init_fn: Callable
  model_options: dict[str, str] | None = None    # ElectraPretrainingModel's options; None: a plain masked LM

  @property
  def model_meta(self) -> dict[str, Any]:
    if self.model_options is None:
      return checkpointing.head_meta("ElectraForMaskedLM", self.disc_config)
    return checkpointing.pretraining_meta(self.disc_config, self.gen_config, options=self.model_options)


def build_mesh(config: Any, devices=None) -> jax.sharding.Mesh:
  return sharding.make_mesh({k: int(config.mesh[k]) for k in ("data", "fsdp", "tensor")}, devices)


def build_setup(config: Any, mesh: jax.sharding.Mesh, *, vocab_size: int, ids: Mapping[str, int]) -> Setup:
  """Model configs, abstract sharded state, optimizer and the jitted train step for `mesh`."""
  if config.objective not in OBJECTIVES:
    raise ValueError(f"config.objective={config.objective!r}: must be one of {OBJECTIVES}")
  if config.masking not in MASKINGS:
    raise ValueError(f"config.masking={config.masking!r}: must be one of {MASKINGS}")
  if not 0.0 < float(config.mask_prob) < 1.0:
    raise ValueError(f"config.mask_prob={config.mask_prob}: must be in (0, 1)")
  if not float(config.temperature) > 0.0:
    raise ValueError(f"config.temperature={config.temperature}: must be positive")
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  disc, gen = model_configs(config, vocab_size)
  g = generator_options(config)
  seed = int(config.seed)
  options = None
  if config.objective != "mlm":
    from electra_jax.train import objectives  # pylint: disable=import-outside-toplevel
    options = objectives.model_options(config.objective, g["weight_sharing"])

  def make_model():
    if options is None:
      return modeling.ElectraForMaskedLM(disc, rngs=nnx.Rngs(seed))
    return modeling.ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(seed), **options)

  graphdef, abstract_vars, rest = nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)
  param_shardings = nnx.to_pure_dict(sharding.logical_to_sharding(abstract_vars, mesh, rules))
  abstract_params = nnx.to_pure_dict(abstract_vars)
  if g["two_stage"] > 0:
    tx, schedule = _two_stage_optimizer(config, g["two_stage"])
  else:
    tx, schedule = optim.create(config.optimizer, abstract_params, learning_rate=float(config.learning_rate),
                                num_train_steps=int(config.num_train_steps))
  replicated = sharding.replicated(mesh)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  state_shardings = {"step": replicated, "params": param_shardings, "opt_state": opt_shardings}
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                                 "opt_state": abstract_opt}, state_shardings)
  step_cfg = StepConfig(
      objective=config.objective, mask_prob=float(config.mask_prob),
      max_predictions=int(config.max_predictions_per_seq) if int(config.max_predictions_per_seq) > 0 else
      max_predictions_per_seq(float(config.mask_prob), int(config.max_seq_length)),
      masking=config.masking, gen_weight=float(config.gen_weight), disc_weight=float(config.disc_weight),
      temperature=float(config.temperature), vocab_size=disc.vocab_size, pad_id=ids["pad"], cls_id=ids["cls"],
      sep_id=ids["sep"], mask_id=ids["mask"], sampling=g["sampling"], disallow_correct=g["disallow_correct"],
      two_stage=g["two_stage"])
  loss_fn = make_loss_fn(graphdef, rest, step_cfg)
  two_stage = None
  if g["two_stage"] > 0:
    from electra_jax.train import objectives  # pylint: disable=import-outside-toplevel
    two_stage = (g["two_stage"], *objectives.two_stage_frozen(abstract_params, g["weight_sharing"]))
  train_step = jax.jit(make_train_step(loss_fn, tx, schedule, two_stage), donate_argnums=(0,),
                       out_shardings=(state_shardings, replicated))

  def init():
    model = make_model()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  init_fn = jax.jit(init, out_shardings=state_shardings)
  return Setup(config=config, mesh=mesh, rules=rules, disc_config=disc, gen_config=gen, step_config=step_cfg,
               graphdef=graphdef, rest=rest, tx=tx, schedule=schedule, abstract_state=abstract_state,
               state_shardings=state_shardings, batch_sharding=sharding.batch_sharding(mesh, rules),
               train_step=train_step, init_fn=init_fn, model_options=options)


def _two_stage_optimizer(config: Any, first: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW as optim.create builds it, with the warmup-and-decay schedule restarted for each stage (each stage is a
  training run of its own: N generator steps, then num_train_steps - N discriminator steps)."""
  o, total, lr = config.optimizer, int(config.num_train_steps), float(config.learning_rate)

  def stage(steps):
    return optim.warmup_decay_schedule(lr, steps, optim.resolve_warmup(o, steps),
                                       power=float(o.get("lr_decay_power", 1.0)),
                                       end_learning_rate=float(o.get("end_learning_rate", 0.0)),
                                       kind=str(o.get("schedule", "multiply")))

  schedule = optax.join_schedules([stage(first), stage(total - first)], [first])
  tx = optim.adamw(schedule, b1=float(o.get("b1", 0.9)), b2=float(o.get("b2", 0.999)), eps=float(o.get("eps", 1e-6)),
                   weight_decay=float(o.get("weight_decay", 0.01)), mask=optim.weight_decay_mask,
                   clip_norm=o.get("clip_norm", 1.0), bias_correction=bool(o.get("bias_correction", False)))
  return tx, schedule


def init_state(setup: Setup) -> dict[str, Any]:
  """A fresh train state, created directly in its sharded layout."""
  with jax.set_mesh(setup.mesh), sharding.use_rules(setup.rules):
    return setup.init_fn()


def run_step(setup: Setup, state: dict[str, Any], batch: Mapping[str, jax.Array], rng: jax.Array):
  """One train step under the setup's mesh and rules (the loop enters them once instead)."""
  with jax.set_mesh(setup.mesh), sharding.use_rules(setup.rules):
    return setup.train_step(state, dict(batch), rng)


def merge_model(setup: Setup, params: Any) -> nnx.Module:
  return nnx.merge(setup.graphdef, params, setup.rest)


# ------------------------------------------------------------------------------------------------ the loop
@dataclasses.dataclass
class TrainResult:
  step: int                        # the last step trained (and checkpointed)
  preempted: bool                  # stopped by SIGTERM / a preemption notice before num_train_steps
  last_metrics: dict[str, float]
  export_dirs: dict[str, str]


def _host_params(params: Any) -> Any:
  """Params as numpy on every process (gathers shards across hosts when needed)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def _peak_flops(config: Any) -> float | None:
  peak = float(config.get("peak_flops_per_device", 0.0) or 0.0)
  if peak > 0:
    return peak
  peak = flops.peak_flops_per_device()
  if peak is None and jax.devices()[0].platform == "cpu":
    peak = flops.measure_peak_flops()
    logging.info("measured peak of one CPU device: %.3g FLOP/s (set config.peak_flops_per_device to fix it)", peak)
  return peak


def _strip_accents(value: Any) -> bool | None:
  """config.data.strip_accents: "" / None follows lower casing; true/false (or "true"/"false") forces it."""
  if value in ("", None):
    return None
  if isinstance(value, bool):
    return value
  text = str(value).strip().lower()
  if text in ("1", "true", "yes"):
    return True
  if text in ("0", "false", "no"):
    return False
  raise ValueError(f"config.data.strip_accents={value!r}: expected '', 'true' or 'false'")


def prepare_data(config: Any, workdir: str):
  """Tokenizer check and the ArrayRecord shards (built once per process 0, then reused). Returns (dir, tok, ids)."""
  from electra_jax.data import pretraining, tokenization  # pylint: disable=import-outside-toplevel
  data = config.data
  for field in ("corpus", "vocab_file"):
    if not data.get(field):
      raise ValueError(f"config.data.{field} is empty: pass --config.data.{field}=...")
  strip = _strip_accents(data.get("strip_accents", ""))
  tok = tokenization.load_tokenizer(data.vocab_file, lowercase=bool(data.lower_case), strip_accents=strip)
  cache_dir = data.get("cache_dir") or os.path.join(workdir, "data")
  kwargs = dict(max_seq_length=int(config.max_seq_length), lower_case=bool(data.lower_case), strip_accents=strip,
                seed=int(data.get("build_seed", 0)), num_shards=int(data.get("num_shards", 16)),
                num_processes=int(data.get("num_build_processes", 1)),
                tfds_data_dir=data.get("tfds_data_dir") or None)
  if distributed.is_primary():
    dataset_dir, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, **kwargs)
  distributed.barrier("electra_pretraining_data")
  if not distributed.is_primary():
    dataset_dir, manifest = pretraining.ensure_dataset(data.corpus, data.vocab_file, cache_dir, **kwargs)
  logging.info("pretraining data %s: %d examples, %d tokens", dataset_dir, manifest["num_examples"],
               manifest.get("num_tokens", -1))
  return dataset_dir, tok, tokenization.special_ids(tok)


def train_and_evaluate(config: Any, workdir: str) -> TrainResult:
  """Pretrains from config, resuming from `workdir` when it holds a checkpoint; exports HF folders at the end."""
  from electra_jax.data.loader import PretrainingLoader  # pylint: disable=import-outside-toplevel
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  total_steps = int(config.num_train_steps)
  if total_steps <= 0:
    raise ValueError(f"config.num_train_steps={total_steps}: must be positive")

  # ------------------------------------------------------------------ data and model set-up
  dataset_dir, tok, ids = prepare_data(config, workdir)
  mesh = build_mesh(config)
  setup = build_setup(config, mesh, vocab_size=tok.get_vocab_size(), ids=ids)
  tokenizer_meta = {"vocab_file": os.path.abspath(config.data.vocab_file), "lowercase": bool(config.data.lower_case),
                    "strip_accents": _strip_accents(config.data.get("strip_accents", ""))}
  model_meta = {**setup.model_meta, "tokenizer": tokenizer_meta}
  if distributed.is_primary():
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  logging.info("mesh %s; parameters and shardings:\n%s", dict(mesh.shape),
               _describe_params(setup.abstract_state["params"]))

  # ------------------------------------------------------------------ restore or initialise
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINTS_SUBDIR),
                                    keep=int(config.keep_checkpoints), model_meta=model_meta)
  loader = PretrainingLoader(dataset_dir, int(config.batch_size), mesh, seed=int(config.seed),
                             prefetch=int(config.data.get("prefetch", 2)))
  base_key = jax.random.key(int(config.seed))
  restored = ckpt.restore(setup.abstract_state["params"], setup.abstract_state["opt_state"])
  if restored is not None:
    step = restored.step
    state = {"step": jax.device_put(jnp.asarray(step, jnp.int32), setup.state_shardings["step"]),
             "params": restored.params, "opt_state": restored.opt_state}
    loader.restore(restored.train_meta["loader"])
    if "rng_key" in restored.train_meta:
      base_key = jax.random.wrap_key_data(np.asarray(restored.train_meta["rng_key"], np.uint32))
    logging.info("resuming at step %d", step)
  else:
    step = 0
    state = init_state(setup)
    logging.info("starting from scratch (seed %d)", int(config.seed))

  writer = metrics_lib.MetricWriter(workdir, resume_step=step)
  if step == 0:
    writer.write_text("config", "```\n" + str(config) + "\n```")
  seq_len, batch_size = int(config.max_seq_length), int(config.batch_size)
  flops_per_step = flops.train_flops_per_step(
      setup.disc_config, setup.gen_config, batch_size=batch_size, seq_len=seq_len,
      num_predictions=setup.step_config.max_predictions, objective=config.objective)
  meter = metrics_lib.Throughput(tokens_per_step=batch_size * seq_len, flops_per_step=flops_per_step,
                                 num_devices=jax.device_count(), peak_flops_per_device=_peak_flops(config),
                                 total_steps=total_steps)
  log_every = max(1, int(config.log_every_steps))
  ckpt_every = max(1, int(config.checkpoint_every_steps))
  key_data = np.asarray(jax.random.key_data(base_key)).tolist()

  def train_meta():
    return {"loader": loader.state(), "rng_key": key_data, "seed": int(config.seed)}

  pending: list[tuple[int, dict[str, jax.Array]]] = []
  param_norm = jax.jit(optax.tree.norm)
  last: dict[str, float] = {}

  def flush(log_step: int | None):
    """Fetches the queued step metrics, stops on a non-finite loss (naming the step), logs the latest."""
    nonlocal pending, last
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending = []
    for s, values in fetched:
      for key in ("loss", "grad_norm"):
        if not math.isfinite(float(values[key])):
          raise NonFiniteLossError(f"non-finite {key} ({float(values[key])}) at step {s}: stopping (last "
                                   f"checkpoint: {ckpt.latest_step()}); lower learning_rate or check the data")
    if log_step is None:
      return
    s, values = fetched[-1]
    last = {k: float(v) for k, v in values.items()}
    last["param_norm"] = float(param_norm(state["params"]))   # the parameters after step s: the state now
    scalars = {**last, **meter.update(s)}
    writer.write_scalars(s, scalars)
    if distributed.is_primary():
      logging.info(metrics_lib.format_step_line(s, total_steps, scalars))

  # ------------------------------------------------------------------ train
  preempted = False
  logging.info("training steps %d..%d: batch %d x %d tokens, %.3g model FLOPs per step", step + 1, total_steps,
               batch_size, seq_len, flops_per_step)
  try:
    with jax.set_mesh(mesh), sharding.use_rules(setup.rules):
      train_step, first = None, True
      while step < total_steps:
        batch = next(loader)
        rng = jax.random.fold_in(base_key, step)
        if train_step is None:   # compiled ahead of the first step, so the compiler's memory is freed before it runs
          train_step = compiling.compile_step(setup.train_step, state, batch, rng, name="pretraining step")
        state, out = train_step(state, batch, rng)
        step += 1
        pending.append((step, out))
        if first:  # exclude the first step (warm-up) from the throughput
          jax.block_until_ready(out)
          meter.start(step)
          first = False
        stop = ckpt.preemption_requested(step)
        save = step % ckpt_every == 0 or step == total_steps or stop
        if step % log_every == 0 or step == total_steps or stop:
          flush(step)
        elif save:
          flush(None)
        if save:
          ckpt.save(step, state["params"], state["opt_state"], train_meta())
        if stop and step < total_steps:
          logging.warning("stopping at step %d after a preemption notice (checkpoint saved)", step)
          preempted = True
          break
  finally:
    loader.close()
    ckpt.close()
    writer.close()

  # ------------------------------------------------------------------ export
  export_dirs: dict[str, str] = {}
  if not preempted and config.get("export", True):
    export_dirs = export_hf(setup, state["params"], os.path.join(workdir, "export"), tokenizer_meta)
  return TrainResult(step=step, preempted=preempted, last_metrics=last, export_dirs=export_dirs)


def export_hf(setup: Setup, params: Any, out_dir: str, tokenizer_meta: Mapping[str, Any]) -> dict[str, str]:
  """Writes the discriminator and generator (or the MLM model) as HF folders with tokenizer files (process 0)."""
  from electra_jax import convert  # pylint: disable=import-outside-toplevel
  host = _host_params(params)
  dirs: dict[str, str] = {}
  if not distributed.is_primary():
    return dirs
  model = merge_model(setup, jax.tree.map(jnp.asarray, host))
  parts = model.hf_parts() if isinstance(model, modeling.ElectraPretrainingModel) else {"mlm": model}
  for name, module in parts.items():
    dirs[name] = convert.to_hf(module, os.path.join(out_dir, name), vocab_file=tokenizer_meta["vocab_file"],
                               lowercase=tokenizer_meta["lowercase"], strip_accents=tokenizer_meta["strip_accents"])
    logging.info("exported %s to %s", name, dirs[name])
  return dirs


def _describe_params(abstract_params: Any) -> str:
  lines, total = [], 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    total += int(np.prod(leaf.shape))
    lines.append(f"  {'/'.join(optim.path_names(path)):72s} {str(tuple(leaf.shape)):20s} {leaf.sharding.spec}")
  lines.append(f"  total parameters: {total:,}")
  return "\n".join(lines)


def read_losses(workdir: str) -> dict[int, float]:
  """{step: loss} from WORKDIR/metrics.jsonl (the last record of a step wins)."""
  return {int(r["step"]): r["loss"] for r in metrics_lib.read_metrics(workdir) if "loss" in r}

