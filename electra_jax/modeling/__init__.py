"""ELECTRA as Flax NNX modules: the encoder, every Hugging Face head, and the joint pretraining model."""

from __future__ import annotations

from flax import nnx

from electra_jax.modeling.config import ConfigError, ElectraConfig, generator_config
from electra_jax.modeling.models import (HEADS, BaseModelOutput, ElectraForCausalLM, ElectraForMaskedLM,
                                         ElectraForMultipleChoice, ElectraForPreTraining,
                                         ElectraForQuestionAnswering, ElectraForSequenceClassification,
                                         ElectraForTokenClassification, ElectraModel, LogitsOutput,
                                         QuestionAnsweringOutput, count_params)
from electra_jax.modeling.original_heads import ORIGINAL_HEADS
from electra_jax.modeling.pretraining import (WEIGHT_SHARING, ElectraPretrainingModel, TwoTowerClozeGenerator,
                                             effective_params, gdes_params)

__all__ = [
    "ConfigError", "ElectraConfig", "generator_config", "HEADS", "head_class", "count_params",
    "BaseModelOutput", "LogitsOutput", "QuestionAnsweringOutput",
    "ElectraModel", "ElectraForPreTraining", "ElectraForMaskedLM", "ElectraForCausalLM",
    "ElectraForSequenceClassification", "ElectraForMultipleChoice", "ElectraForTokenClassification",
    "ElectraForQuestionAnswering", "ElectraPretrainingModel", "TwoTowerClozeGenerator", "WEIGHT_SHARING",
    "effective_params", "gdes_params",
]


def head_class(name: str) -> type[nnx.Module]:
  """A head class by checkpoint kind: an HF head (models.HEADS) or an original ELECTRA head (original_heads)."""
  if name in HEADS:
    return HEADS[name]
  if name in ORIGINAL_HEADS:
    return ORIGINAL_HEADS[name]
  raise ConfigError(f"unknown ELECTRA head {name!r}; known heads: {sorted(HEADS) + sorted(ORIGINAL_HEADS)}")
