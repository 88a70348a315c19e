"""The joint ELECTRA pretraining model: a small generator and a discriminator sharing their embeddings.

    disc = ElectraConfig(...)                       # e.g. ELECTRA-Small: E=128, H=256, 12 layers
    gen = generator_config(disc, hidden_fraction=0.25)
    model = ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(0))
    g = model.generator(masked_ids, mask, types, masked_positions=pos, dropout_rng=k1).logits   # [B, P, V]
    d = model.discriminator(corrupted_ids, mask, types, dropout_rng=k2).logits                  # [B, L]

As in the original ELECTRA, the generator reuses the discriminator's embedding module — word, position and token-type
tables and the embedding LayerNorm — and so its LM head is tied to the shared word embeddings. The generator keeps its
own embedding projection (embedding_size -> its hidden size). NNX shares the module object, so the parameters exist once
in the state (under discriminator/electra/embeddings) and receive the gradients of both networks.

share_encoder=True is the original's untied_generator=False: generator and discriminator are one encoder (the whole
discriminator/electra, same config) with two heads; only generator_predictions and generator_lm_head are the
generator's own.
"""

from __future__ import annotations

from flax import nnx

from electra_jax.modeling.config import ConfigError, ElectraConfig
from electra_jax.modeling.models import ElectraForMaskedLM, ElectraForPreTraining


class ElectraPretrainingModel(nnx.Module):
  """discriminator: ElectraForPreTraining; generator: ElectraForMaskedLM with the discriminator's embeddings."""

  def __init__(self, discriminator_config: ElectraConfig, generator_config: ElectraConfig, *, rngs: nnx.Rngs,
               share_encoder: bool = False):
    d, g = discriminator_config, generator_config
    if share_encoder and d.replace(architectures=None) != g.replace(architectures=None):
      raise ConfigError("share_encoder=True: the generator is the discriminator's encoder, so their configs must be "
                        "equal (apart from architectures)")
    for field in ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size", "pad_token_id"):
      if getattr(d, field) != getattr(g, field):
        raise ConfigError(f"generator {field}={getattr(g, field)} differs from the discriminator's "
                          f"{getattr(d, field)}; shared embeddings need them equal")
    if not g.tie_word_embeddings:
      raise ConfigError("generator tie_word_embeddings=False: the ELECTRA generator's LM head is tied to the shared "
                        "word embeddings")
    self.discriminator = ElectraForPreTraining(d, rngs=rngs)
    self.generator = ElectraForMaskedLM(g, rngs=rngs)
    if share_encoder:
      self.generator.electra = self.discriminator.electra
    else:
      self.generator.electra.embeddings = self.discriminator.electra.embeddings
    self.share_encoder = share_encoder
