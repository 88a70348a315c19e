"""Pretraining objectives: the corruption and the loss of each, as pure functions, and the loss_fn that composes them.

    loss_fn = objectives.make_loss_fn(graphdef, rest, step_config)     # pretrain_lib builds its step on it
    loss, metrics = loss_fn(params, batch, rng, step)                   # step: two_stage, scheduled temperature

Every objective starts from the same dynamic masking (masking.mask_tokens: ~15% of the real tokens, 85% of them
[MASK]); B = batch, L = length, P = max predictions per sequence, V = vocabulary.
  electra         ELECTRA (replaced-token detection): the generator's MLM loss at the masked positions; its samples
                  replace the masked tokens; the discriminator's sigmoid BCE at every real token, label 1 where the
                  token changed. loss = gen_weight * MLM + disc_weight * RTD.
  mlm             BERT: a discriminator-size masked LM on the [MASK]ed input; no generator.
  electra_15      as electra, but the discriminator's loss only at the masked positions (paper Table 5 "ELECTRA 15%").
  replace_mlm     the masked positions hold generator samples instead of [MASK]; a discriminator-size masked LM
                  predicts the original tokens there (paper "Replace MLM"). loss = gen_weight * MLM + main MLM.
  all_tokens_mlm  replaced as replace_mlm; the main model predicts every input token through the paper's copy
                  mechanism: p(x_t) = D_t * 1[x_t = input_t] + (1 - D_t) * softmax_t(x_t), D_t = sigmoid(copy head),
                  loss -log p(original) averaged over the real tokens. loss = gen_weight * MLM + that NLL.
  electric        Electric (Clark et al. EMNLP 2020), as google-research/electra runs it (electric_objective=True):
                  a two-tower cloze generator q(x_t | x_{\\t}) sees the unmasked input and is trained with the cloze
                  loss at every maskable position; the masked positions are replaced by samples of q; the
                  discriminator's logit is E(x)_t + log q(x_t | x_{\\t}) (stop_gradient) + log(p / (1 - p)),
                  p = mask_prob, and its BCE at every real token with label 1 at EVERY replaced position (a sample
                  equal to the original counts as noise: noise-contrastive estimation).
Generator switches (StepConfig): temperature (a number, or step -> temperature: train/generator.py), frozen_generator
(a fixed external generator: run without dropout, its MLM loss reported as mlm_loss but not trained; the metric
`temperature` is logged when it is scheduled), weight_sharing "gdes" (read from the model: the discriminator runs on
modeling.gdes_params), sampling "model" (from softmax(logits / temperature)) or "uniform" (a uniform token
over the vocabulary, the paper's uniform-generator baseline: no generator network, no generator loss);
disallow_correct (never sample the original token: its logit set to -inf; uniform draws from the other V - 1);
two_stage N > 0 (objective electra; Section 3.2's two-stage training): steps 0..N-1 train the generator alone (loss =
MLM, the discriminator's parameters frozen), step N copies the generator's encoder into the discriminator, later steps
train the discriminator alone (loss = RTD) with the generator frozen; the step does all of it from state["step"].

Metrics of every objective besides the losses: replaced_fraction (share of the real input tokens whose token the
corruption changed; [MASK] counts as a change), sampled_equals_original (share of the sampled masked positions that
drew the original token; 0 for mlm, which samples none), the generator's mlm_accuracy / sampled_mlm_accuracy and
the discriminator's disc_accuracy / precision / recall / auc where those networks exist. With
StepConfig.record_corruption they also hold "corruption" (corruption_record): the step's masked input, targets and
discriminator input, labels and loss weights, which experiments/trace.py records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from electra_jax import modeling
from electra_jax.train import masking as mk, optim

OBJECTIVES = mk.OBJECTIVES      # ("electra", "mlm", "electra_15", "replace_mlm", "all_tokens_mlm", "electric")
SAMPLINGS = mk.SAMPLINGS        # ("model", "uniform")
RTD_OBJECTIVES = ("electra", "electra_15", "electric")      # a binary discriminator head
MLM_MAIN_OBJECTIVES = ("replace_mlm", "all_tokens_mlm")     # a discriminator-size masked LM on replaced input


def model_options(objective: str, weight_sharing: str = "embeddings") -> dict[str, str]:
  """ElectraPretrainingModel's options for an objective (objective "mlm" uses a plain ElectraForMaskedLM)."""
  head = {"replace_mlm": "mlm", "all_tokens_mlm": "mlm_copy"}.get(objective, "rtd")
  return {"weight_sharing": weight_sharing, "discriminator_head": head,
          "generator_kind": "two_tower" if objective == "electric" else "mlm"}


