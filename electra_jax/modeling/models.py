"""ElectraModel and every Hugging Face ELECTRA head, as Flax NNX modules with HF's semantics.

    model = ElectraForSequenceClassification(config, rngs=nnx.Rngs(0))
    out = model(input_ids, attention_mask=mask, token_type_ids=types)            # int arrays [B, L]
    out.logits                                                                   # [B, num_labels], float32
    out = model(input_ids, attention_mask=mask, labels=y, dropout_rng=key)       # training: dropout on, loss set

`dropout_rng=None` (the default) is inference: no dropout. Outputs are pytrees, so a jitted function may return them.
Parameter names follow HF's module names (snake_case), so the converter's table reads almost one-to-one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from electra_jax import ops, sharding
from electra_jax.modeling.config import ConfigError, ElectraConfig
from electra_jax.modeling.layers import (Dense, ElectraEmbeddings, ElectraEncoder, LayerNorm, _param, activation,
                                         split_rng)

IGNORE_INDEX = -100  # label value that the token-level losses skip, as in torch's CrossEntropyLoss


# ------------------------------------------------------------------------------------------------ outputs
@struct.dataclass
class BaseModelOutput:
  last_hidden_state: jax.Array


@struct.dataclass
class LogitsOutput:
  logits: jax.Array
  loss: jax.Array | None = None
  last_hidden_state: jax.Array | None = None


@struct.dataclass
class QuestionAnsweringOutput:
  start_logits: jax.Array
  end_logits: jax.Array
  loss: jax.Array | None = None
  last_hidden_state: jax.Array | None = None


# ------------------------------------------------------------------------------------------------ losses
def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int | None = IGNORE_INDEX) -> jax.Array:
  """Mean softmax cross-entropy over labels != ignore_index (torch CrossEntropyLoss semantics)."""
  logits = logits.astype(jnp.float32)
  valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
  return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def binary_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean sigmoid cross-entropy, optionally over positions where weights == 1."""
  losses = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
  if weights is None:
    return jnp.mean(losses)
  weights = weights.astype(jnp.float32)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# ------------------------------------------------------------------------------------------------ the encoder model
