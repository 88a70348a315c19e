"""The one table between this project's parameter paths and Hugging Face PyTorch state-dict keys.

Both directions read the same rules. A rule names a JAX path (as in `nnx.to_pure_dict(nnx.state(model))`, joined by
"/"), an HF key, and a transform: COPY, or LINEAR (torch Linear weight [out, in] <-> our kernel [in, out]). An HF key
with "{i}" is per layer: the JAX array carries those layers stacked on its leading axis.
"""

from __future__ import annotations

import dataclasses

import numpy as np

COPY = "copy"
LINEAR = "linear"


@dataclasses.dataclass(frozen=True)
class Rule:
  jax: str
  hf: str
  transform: str = COPY

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(x, -1, -2)) if self.transform == LINEAR else x

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.swapaxes(x, -1, -2)) if self.transform == LINEAR else x

  def hf_shape(self, jax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape for one (per-layer) slice of a JAX parameter of `jax_shape`."""
    shape = tuple(jax_shape[1:]) if self.per_layer else tuple(jax_shape)
    return shape[:-2] + (shape[-1], shape[-2]) if self.transform == LINEAR else shape


def _dense(jax: str, hf: str) -> list[Rule]:
  return [Rule(f"{jax}/kernel", f"{hf}.weight", LINEAR), Rule(f"{jax}/bias", f"{hf}.bias")]


def _norm(jax: str, hf: str) -> list[Rule]:
  return [Rule(f"{jax}/scale", f"{hf}.weight"), Rule(f"{jax}/bias", f"{hf}.bias")]


_LAYER = "encoder/layers"
_HF_LAYER = "encoder.layer.{i}"

BODY: list[Rule] = [
    Rule("embeddings/word_embeddings", "embeddings.word_embeddings.weight"),
    Rule("embeddings/position_embeddings", "embeddings.position_embeddings.weight"),
    Rule("embeddings/token_type_embeddings", "embeddings.token_type_embeddings.weight"),
    *_norm("embeddings/layer_norm", "embeddings.LayerNorm"),
    *_dense("embeddings_project", "embeddings_project"),
    *_dense(f"{_LAYER}/query", f"{_HF_LAYER}.attention.self.query"),
    *_dense(f"{_LAYER}/key", f"{_HF_LAYER}.attention.self.key"),
    *_dense(f"{_LAYER}/value", f"{_HF_LAYER}.attention.self.value"),
    *_dense(f"{_LAYER}/attention_output", f"{_HF_LAYER}.attention.output.dense"),
    *_norm(f"{_LAYER}/attention_norm", f"{_HF_LAYER}.attention.output.LayerNorm"),
    *_dense(f"{_LAYER}/intermediate", f"{_HF_LAYER}.intermediate.dense"),
    *_dense(f"{_LAYER}/output", f"{_HF_LAYER}.output.dense"),
    *_norm(f"{_LAYER}/output_norm", f"{_HF_LAYER}.output.LayerNorm"),
]

_LM_HEAD = [
    *_dense("generator_predictions/dense", "generator_predictions.dense"),
    *_norm("generator_predictions/layer_norm", "generator_predictions.LayerNorm"),
    Rule("generator_lm_head/bias", "generator_lm_head.bias"),
    Rule("generator_lm_head/kernel", "generator_lm_head.weight", LINEAR),   # only when tie_word_embeddings=False
]

HEAD_RULES: dict[str, list[Rule]] = {
    "ElectraModel": [],
    "ElectraForPreTraining": [*_dense("discriminator_predictions/dense", "discriminator_predictions.dense"),
                              *_dense("discriminator_predictions/dense_prediction",
                                      "discriminator_predictions.dense_prediction")],
    "ElectraForMaskedLM": _LM_HEAD,
    "ElectraForCausalLM": _LM_HEAD,
    "ElectraForSequenceClassification": [*_dense("classifier/dense", "classifier.dense"),
                                         *_dense("classifier/out_proj", "classifier.out_proj")],
    "ElectraForMultipleChoice": [*_dense("sequence_summary/summary", "sequence_summary.summary"),
                                 *_dense("classifier", "classifier")],
    "ElectraForTokenClassification": _dense("classifier", "classifier"),
    "ElectraForQuestionAnswering": _dense("qa_outputs", "qa_outputs"),
}

# The tied LM-head weight: HF may or may not store it; when it does it must equal the word embeddings.
TIED_LM_WEIGHT = "generator_lm_head.weight"
# Buffers that older HF checkpoints saved; they carry no parameters.
IGNORED_HF_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


def rules_for(head: str) -> list[Rule]:
  """All rules for a head class: the body under electra/ (electra. in HF) plus the head's own."""
  if head not in HEAD_RULES:
    raise ValueError(f"no conversion rules for head {head!r}; known: {sorted(HEAD_RULES)}")
  if head == "ElectraModel":
    return list(BODY)
  body = [Rule(f"electra/{r.jax}", f"electra.{r.hf}", r.transform) for r in BODY]
  return body + HEAD_RULES[head]


def body_prefix(head: str) -> str:
  return "" if head == "ElectraModel" else "electra."