# ------------------------------------------------------------------------------------------------ corruption
def disallow_targets(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """logits [..., V] with each row's target logit at -inf (never sampled; the original subtracts 1000)."""
  iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.where(iota == targets[..., None].astype(jnp.int32), -jnp.inf, logits)


def sample_uniform(rng: jax.Array, targets: jax.Array, vocab_size: int, disallow_correct: bool = False
                   ) -> jax.Array:
  """A uniform token id per entry of targets' shape; with disallow_correct, uniform over the V - 1 others."""
  if not disallow_correct:
    return jax.random.randint(rng, targets.shape, 0, vocab_size, dtype=jnp.int32)
  r = jax.random.randint(rng, targets.shape, 0, vocab_size - 1, dtype=jnp.int32)
  return r + (r >= targets.astype(jnp.int32)).astype(jnp.int32)


def sample_replacements(rng: jax.Array, masked: mk.Masked, logits: jax.Array | None, *, sampling: str,
                        temperature: float | jax.Array, vocab_size: int, disallow_correct: bool,
                        noise: jax.Array | None = None) -> jax.Array:
  """[B, P] replacement tokens for the masked positions: from softmax(logits / T) ([B, P, V]) or uniform; T a
  Python number or a scalar array (a scheduled temperature). `noise`: the draws made beforehand for the whole batch
  (`prepare_batch`): the uniform tokens, or one uniform per position."""
  if sampling == "uniform":
    return noise if noise is not None else sample_uniform(rng, masked.targets, vocab_size, disallow_correct)
  x = jax.lax.stop_gradient(logits)
  if disallow_correct:
    x = disallow_targets(x, masked.targets)
  if not isinstance(temperature, (int, float)):   # a scheduled (traced) temperature
    x, temperature = x.astype(jnp.float32) / temperature, 1.0
  return mk.sample_categorical(rng, x, temperature, uniforms=noise).astype(jnp.int32)


def positions_mask(masked: mk.Masked, length: int) -> jax.Array:
  """[B, L] float32: 1 at the masked (sampled) positions."""
  zeros = jnp.zeros((masked.positions.shape[0], length), jnp.int32)
  return mk.scatter_positions(zeros, masked.positions, jnp.ones_like(masked.positions), masked.weights
                              ).astype(jnp.float32)


def corruption_metrics(corrupted: jax.Array, original: jax.Array, input_mask: jax.Array,
                       sampled: jax.Array | None = None, masked: mk.Masked | None = None) -> dict[str, jax.Array]:
  """replaced_fraction over the real tokens; sampled_equals_original over the sampled masked positions."""
  real = input_mask.astype(jnp.float32)
  out = {"replaced_fraction": mk.safe_div(jnp.sum((corrupted != original) * real), jnp.sum(real))}
  if sampled is None:
    out["sampled_equals_original"] = jnp.zeros((), jnp.float32)
  else:
    same = (sampled == masked.targets).astype(jnp.float32)
    out["sampled_equals_original"] = mk.safe_div(jnp.sum(same * masked.weights), jnp.sum(masked.weights))
  return out


def corruption_record(masked: mk.Masked, length: int, corrupted: jax.Array | None = None,
                      labels: jax.Array | None = None, weights: jax.Array | None = None) -> dict[str, jax.Array]:
  """The step's corruption as a trace records it (StepConfig.record_corruption; electra_jax/experiments/trace.py):
  the generator's input and targets [B, L] and, where a discriminator reads it, its input, labels and loss weights."""
  out = {"generator_input_ids": masked.input_ids, "generator_targets": positions_mask(masked, length) > 0}
  if corrupted is not None:
    out.update(discriminator_input_ids=corrupted, discriminator_labels=labels,
               discriminator_weights=weights.astype(jnp.float32))
  return out


def candidates_mask(input_ids: jax.Array, input_mask: jax.Array, ignore_ids: tuple[int, ...]) -> jax.Array:
  """[B, L] float32: real tokens that masking may choose (the original's get_candidates_mask)."""
  keep = input_mask.astype(bool)
  for i in ignore_ids:
    keep = keep & (input_ids != i)
  return keep.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ losses
def rtd_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array, denominator: jax.Array | None = None
             ) -> jax.Array:
  """Sigmoid BCE averaged over the weighted positions (the discriminator's loss); `denominator` as masked_lm_loss."""
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
  w = weights.astype(jnp.float32)
  return mk.safe_div(jnp.sum(bce * w), jnp.sum(w) if denominator is None else denominator)


