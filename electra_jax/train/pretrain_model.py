"""The pretraining model's configs from a pretraining config: the discriminator (or MLM model) and the generator.

    disc, gen = pretrain_model.model_configs(config, vocab_size)    # ElectraConfig, ElectraConfig or None
    options = pretrain_model.generator_options(config)             # sampling, disallow_correct, weight_sharing, ...
"""

from __future__ import annotations

from typing import Any

from electra_jax import errors, modeling
from electra_jax.train.masking import SAMPLINGS


class SetupError(errors.Error, ValueError):
  """A pretraining config that cannot be set up (a field out of range, settings that do not go together)."""


def model_configs(config: Any, vocab_size: int) -> tuple[modeling.ElectraConfig, modeling.ElectraConfig | None]:
  """(discriminator or MLM config, generator config or None) from config.model / config.generator."""
  m = config.model
  if int(m.get("vocab_size", 0) or 0) not in (0, vocab_size):
    raise SetupError(f"config.model.vocab_size={m.vocab_size} but the vocab file has {vocab_size} tokens")
  heads = int(m.get("num_attention_heads", 0) or 0) or max(1, m.hidden_size // 64)
  objective = config.objective
  disc = modeling.ElectraConfig(
      vocab_size=vocab_size, embedding_size=int(m.embedding_size or m.hidden_size), hidden_size=int(m.hidden_size),
      num_hidden_layers=int(m.num_hidden_layers), num_attention_heads=heads,
      intermediate_size=int(m.get("intermediate_size", 0) or 4 * m.hidden_size),
      hidden_dropout_prob=float(m.hidden_dropout_prob),
      attention_probs_dropout_prob=float(m.attention_probs_dropout_prob),
      max_position_embeddings=int(m.max_position_embeddings), dtype=m.dtype, param_dtype=m.param_dtype,
      scan_layers=bool(m.scan_layers), remat_policy=m.remat_policy, kernels=m.get("kernels", "auto"),
      architectures=(("ElectraForMaskedLM",) if objective in ("mlm", "replace_mlm", "all_tokens_mlm") else
                     ("ElectraForPreTraining",)))
  if disc.max_position_embeddings < config.max_seq_length:
    raise SetupError(f"max_seq_length={config.max_seq_length} exceeds config.model.max_position_embeddings="
                     f"{disc.max_position_embeddings}")
  g = generator_options(config)
  if objective == "mlm" or g["sampling"] == "uniform":
    return disc, None
  fractions = (float(config.generator.hidden_fraction), float(config.generator.layers_fraction))
  if g["weight_sharing"] == "all" or g["two_stage"] > 0:
    what = "generator.weight_sharing='all'" if g["weight_sharing"] == "all" else "two_stage"
    if fractions != (1.0, 1.0):
      raise SetupError(f"{what} needs the generator the discriminator's size: set generator.hidden_fraction=1 and "
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
    raise SetupError(f"config.generator.sampling={out['sampling']!r}: must be one of {SAMPLINGS}")
  if out["weight_sharing"] not in modeling.WEIGHT_SHARING:
    raise SetupError(f"config.generator.weight_sharing={out['weight_sharing']!r}: must be one of "
                     f"{modeling.WEIGHT_SHARING}")
  objective = config.objective
  if out["sampling"] == "uniform" and objective not in ("electra", "electra_15", "replace_mlm", "all_tokens_mlm"):
    raise SetupError(f"config.generator.sampling='uniform' with objective {objective!r}: uniform replacements need an "
                     f"objective that samples (electra, electra_15, replace_mlm, all_tokens_mlm)")
  if out["weight_sharing"] in ("all", "gdes") and objective == "electric":
    raise SetupError(f"config.generator.weight_sharing={out['weight_sharing']!r} with objective 'electric': the "
                     f"two-tower generator shares only by 'embeddings' or not at all ('none')")
  if out["two_stage"] < 0:
    raise SetupError(f"config.two_stage={out['two_stage']}: must be >= 0 (0 = off)")
  if out["two_stage"] > 0:
    if objective != "electra" or out["sampling"] != "model" or out["weight_sharing"] not in ("embeddings", "none"):
      raise SetupError("config.two_stage needs objective 'electra', generator.sampling='model' and "
                       "generator.weight_sharing 'embeddings' or 'none'")
    if out["two_stage"] >= int(config.num_train_steps):
      raise SetupError(f"config.two_stage={out['two_stage']} leaves no discriminator steps "
                       f"(num_train_steps={config.num_train_steps})")
  return out
