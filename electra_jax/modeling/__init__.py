"""ELECTRA as Flax NNX modules: the encoder, every Hugging Face head, and the joint pretraining model."""

from electra_jax.modeling.config import ConfigError, ElectraConfig, generator_config
from electra_jax.modeling.models import (HEADS, BaseModelOutput, ElectraForCausalLM, ElectraForMaskedLM,
                                         ElectraForMultipleChoice, ElectraForPreTraining,
                                         ElectraForQuestionAnswering, ElectraForSequenceClassification,
                                         ElectraForTokenClassification, ElectraModel, LogitsOutput,
                                         QuestionAnsweringOutput, count_params, head_class)
from electra_jax.modeling.pretraining import WEIGHT_SHARING, ElectraPretrainingModel, TwoTowerClozeGenerator

__all__ = [
    "ConfigError", "ElectraConfig", "generator_config", "HEADS", "head_class", "count_params",
    "BaseModelOutput", "LogitsOutput", "QuestionAnsweringOutput",
    "ElectraModel", "ElectraForPreTraining", "ElectraForMaskedLM", "ElectraForCausalLM",
    "ElectraForSequenceClassification", "ElectraForMultipleChoice", "ElectraForTokenClassification",
    "ElectraForQuestionAnswering", "ElectraPretrainingModel", "TwoTowerClozeGenerator", "WEIGHT_SHARING",
]
