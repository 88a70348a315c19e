"""The joint pretraining model: a generator (or none) and a discriminator, with the original code's weight sharing.

    disc = ElectraConfig(...)                       # e.g. ELECTRA-Small: E=128, H=256, 12 layers
    gen = generator_config(disc, hidden_fraction=0.25)
    model = ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(0))                   # ELECTRA as the paper trains it
    g = model.generator(masked_ids, mask, types, masked_positions=pos, dropout_rng=k1).logits   # [B, P, V]
    d = model.discriminator(corrupted_ids, mask, types, dropout_rng=k2).logits                  # [B, L]

Options (each maps to a switch of google-research/electra's configure_pretraining.py or to a paper ablation):
  weight_sharing  "embeddings" (default; untied_generator_embeddings=False): the generator reuses the discriminator's
                  embedding module (word, position and token-type tables and the embedding LayerNorm), so its LM head
                  is tied to the shared word embeddings; it keeps its own embedding projection.
                  "none" (untied_generator_embeddings=True): the generator has embeddings of its own.
                  "gdes": DeBERTa-v3's Gradient-Disentangled Embedding Sharing. The generator owns the embeddings
                  (E_G, under generator/electra/embeddings); the discriminator's embedding parameters hold a
                  difference E_delta, initialised to zero, and the discriminator runs on stop_gradient(E_G) +
                  E_delta (`gdes_params`): the MLM loss alone trains E_G, the discriminator's loss alone E_delta.
                  It covers what "embeddings" shares (word, position and token-type tables and the embedding
                  LayerNorm), so the two modes differ only in where the gradients go; DeBERTa-v3 routes its word
                  and absolute-position tables this way (it has no token types, and keeps separate LayerNorms).
                  The exported discriminator (`hf_parts`) holds E_G + E_delta.
                  "all" (untied_generator=False): generator and discriminator are the same size and share the whole
                  encoder (embeddings, projection, layers); only the two heads are separate.
  discriminator_head  "rtd": ElectraForPreTraining (replaced-token detection; objectives electra, electra_15,
                  electric). "mlm": an ElectraForMaskedLM of the discriminator's size (replace_mlm). "mlm_copy": the
                  same plus `copy_predictions`, the sigmoid copy-probability head of the paper's All-Tokens MLM
                  (the discriminator head's shape: dense H -> H, activation, dense H -> 1).
  generator_kind  "mlm": ElectraForMaskedLM; "two_tower": Electric's cloze generator (TwoTowerClozeGenerator);
                  generator_config None: no generator network (the uniform-generator baseline).
NNX shares module objects, so a shared parameter exists once in the state (under discriminator/...) and receives the
gradients of both networks. Export: `discriminator` and an "mlm" `generator` are HF heads as they stand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from electra_jax.modeling.config import ConfigError, ElectraConfig
from electra_jax import ops
from electra_jax.modeling.layers import split_rng
from electra_jax.modeling.models import (ElectraDiscriminatorPredictions, ElectraForMaskedLM, ElectraForPreTraining,
                                         ElectraGeneratorPredictions, ElectraModel, TiedLMBias)

WEIGHT_SHARING = ("embeddings", "none", "all", "gdes")
DISCRIMINATOR_HEADS = ("rtd", "mlm", "mlm_copy")
GENERATOR_KINDS = ("mlm", "two_tower")
_ARCH_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size")


class TwoTowerClozeGenerator(nnx.Module):
  """Electric's noise distribution q(x_t | x_{\\t}): a left-to-right and a right-to-left transformer whose states
  around each position are joined, as google-research/electra run_pretraining.py TwoTowerClozeTransformer:

    h_t = [ltr_{t-1}; rtl_{t+1}]  ->  dense(2 H_g -> E, gelu) -> LayerNorm -> tied word embeddings + output bias

  Both towers see the unmasked input (position t's prediction never sees token t). The right-to-left tower is the
  causal encoder run on the reversed sequence (with the real position ids): the same function as the original's
  upper-triangular attention mask. As the original `roll`, the shifts wrap around: position 0 gets the last
  position's left-to-right state and the last position the first one's right-to-left state (both are special
  tokens, outside the cloze loss).
  """

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    tower = config.replace(is_decoder=True)
    self.config = config
    self.ltr = ElectraModel(tower, rngs=rngs)
    self.rtl = ElectraModel(tower, rngs=rngs)
    joined = config.replace(hidden_size=2 * config.hidden_size, intermediate_size=2 * config.intermediate_size)
    self.cloze_predictions = ElectraGeneratorPredictions(joined, rngs=rngs)
    self.cloze_lm_head = TiedLMBias(config)

  def __call__(self, input_ids, attention_mask, token_type_ids, *, dropout_rng=None) -> jax.Array:
    """Vocabulary logits [B, L, V] (float32) of every position given all the others."""
    b, length = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    r_ltr, r_rtl = split_rng(dropout_rng, 2)
    ltr = self.ltr(input_ids, attention_mask, token_type_ids, positions, dropout_rng=r_ltr).last_hidden_state
    flip = lambda x: jnp.flip(x, axis=1)  # noqa: E731
    rtl = flip(self.rtl(flip(input_ids), flip(attention_mask), flip(token_type_ids), flip(positions),
                        dropout_rng=r_rtl).last_hidden_state)
    h = jnp.concatenate([jnp.roll(ltr, 1, axis=1), jnp.roll(rtl, -1, axis=1)], axis=-1)
    x = self.cloze_predictions(h)
    dtype = self.config.compute_dtype
    table = self.ltr.embeddings.word_embeddings[...].astype(dtype)
    logits = ops.tied_logits(x.astype(dtype).reshape(-1, x.shape[-1]), table,
                             self.cloze_lm_head.bias[...].astype(dtype), kernels=self.config.kernels)
    return logits.reshape(b, length, -1).astype(jnp.float32)


class ElectraPretrainingModel(nnx.Module):
  """discriminator (see discriminator_head), generator (see generator_kind; None without a generator config)."""

  def __init__(self, discriminator_config: ElectraConfig, generator_config: ElectraConfig | None, *,
               rngs: nnx.Rngs, weight_sharing: str = "embeddings", discriminator_head: str = "rtd",
               generator_kind: str = "mlm"):
    d, g = discriminator_config, generator_config
    if weight_sharing not in WEIGHT_SHARING:
      raise ConfigError(f"weight_sharing={weight_sharing!r}: must be one of {WEIGHT_SHARING}")
    if discriminator_head not in DISCRIMINATOR_HEADS:
      raise ConfigError(f"discriminator_head={discriminator_head!r}: must be one of {DISCRIMINATOR_HEADS}")
    if generator_kind not in GENERATOR_KINDS:
      raise ConfigError(f"generator_kind={generator_kind!r}: must be one of {GENERATOR_KINDS}")
    self.weight_sharing = weight_sharing
    self.discriminator_head = discriminator_head
    self.generator_kind = generator_kind
    if g is not None:
      _check_generator(d, g, weight_sharing, generator_kind)
    self.discriminator = (ElectraForPreTraining(d, rngs=rngs) if discriminator_head == "rtd" else
                          ElectraForMaskedLM(d, rngs=rngs))
    self.copy_predictions = (ElectraDiscriminatorPredictions(d, rngs=rngs) if discriminator_head == "mlm_copy"
                             else None)
    if g is None:
      self.generator = None
    elif generator_kind == "two_tower":
      self.generator = TwoTowerClozeGenerator(g, rngs=rngs)
      if weight_sharing == "embeddings":
        self.generator.ltr.embeddings = self.discriminator.electra.embeddings
        self.generator.rtl.embeddings = self.discriminator.electra.embeddings
    else:
      self.generator = ElectraForMaskedLM(g, rngs=rngs)
      if weight_sharing == "embeddings":
        self.generator.electra.embeddings = self.discriminator.electra.embeddings
      elif weight_sharing == "all":
        self.generator.electra = self.discriminator.electra
      elif weight_sharing == "gdes":   # the discriminator's embedding parameters are E_delta: zero at the start
        for _, param in nnx.iter_graph(self.discriminator.electra.embeddings):
          if isinstance(param, nnx.Param):
            param[...] = jnp.zeros_like(param[...])

  def hf_parts(self) -> dict[str, nnx.Module]:
    """{"discriminator": ..., "generator": ...}: the networks that are Hugging Face heads as they stand (not
    Electric's two towers; All-Tokens MLM's copy head stays behind). With weight_sharing "all" both hold the shared
    encoder."""
    parts = {"discriminator": self.discriminator}
    if self.weight_sharing == "gdes" and self.generator is not None:   # E_G + E_delta, in a copy
      disc = nnx.clone(self.discriminator)
      state = nnx.state(disc, nnx.Param)
      folded = gdes_params({"discriminator": nnx.to_pure_dict(state),
                            "generator": nnx.to_pure_dict(nnx.state(self.generator, nnx.Param))})
      nnx.replace_by_pure_dict(state, folded["discriminator"])
      nnx.update(disc, state)
      parts["discriminator"] = disc
    if isinstance(self.generator, ElectraForMaskedLM):
      parts["generator"] = self.generator
    return parts

  @property
  def options(self) -> dict[str, str]:
    """The constructor's options (what a checkpoint's model_config records to rebuild this model)."""
    return {"weight_sharing": self.weight_sharing, "discriminator_head": self.discriminator_head,
            "generator_kind": self.generator_kind}


def gdes_params(params: Mapping[str, Any], stop_gradient: bool = True) -> dict[str, Any]:
  """The parameters as the networks of weight_sharing "gdes" use them: every leaf of
  discriminator/electra/embeddings (E_delta) becomes stop_gradient(E_G) + E_delta, E_G the same leaf under
  generator/electra/embeddings. A pure function of nested dicts; the training step merges its result, export and
  fine-tuning read the discriminator from it (stop_gradient=False there: nothing is differentiated)."""
  sg = jax.lax.stop_gradient if stop_gradient else (lambda x: x)
  disc, gen = params["discriminator"], params["generator"]
  emb = jax.tree.map(lambda d, g: sg(g).astype(d.dtype) + d, disc["electra"]["embeddings"],
                     gen["electra"]["embeddings"])
  disc = {**disc, "electra": {**disc["electra"], "embeddings": emb}}
  return {**params, "discriminator": disc}


def effective_params(params: Mapping[str, Any], options: Mapping[str, Any] | None) -> Mapping[str, Any]:
  """A pretraining checkpoint's params with each network's effective weights (gdes folded; others as they are);
  options: the model_config's "options" (ElectraPretrainingModel.options)."""
  if (options or {}).get("weight_sharing") == "gdes" and params.get("generator") is not None:
    return gdes_params(params, stop_gradient=False)
  return params


def _check_generator(d: ElectraConfig, g: ElectraConfig, weight_sharing: str, generator_kind: str) -> None:
  if weight_sharing != "none":
    for field in ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size", "pad_token_id"):
      if getattr(d, field) != getattr(g, field):
        raise ConfigError(f"generator {field}={getattr(g, field)} differs from the discriminator's "
                          f"{getattr(d, field)}; shared embeddings need them equal")
  if not g.tie_word_embeddings:
    raise ConfigError("generator tie_word_embeddings=False: the ELECTRA generator's LM head is tied to the "
                      "word embeddings")
  if weight_sharing == "gdes" and generator_kind != "mlm":
    raise ConfigError("weight_sharing='gdes' needs generator_kind='mlm' (Electric's two towers own no one embedding "
                      "module to share)")
  if weight_sharing == "all":
    if generator_kind != "mlm":
      raise ConfigError("weight_sharing='all' needs generator_kind='mlm' (Electric's two towers are causal)")
    diff = [f for f in _ARCH_FIELDS if getattr(d, f) != getattr(g, f)]
    if diff:
      raise ConfigError(f"weight_sharing='all' needs the generator the discriminator's size; they differ in {diff} "
                        f"(set generator.hidden_fraction=1 and generator.layers_fraction=1)")
