"""The original ELECTRA fine-tuning heads (google-research/electra), as Flax NNX modules on the same ElectraModel body.

    model = OriginalElectraForSequenceClassification(config, rngs=nnx.Rngs(0))      # GLUE; num_labels=1: regression
    out = model(input_ids, attention_mask, token_type_ids, labels=y, dropout_rng=key)  # out.logits [B, num_labels]

    qa = OriginalElectraForQuestionAnswering(config, beam_size=20, answerable_classifier=True, rngs=nnx.Rngs(0))
    out = qa(ids, mask, types, start_positions=s, end_positions=e, is_impossible=imp, dropout_rng=key)   # training
    out = qa(ids, mask, types)    # inference: out.start_top_index [B, K], out.end_top_index [B, K, K], log-probs too

They differ from Hugging Face's heads (electra_jax.modeling.models) as the original code differs:
  * GLUE: [CLS] -> dropout (training only) -> one dense layer (`classifier`); softmax CE, or squared error when
    num_labels == 1 (STS-B).
  * SQuAD (XLNet-style joint head, no head dropout): start logits = dense(1) on every token, masked to the context
    (token_type 1, attention 1) and [CLS]; end logits from dense(512, gelu) over concat(start token's hidden, token's
    hidden) -> dense(1), masked the same way. Training conditions the end on the gold start; inference takes the
    top-`beam_size` starts by log-probability and, for each, the top-`beam_size` ends. Loss = (start CE + end CE) / 2.
  * SQuAD 2.0 answerability: concat([CLS] hidden, sum_t softmax(start)_t hidden_t) -> dense(512, gelu) -> dense(1), a
    "no answer" logit trained with sigmoid CE against `is_impossible`, weighted `answerable_weight` (0.5) in the loss.
  * Head kernels start Glorot-uniform (TF1's `tf.layers.dense` default), biases zero.

The body is the `electra` attribute, as in every HF head, so encoder/embedding parameter paths (and with them
layer-wise LR decay and checkpoint loading) are the same for both head families.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from electra_jax import ops
from electra_jax.modeling.config import ConfigError, ElectraConfig
from electra_jax.modeling.layers import Dense, activation, split_rng
from electra_jax.modeling.models import ElectraModel, LogitsOutput, binary_cross_entropy, cross_entropy

QA_HIDDEN_SIZE = 512           # width of the original's "qa_hidden" and answerability layers
MASK_PENALTY = 1000.0          # the original adds 1000 * (mask - 1) to the logits of positions that cannot answer


def glorot_dense(in_features: int, out_features: int, axes: tuple[str, str], config: ElectraConfig, *,
                 rngs: nnx.Rngs) -> Dense:
  """A Dense layer whose kernel is Glorot-uniform (fan_in + fan_out of the full kernel) and bias zero."""
  layer = Dense(in_features, out_features, axes, config, rngs=rngs)
  init = jax.nn.initializers.glorot_uniform()
  layer.kernel.set_value(init(rngs.params(), (in_features, out_features), config.storage_dtype))
  return layer


class OriginalElectraForSequenceClassification(nnx.Module):
  """GLUE head of the original: h[:, 0] -> dropout -> classifier. logits [B, num_labels] (num_labels=1: regression)."""

  def __init__(self, config: ElectraConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.electra = ElectraModel(config, rngs=rngs)
    self.classifier = glorot_dense(config.hidden_size, config.num_labels, ("embed", "classes"), config, rngs=rngs)
    self.rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *, labels=None,
               dropout_rng=None) -> LogitsOutput:
    r_body, r_head = split_rng(dropout_rng, 2)
    # only [CLS] is read: the last layer is computed there alone (last_hidden_state [B, 1, H])
    h = self.electra.encode(input_ids, attention_mask, token_type_ids, position_ids, r_body,
                             last_layer_positions=1)
    x = ops.dropout(h[:, 0], self.rate, r_head, kernels=self.config.kernels)
    logits = self.classifier(x).astype(jnp.float32)
    loss = None
    if labels is not None:
      labels = jnp.asarray(labels)
      if self.config.num_labels == 1:
        loss = jnp.mean(jnp.square(logits[:, 0] - labels.reshape(-1).astype(jnp.float32)))
      else:
        loss = cross_entropy(logits, labels.reshape(-1), ignore_index=None)
    return LogitsOutput(logits=logits, loss=loss, last_hidden_state=h)


@struct.dataclass
class OriginalQAOutput:
  """Outputs of OriginalElectraForQuestionAnswering.

  start_logits, end_logits: [B, L], masked (-1000 off the context and [CLS]). end_logits are conditioned on the gold
    start in training and on the best start (beam rank 0) at inference.
  answerable_logit: [B], the "no answer" logit (zeros without the answerability classifier); larger = more likely
    unanswerable; ELECTRA writes it as the null odds.
  start_top_log_probs, start_top_index: [B, K]; end_top_log_probs, end_top_index: [B, K, K] (inference only).
  """
  start_logits: jax.Array
  end_logits: jax.Array
  answerable_logit: jax.Array
  loss: jax.Array | None = None
  start_top_log_probs: jax.Array | None = None
  start_top_index: jax.Array | None = None
  end_top_log_probs: jax.Array | None = None
  end_top_index: jax.Array | None = None
  last_hidden_state: jax.Array | None = None


def answer_mask(attention_mask: jax.Array, token_type_ids: jax.Array) -> jax.Array:
  """1.0 where a span may start or end: context tokens (token type 1 and not padding) and position 0 ([CLS])."""
  m = attention_mask.astype(jnp.float32) * token_type_ids.astype(jnp.float32)
  return m.at[:, 0].set(1.0)


class OriginalElectraForQuestionAnswering(nnx.Module):
  """The original ELECTRA SQuAD head: joint start/end prediction with beam search and an answerability classifier."""

  def __init__(self, config: ElectraConfig, *, beam_size: int = 20, answerable_classifier: bool = True,
               answerable_weight: float = 0.5, rngs: nnx.Rngs):
    if beam_size < 1:
      raise ConfigError(f"beam_size={beam_size}: must be at least 1")
    h = config.hidden_size
    self.config = config
    self.electra = ElectraModel(config, rngs=rngs)
    self.start_logits = glorot_dense(h, 1, ("embed", "classes"), config, rngs=rngs)
    self.qa_hidden = glorot_dense(2 * h, QA_HIDDEN_SIZE, ("embed", "mlp"), config, rngs=rngs)
    self.end_logits = glorot_dense(QA_HIDDEN_SIZE, 1, ("mlp", "classes"), config, rngs=rngs)
    self.answerable_hidden = (glorot_dense(2 * h, QA_HIDDEN_SIZE, ("embed", "mlp"), config, rngs=rngs)
                              if answerable_classifier else None)
    self.answerable_logit = (glorot_dense(QA_HIDDEN_SIZE, 1, ("mlp", "classes"), config, rngs=rngs)
                             if answerable_classifier else None)
    self.beam_size = beam_size
    self.answerable_weight = answerable_weight
    self.act = activation("gelu", config.kernels)

  def _end_logits(self, start_repr: jax.Array, h: jax.Array, penalty: jax.Array) -> jax.Array:
    """End logits for given start representations.

    start_repr [B, ..., H] (one start per leading index), h [B, L, H] -> [B, ..., L]. dense(concat(s, h_t)) is
    computed as s @ W[:H] + h_t @ W[H:] + b, which is the same layer without materialising the concatenation.
    """
    hidden = self.config.hidden_size
    dt = self.qa_hidden.dtype
    kernel = self.qa_hidden.kernel[...].astype(dt)
    from_start = jnp.dot(start_repr.astype(dt), kernel[:hidden])                    # [B, ..., 512]
    from_token = jnp.dot(h.astype(dt), kernel[hidden:]) + self.qa_hidden.bias[...].astype(dt)   # [B, L, 512]
    extra = from_start.ndim - 2
    from_token = from_token.reshape(from_token.shape[:1] + (1,) * extra + from_token.shape[1:])
    x = self.act(from_start[..., None, :] + from_token)                              # [B, ..., L, 512]
    logits = self.end_logits(x)[..., 0].astype(jnp.float32)
    return logits + penalty.reshape(penalty.shape[:1] + (1,) * extra + penalty.shape[1:])

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               start_positions=None, end_positions=None, is_impossible=None, dropout_rng=None) -> OriginalQAOutput:
    input_ids = jnp.asarray(input_ids)
    b, length = input_ids.shape
    attention_mask = jnp.ones((b, length), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
    token_type_ids = jnp.zeros((b, length), jnp.int32) if token_type_ids is None else jnp.asarray(token_type_ids)
    h = self.electra(input_ids, attention_mask, token_type_ids, position_ids, dropout_rng=dropout_rng
                     ).last_hidden_state
    penalty = MASK_PENALTY * (answer_mask(attention_mask, token_type_ids) - 1.0)          # [B, L]
    start_logits = self.start_logits(h)[..., 0].astype(jnp.float32) + penalty
    start_log_probs = jax.nn.log_softmax(start_logits, axis=-1)

    answerable = jnp.zeros((b,), jnp.float32)
    if self.answerable_logit is not None:
      start_p = jax.nn.softmax(start_logits, axis=-1)
      start_feature = jnp.einsum("bl,blh->bh", start_p, h.astype(jnp.float32)).astype(h.dtype)
      x = self.act(self.answerable_hidden(jnp.concatenate([h[:, 0], start_feature], axis=-1)))
      answerable = self.answerable_logit(x)[..., 0].astype(jnp.float32)

    if start_positions is not None:  # training: the end is conditioned on the gold start
      start_positions = jnp.asarray(start_positions).reshape(-1).astype(jnp.int32)
      start_repr = jnp.take_along_axis(h, start_positions[:, None, None], axis=1)[:, 0]   # [B, H]
      end_logits = self._end_logits(start_repr, h, penalty)
      loss = None
      if end_positions is not None:
        end_positions = jnp.asarray(end_positions).reshape(-1).astype(jnp.int32)
        loss = (cross_entropy(start_logits, start_positions, ignore_index=None)
                + cross_entropy(end_logits, end_positions, ignore_index=None)) / 2
        if self.answerable_logit is not None:
          if is_impossible is None:
            raise ValueError("the answerability classifier needs is_impossible labels to compute the loss")
          loss = loss + self.answerable_weight * binary_cross_entropy(answerable, jnp.asarray(is_impossible))
      return OriginalQAOutput(start_logits=start_logits, end_logits=end_logits, answerable_logit=answerable,
                              loss=loss, last_hidden_state=h)

    k = min(self.beam_size, length)
    start_top_log_probs, start_top_index = jax.lax.top_k(start_log_probs, k)           # [B, K]
    start_repr = jnp.take_along_axis(h, start_top_index[..., None], axis=1)            # [B, K, H]
    beam_end_logits = self._end_logits(start_repr, h, penalty)                          # [B, K, L]
    end_top_log_probs, end_top_index = jax.lax.top_k(jax.nn.log_softmax(beam_end_logits, axis=-1), k)   # [B, K, K]
    return OriginalQAOutput(start_logits=start_logits, end_logits=beam_end_logits[:, 0],
                            answerable_logit=answerable, start_top_log_probs=start_top_log_probs,
                            start_top_index=start_top_index, end_top_log_probs=end_top_log_probs,
                            end_top_index=end_top_index, last_hidden_state=h)


def beam_candidates(start_top_log_probs, start_top_index, end_top_log_probs, end_top_index
                    ) -> list[list[tuple[int, int, float]]]:
  """Per-feature (start, end, score) triples from the beam outputs, score = start log-prob + end log-prob.

  Feed them to `electra_jax.data.squad.decode_candidates`, which drops invalid spans (outside the context, end before
  start, too long, start not in its max-context window), as the original's postprocessing does.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  slp, sti = np.asarray(start_top_log_probs), np.asarray(start_top_index)
  elp, eti = np.asarray(end_top_log_probs), np.asarray(end_top_index)
  out = []
  for f in range(sti.shape[0]):
    cands = []
    for i in range(sti.shape[1]):
      for j in range(eti.shape[2]):
        cands.append((int(sti[f, i]), int(eti[f, i, j]), float(slp[f, i] + elp[f, i, j])))
    out.append(cands)
  return out


# The original heads by checkpoint kind (modeling.head_class looks here after the HF heads).
ORIGINAL_HEADS = {
    "OriginalElectraForSequenceClassification": OriginalElectraForSequenceClassification,
    "OriginalElectraForQuestionAnswering": OriginalElectraForQuestionAnswering,
}