def log_softmax_at(logits: jax.Array, ids: jax.Array) -> jax.Array:
  """log softmax(logits)[ids] per row: logits [..., V], ids [...] (gradient through both terms)."""
  x = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(x, ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(x, axis=-1)


def electric_logits(disc_logits: jax.Array, log_q: jax.Array, mask_prob: float) -> jax.Array:
  """Electric's noise-contrastive logit of "this token is noise": E(x)_t + log q(x_t | context) + log(k / (n - k)),
  with k / n = mask_prob and q under stop_gradient (run_pretraining.py _get_discriminator_output)."""
  return disc_logits + jax.lax.stop_gradient(log_q) + math.log(mask_prob / (1.0 - mask_prob))


def copy_mixture_nll(lm_logits: jax.Array, copy_logits: jax.Array, input_ids: jax.Array, targets: jax.Array,
                     weights: jax.Array, denominator: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """All-Tokens MLM with the copy mechanism: (mean -log p(target), accuracy, mean copy probability D).

  p(v) = D * 1[v = input] + (1 - D) * softmax(lm_logits)(v), D = sigmoid(copy_logits); lm_logits [B, L, V],
  copy_logits, input_ids, targets, weights [B, L]. A prediction is correct when p(target) is the largest p(v).
  """
  log_s = log_softmax_at(lm_logits, targets)                            # log softmax at the target
  log_d, log_not_d = jax.nn.log_sigmoid(copy_logits), jax.nn.log_sigmoid(-copy_logits)
  same = input_ids == targets
  log_p = jnp.where(same, jnp.logaddexp(log_d, log_not_d + log_s), log_not_d + log_s)
  w = weights.astype(jnp.float32)
  den = jnp.sum(w) if denominator is None else denominator
  nll = mk.safe_div(-jnp.sum(log_p * w), den)
  # accuracy: p(target) against the largest p(v) (at the input token, or the softmax's top token elsewhere)
  x = jax.lax.stop_gradient(lm_logits).astype(jnp.float32)
  d = jax.nn.sigmoid(jax.lax.stop_gradient(copy_logits))
  probs_top = jnp.exp(jnp.max(x, -1) - jax.nn.logsumexp(x, -1))
  p_input = d + (1 - d) * jnp.exp(log_softmax_at(x, input_ids))
  p_best = jnp.maximum(p_input, (1 - d) * probs_top)
  correct = jnp.exp(jax.lax.stop_gradient(log_p)) >= p_best * (1 - 1e-6)
  accuracy = mk.safe_div(jnp.sum(correct * w), den)
  return nll, accuracy, mk.safe_div(jnp.sum(d * w), den)


# ------------------------------------------------------------------------------------------------ two-stage training
def two_stage_frozen(params: Mapping[str, Any], weight_sharing: str) -> tuple[Any, Any]:
  """(frozen in stage 1, frozen in stage 2): boolean trees over params. Stage 1 trains what the generator's loss
  reaches (its own parameters and, with weight_sharing "embeddings", the shared embeddings, stored under
  discriminator/electra/embeddings); stage 2 trains the discriminator's parameters (shared embeddings included) and
  never the generator's own."""
  def owner(path) -> str:
    names = optim.path_names(path)
    if names[0] == "generator":
      return "generator"
    if weight_sharing == "embeddings" and names[:3] == ("discriminator", "electra", "embeddings"):
      return "shared"
    return "discriminator"

  stage1 = jax.tree_util.tree_map_with_path(lambda p, _: owner(p) == "discriminator", params)
  stage2 = jax.tree_util.tree_map_with_path(lambda p, _: owner(p) == "generator", params)
  return stage1, stage2


def copy_generator_into_discriminator(params: Mapping[str, Any], now: jax.Array) -> dict[str, Any]:
  """params with discriminator/electra/* := generator/electra/* (where both hold a parameter) when `now`."""
  gen = params["generator"]["electra"]
  disc = dict(params["discriminator"])

  def pick(d_tree, g_tree):
    if isinstance(d_tree, Mapping):
      return {k: (pick(v, g_tree[k]) if k in g_tree else v) for k, v in d_tree.items()}
    return jnp.where(now, g_tree, d_tree)

  disc["electra"] = pick(disc["electra"], gen)
  return {**params, "discriminator": disc}


# ------------------------------------------------------------------------------------------------ the loss function
# Metrics that add up over micro-batches of a prepared batch (their denominators are the whole batch's); the others
# are averaged (trainer.make_train_step).
SUMMED_METRICS = frozenset({"loss", "mlm_loss", "mlm_accuracy", "rtd_loss", "main_mlm_loss", "main_mlm_accuracy",
                            "copy_probability", "real_tokens"})


def make_prepare_fn(cfg: Any) -> Callable:
  """prepare(batch, rng) -> batch plus the draws loss_fn(params, batch, rng) would make for it that do not depend on
  the parameters (the masking, the sampling noise) and each loss's denominator over the whole batch, as per-row
  copies ([B]); loss_fn on any slice of rows of the result gives that slice's exact share of the whole batch's loss
  (gradient accumulation: the micro-batches see what the full batch would)."""
  ignore = (cfg.pad_id, cfg.cls_id, cfg.sep_id, cfg.mask_id)

  def prepare(batch, rng):
    ids, mask = batch["input_ids"], batch["input_mask"]
    k_mask, _, k_sample, _ = jax.random.split(rng, 4)   # as loss_fn splits it
    m = mk.mask_tokens(k_mask, ids, mask, mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions,
                       mask_id=cfg.mask_id, ignore_ids=ignore, vocab_size=cfg.vocab_size, masking=cfg.masking)
    b, p = m.positions.shape
    if cfg.sampling == "uniform":
      noise = sample_uniform(k_sample, m.targets, cfg.vocab_size, cfg.disallow_correct)
    else:   # sample_categorical's one uniform per row of the [B, P, V] logits
      noise = jax.random.uniform(k_sample, (b * p,)).reshape(b, p)
    rows = lambda v: jnp.full((b,), v, jnp.float32)  # noqa: E731
    return {**batch, "masked_input_ids": m.input_ids, "masked_positions": m.positions, "masked_targets": m.targets,
            "masked_weights": m.weights, "sample_noise": noise, "norm_masked": rows(jnp.sum(m.weights)),
            "norm_real": rows(jnp.sum(mask.astype(jnp.float32))),
            "norm_candidates": rows(jnp.sum(candidates_mask(ids, mask, ignore)))}

  return prepare


def make_loss_fn(graphdef: nnx.GraphDef, rest: nnx.State, cfg: Any) -> Callable:
  """loss_fn(params, batch, rng, step=None) -> (loss, metrics), pure; cfg a masking.StepConfig."""
  if cfg.objective not in OBJECTIVES:
    raise ValueError(f"objective {cfg.objective!r}: must be one of {OBJECTIVES}")
  ignore = (cfg.pad_id, cfg.cls_id, cfg.sep_id, cfg.mask_id)

  def loss_fn(params, batch, rng, step=None):
    model = nnx.merge(graphdef, params, rest)
    if getattr(model, "weight_sharing", None) == "gdes" and model.generator is not None:
      model = nnx.merge(graphdef, modeling.gdes_params(params), rest)   # discriminator: sg(E_G) + E_delta
    ids, mask, segments = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
    k_mask, k_gen, k_sample, k_disc = jax.random.split(rng, 4)
    if "masked_positions" in batch:   # prepared (make_prepare_fn): draws and denominators of the whole batch
      m = mk.Masked(input_ids=batch["masked_input_ids"], positions=batch["masked_positions"],
                    targets=batch["masked_targets"], weights=batch["masked_weights"])
      noise, den = batch["sample_noise"], lambda name: batch[name][0]  # noqa: E731
    else:
      m = mk.mask_tokens(k_mask, ids, mask, mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions,
                         mask_id=cfg.mask_id, ignore_ids=ignore, vocab_size=cfg.vocab_size, masking=cfg.masking)
      noise, den = None, lambda name: None  # noqa: E731
    real = mask.astype(jnp.float32)
    out = {"masked_per_seq": jnp.mean(jnp.sum(m.weights, -1)), "real_tokens": jnp.sum(real)}
    if cfg.objective == "mlm":   # BERT: the model is the masked LM
      gen = model(m.input_ids, mask, segments, masked_positions=m.positions, dropout_rng=k_gen)
      mlm_loss, mlm_accuracy = mk.masked_lm_loss(gen.logits, m.targets, m.weights, denominator=den("norm_masked"))
      out.update(loss=mlm_loss, mlm_loss=mlm_loss, mlm_accuracy=mlm_accuracy,
                 **corruption_metrics(m.input_ids, ids, mask))
      if cfg.record_corruption:
        out["corruption"] = corruption_record(m, ids.shape[1])
      return mlm_loss, out

    # ---------------------------------------------------------------- the generator and its samples
    gen_loss, log_q_full = jnp.zeros((), jnp.float32), None
    if model.generator is None:                         # uniform sampling: no generator network
      sample_logits = None
    elif cfg.objective == "electric":                   # the two-tower cloze model on the unmasked input
      cloze = model.generator(ids, mask, segments, dropout_rng=k_gen)                          # [B, L, V]
      gen_loss, gen_accuracy = mk.masked_lm_loss(cloze, ids, candidates_mask(ids, mask, ignore),
                                                 denominator=den("norm_candidates"))
      sample_logits = jnp.take_along_axis(cloze, m.positions[..., None], axis=1)             # [B, P, V]
      out["masked_cloze_accuracy"] = mk.masked_lm_loss(jax.lax.stop_gradient(sample_logits), m.targets,
                                                       m.weights)[1]
      log_q_full = cloze
      out.update(mlm_loss=gen_loss, mlm_accuracy=gen_accuracy)
    else:
      gen = model.generator(m.input_ids, mask, segments, masked_positions=m.positions,
                            dropout_rng=None if cfg.frozen_generator else k_gen)
      gen_loss, gen_accuracy = mk.masked_lm_loss(gen.logits, m.targets, m.weights, denominator=den("norm_masked"))
      sample_logits = gen.logits
      out.update(mlm_loss=gen_loss, mlm_accuracy=gen_accuracy)
      if cfg.frozen_generator:   # reported, not trained
        out["mlm_loss"], gen_loss = jax.lax.stop_gradient(gen_loss), jnp.zeros((), jnp.float32)
    temperature = cfg.temperature
    if callable(temperature):
      temperature = out["temperature"] = temperature(0 if step is None else step)
    sampled = sample_replacements(k_sample, m, sample_logits, sampling=cfg.sampling, temperature=temperature,
                                  vocab_size=cfg.vocab_size, disallow_correct=cfg.disallow_correct, noise=noise)
    corrupted, labels = mk.corrupt(m, sampled, ids, mask)
    out.update(corruption_metrics(corrupted, ids, mask, sampled, m))
    out["sampled_mlm_accuracy"] = out["sampled_equals_original"]

    # ---------------------------------------------------------------- the discriminator-size network
    if cfg.objective in MLM_MAIN_OBJECTIVES:
      if cfg.objective == "replace_mlm":
        main = model.discriminator(corrupted, mask, segments, masked_positions=m.positions, dropout_rng=k_disc)
        main_loss, main_accuracy = mk.masked_lm_loss(main.logits, m.targets, m.weights,
                                                     denominator=den("norm_masked"))
      else:
        main = model.discriminator(corrupted, mask, segments, dropout_rng=k_disc)             # [B, L, V]
        copy_logits = model.copy_predictions(main.last_hidden_state)
        main_loss, main_accuracy, copy_prob = copy_mixture_nll(main.logits, copy_logits, corrupted, ids, real,
                                                                 den("norm_real"))
        out["copy_probability"] = copy_prob
      loss = cfg.gen_weight * gen_loss + main_loss
      out.update(loss=loss, main_mlm_loss=main_loss, main_mlm_accuracy=main_accuracy)
      return loss, out

    disc_logits = model.discriminator(corrupted, mask, segments, dropout_rng=k_disc).logits
    if cfg.objective == "electric":
      labels = positions_mask(m, ids.shape[1]) * real        # every sampled position is noise
      x = jax.lax.stop_gradient(log_q_full).reshape(-1, log_q_full.shape[-1])
      log_q = log_softmax_at(x, corrupted.reshape(-1)).reshape(ids.shape)
      disc_logits = electric_logits(disc_logits, log_q, cfg.mask_prob)
    electra_15 = cfg.objective == "electra_15"
    weights = positions_mask(m, ids.shape[1]) if electra_15 else real
    rtd = rtd_loss(disc_logits, labels, weights, den("norm_masked" if electra_15 else "norm_real"))
    if step is not None and cfg.two_stage > 0:
      first = (step < cfg.two_stage).astype(jnp.float32)
      loss = first * cfg.gen_weight * gen_loss + (1.0 - first) * cfg.disc_weight * rtd
      out["two_stage_generator_phase"] = first
    else:
      loss = cfg.gen_weight * gen_loss + cfg.disc_weight * rtd
    out.update(loss=loss, rtd_loss=rtd, **mk.discriminator_metrics(disc_logits, labels, real))
    if cfg.record_corruption:
      out["corruption"] = corruption_record(m, ids.shape[1], corrupted, labels, weights)
    return loss, out

  return loss_fn