class ElectraModel(nnx.Module):
  """Embeddings (+ embedding_size -> hidden_size projection when they differ) and the post-LN encoder."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = ElectraEmbeddings(config, rngs=rngs)
    self.embeddings_project = (Dense(config.embedding_size, config.hidden_size, ("emb", "embed"), config, rngs=rngs)
                               if config.embedding_size != config.hidden_size else None)
    self.encoder = ElectraEncoder(config, rngs=rngs)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None, position_ids: jax.Array | None = None, *,
               dropout_rng: jax.Array | None = None) -> BaseModelOutput:
    """last_hidden_state [B, L, H], as transformers' ElectraModel."""
    return BaseModelOutput(last_hidden_state=self.encode(input_ids, attention_mask, token_type_ids, position_ids,
                                                          dropout_rng))

  def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, dropout_rng=None,
              last_layer_positions: int | None = None) -> jax.Array:
    """The last hidden state [B, L, H]; with `last_layer_positions=n` only at the first n positions, [B, n, H], the
    last layer computed there alone (its attention still reads every token) with the same values: for the heads of
    this package that read [CLS] only."""
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    b, length = input_ids.shape
    if length > self.config.max_position_embeddings:
      raise ConfigError(f"sequence length {length} exceeds max_position_embeddings="
                        f"{self.config.max_position_embeddings}")
    attention_mask = jnp.ones((b, length), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
    token_type_ids = jnp.zeros((b, length), jnp.int32) if token_type_ids is None else jnp.asarray(token_type_ids)
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
    r_emb, r_enc = split_rng(dropout_rng, 2)
    x = self.embeddings(input_ids, token_type_ids, position_ids, r_emb)
    if self.embeddings_project is not None:
      x = self.embeddings_project(x)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    key_mask = attention_mask.astype(bool)   # causal attention (is_decoder) is the layers' own flag
    return self.encoder(x, key_mask, r_enc, last_layer_positions)


class _Head(nnx.Module):
  """Shared plumbing: the `electra` body, the dropout rate of classifier heads, RNG splitting."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.electra = ElectraModel(config, rngs=rngs)

  @property
  def classifier_rate(self) -> float:
    c = self.config
    return c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob

  def _body(self, input_ids, attention_mask, token_type_ids, position_ids, dropout_rng, last_layer_positions=None):
    r_body, r_head = split_rng(dropout_rng, 2)
    h = self.electra.encode(input_ids, attention_mask, token_type_ids, position_ids, r_body,
                             last_layer_positions)
    return h, r_head


# ------------------------------------------------------------------------------------------------ pretraining heads
class ElectraDiscriminatorPredictions(nnx.Module):
  """dense(H -> H) -> hidden_act -> dense_prediction(H -> 1)."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    h = config.hidden_size
    self.dense = Dense(h, h, ("embed", "mlp"), config, rngs=rngs)
    self.dense_prediction = Dense(h, 1, ("mlp", "classes"), config, rngs=rngs)
    self.act = activation(config.hidden_act, config.kernels)

  def __call__(self, x):
    return self.dense_prediction(self.act(self.dense(x)))[..., 0].astype(jnp.float32)


class ElectraForPreTraining(_Head):
  """The discriminator: a per-token "replaced" logit [B, L]. Loss: BCE over attention_mask == 1."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.discriminator_predictions = ElectraDiscriminatorPredictions(config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *, labels=None,
               dropout_rng=None) -> LogitsOutput:
    h, _ = self._body(input_ids, attention_mask, token_type_ids, position_ids, dropout_rng)
    logits = self.discriminator_predictions(h)
    loss = None
    if labels is not None:
      loss = binary_cross_entropy(logits, labels, attention_mask)
    return LogitsOutput(logits=logits, loss=loss, last_hidden_state=h)


class ElectraGeneratorPredictions(nnx.Module):
  """dense(H -> E) -> gelu -> LayerNorm(E) (HF hard-codes exact GELU here)."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    self.dense = Dense(config.hidden_size, config.embedding_size, ("embed", "emb"), config, rngs=rngs)
    self.layer_norm = LayerNorm(config.embedding_size, config)
    self.act = activation("gelu", config.kernels)

  def __call__(self, x):
    return self.layer_norm(self.act(self.dense(x)))


class TiedLMBias(nnx.Module):
  """The LM head's own bias; its kernel is the (transposed) word-embedding table."""

  def __init__(self, config: ElectraConfig):
    self.bias = _param(jnp.zeros((config.vocab_size,), config.storage_dtype), ("vocab",))


class _LMHead(_Head):
  """generator_predictions + generator_lm_head (kernel tied to the word embeddings unless tie_word_embeddings=False)."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.generator_predictions = ElectraGeneratorPredictions(config, rngs=rngs)
    self.generator_lm_head = (TiedLMBias(config) if config.tie_word_embeddings else
                              Dense(config.embedding_size, config.vocab_size, ("emb", "vocab"), config, rngs=rngs))

  def lm_logits(self, h: jax.Array) -> jax.Array:
    x = self.generator_predictions(h)
    if isinstance(self.generator_lm_head, Dense):
      return self.generator_lm_head(x).astype(jnp.float32)
    dtype = self.config.compute_dtype
    table = self.electra.embeddings.word_embeddings[...].astype(dtype)
    bias = self.generator_lm_head.bias[...].astype(dtype)
    logits = ops.tied_logits(x.astype(dtype).reshape(-1, x.shape[-1]), table, bias, kernels=self.config.kernels)
    return logits.reshape(*x.shape[:-1], -1).astype(jnp.float32)


class ElectraForMaskedLM(_LMHead):
  """The generator: vocabulary logits. `masked_positions` [B, P] restricts the head to those positions."""

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *, labels=None,
               masked_positions=None, dropout_rng=None) -> LogitsOutput:
    h, _ = self._body(input_ids, attention_mask, token_type_ids, position_ids, dropout_rng)
    if masked_positions is not None:
      h = jnp.take_along_axis(h, masked_positions[..., None].astype(jnp.int32), axis=1)
    logits = self.lm_logits(h)
    loss = None if labels is None else cross_entropy(logits, labels)
    return LogitsOutput(logits=logits, loss=loss, last_hidden_state=h)


class ElectraForCausalLM(_LMHead):
  """Left-to-right LM with the generator head; causal attention when config.is_decoder (as in HF)."""

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *, labels=None,
               dropout_rng=None) -> LogitsOutput:
    h, _ = self._body(input_ids, attention_mask, token_type_ids, position_ids, dropout_rng)
    logits = self.lm_logits(h)
    loss = None if labels is None else cross_entropy(logits[:, :-1], labels[:, 1:])
    return LogitsOutput(logits=logits, loss=loss, last_hidden_state=h)


# ------------------------------------------------------------------------------------------------ task heads
class ElectraClassificationHead(nnx.Module):
  """HF's sentence head: h[:, 0] -> dropout -> dense -> gelu -> dropout -> out_proj."""

  def __init__(self, config: ElectraConfig, rate: float, *, rngs: nnx.Rngs):
    h = config.hidden_size
    self.dense = Dense(h, h, ("embed", "mlp"), config, rngs=rngs)
    self.out_proj = Dense(h, config.num_labels, ("mlp", "classes"), config, rngs=rngs)
    self.act = activation("gelu", config.kernels)
    self.rate = rate
    self.kernels = config.kernels

  def __call__(self, h, rng):
    r1, r2 = split_rng(rng, 2)
    x = ops.dropout(h[:, 0], self.rate, r1, kernels=self.kernels)
    x = ops.dropout(self.act(self.dense(x)), self.rate, r2, kernels=self.kernels)
    return self.out_proj(x).astype(jnp.float32)


def sequence_classification_loss(logits: jax.Array, labels: jax.Array, config: ElectraConfig) -> jax.Array:
  """HF's rule: regression (MSE) / single-label (CE) / multi-label (BCE) by problem_type or by labels."""
  problem = config.problem_type
  if problem is None:
    if config.num_labels == 1:
      problem = "regression"
    elif jnp.issubdtype(labels.dtype, jnp.integer):
      problem = "single_label_classification"
    else:
      problem = "multi_label_classification"
  if problem == "regression":
    if config.num_labels == 1:
      return jnp.mean(jnp.square(logits[..., 0] - labels.reshape(logits.shape[0]).astype(jnp.float32)))
    return jnp.mean(jnp.square(logits - labels.astype(jnp.float32)))
  if problem == "single_label_classification":
    return cross_entropy(logits, labels.reshape(-1))
  return binary_cross_entropy(logits, labels)


class ElectraForSequenceClassification(_Head):
  """Sentence(-pair) classification or regression: logits [B, num_labels].

  The head reads [CLS] only, so the last layer is computed at that position alone (`last_hidden_state` is [B, 1, H]).
  """

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.classifier = ElectraClassificationHead(config, self.classifier_rate, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *, labels=None,
               dropout_rng=None) -> LogitsOutput:
    h, r_head = self._body(input_ids, attention_mask, token_type_ids, position_ids, dropout_rng, 1)
    logits = self.classifier(h, r_head)
    loss = None if labels is None else sequence_classification_loss(logits, jnp.asarray(labels), self.config)
    return LogitsOutput(logits=logits, loss=loss, last_hidden_state=h)


class ElectraSequenceSummary(nnx.Module):
  """HF's SequenceSummary as ELECTRA configures it: pick a token -> (dropout) -> proj -> activation -> dropout."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    h = config.hidden_size
    out = config.num_labels if config.summary_proj_to_labels and config.num_labels > 0 else h
    self.summary = Dense(h, out, ("embed", "mlp"), config, rngs=rngs) if config.summary_use_proj else None
    self.act = activation(config.summary_activation, config.kernels) if config.summary_activation else (lambda x: x)
    self.summary_type = config.summary_type
    self.first_rate = config.summary_first_dropout
    self.last_rate = config.summary_last_dropout
    self.kernels = config.kernels

  def __call__(self, h, rng):
    r1, r2 = split_rng(rng, 2)
    if self.summary_type == "first":
      x = h[:, 0]
    elif self.summary_type == "last":
      x = h[:, -1]
    else:
      x = jnp.mean(h, axis=1)
    x = ops.dropout(x, self.first_rate, r1, kernels=self.kernels)
    if self.summary is not None:
      x = self.summary(x)
    return ops.dropout(self.act(x), self.last_rate, r2, kernels=self.kernels)


class ElectraForMultipleChoice(_Head):
  """Inputs [B, C, L] -> one score per choice: logits [B, C]. With summary_type "first" (ELECTRA's) the last layer is
  computed at [CLS] alone (`last_hidden_state` [B, C, 1, H])."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.sequence_summary = ElectraSequenceSummary(config, rngs=rngs)
    self.classifier = Dense(config.hidden_size, 1, ("mlp", "classes"), config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *, labels=None,
               dropout_rng=None) -> LogitsOutput:
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 3:
      raise ValueError(f"multiple choice input_ids must be [batch, choices, length], got shape {input_ids.shape}")
    b, c, length = input_ids.shape
    flat = lambda x: None if x is None else jnp.asarray(x).reshape(b * c, length)  # noqa: E731
    # a summary of the first token reads [CLS] only: the last layer is computed there alone
    first = 1 if self.sequence_summary.summary_type == "first" else None
    h, r_head = self._body(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                           dropout_rng, first)
    logits = self.classifier(self.sequence_summary(h, r_head)).astype(jnp.float32).reshape(b, c)
    loss = None if labels is None else cross_entropy(logits, jnp.asarray(labels), ignore_index=IGNORE_INDEX)
    return LogitsOutput(logits=logits, loss=loss, last_hidden_state=h.reshape(b, c, h.shape[1], -1))


class ElectraForTokenClassification(_Head):
  """Per-token labels: dropout -> linear. logits [B, L, num_labels]; loss skips labels == -100."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.classifier = Dense(config.hidden_size, config.num_labels, ("embed", "classes"), config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *, labels=None,
               dropout_rng=None) -> LogitsOutput:
    h, r_head = self._body(input_ids, attention_mask, token_type_ids, position_ids, dropout_rng)
    h_drop = ops.dropout(h, self.classifier_rate, r_head, kernels=self.config.kernels)
    logits = self.classifier(h_drop).astype(jnp.float32)
    loss = None if labels is None else cross_entropy(logits, jnp.asarray(labels))
    return LogitsOutput(logits=logits, loss=loss, last_hidden_state=h)


class ElectraForQuestionAnswering(_Head):
  """Extractive QA, HF's linear span head: start_logits and end_logits [B, L]."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.qa_outputs = Dense(config.hidden_size, config.num_labels, ("embed", "classes"), config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               start_positions=None, end_positions=None, dropout_rng=None) -> QuestionAnsweringOutput:
    h, _ = self._body(input_ids, attention_mask, token_type_ids, position_ids, dropout_rng)
    logits = self.qa_outputs(h).astype(jnp.float32)
    start, end = logits[..., 0], logits[..., 1]
    loss = None
    if start_positions is not None and end_positions is not None:
      length = start.shape[1]  # positions outside the input are ignored, as HF clamps them to `length`
      s = jnp.clip(jnp.asarray(start_positions).reshape(-1), 0, length)
      e = jnp.clip(jnp.asarray(end_positions).reshape(-1), 0, length)
      loss = (cross_entropy(start, s, ignore_index=length) + cross_entropy(end, e, ignore_index=length)) / 2
    return QuestionAnsweringOutput(start_logits=start, end_logits=end, loss=loss, last_hidden_state=h)


HEADS: dict[str, type[nnx.Module]] = {
    "ElectraModel": ElectraModel,
    "ElectraForPreTraining": ElectraForPreTraining,
    "ElectraForMaskedLM": ElectraForMaskedLM,
    "ElectraForCausalLM": ElectraForCausalLM,
    "ElectraForSequenceClassification": ElectraForSequenceClassification,
    "ElectraForMultipleChoice": ElectraForMultipleChoice,
    "ElectraForTokenClassification": ElectraForTokenClassification,
    "ElectraForQuestionAnswering": ElectraForQuestionAnswering,
}


def count_params(module: nnx.Module) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))

