"""The one table between the original ELECTRA's TensorFlow variable names and this project's parameter paths.

The original (google-research/electra, TF1) names its variables by variable scope:

    electra/embeddings/{word,position,token_type}_embeddings, electra/embeddings/LayerNorm/{gamma,beta}
    electra/embeddings_project/{kernel,bias}                      (only when embedding size != hidden size)
    electra/encoder/layer_N/attention/self/{query,key,value}/{kernel,bias}
    electra/encoder/layer_N/attention/output/dense/*, .../attention/output/LayerNorm/{gamma,beta}
    electra/encoder/layer_N/intermediate/dense/*, .../output/dense/*, .../output/LayerNorm/{gamma,beta}
    discriminator_predictions/dense/*, discriminator_predictions/dense_1/*      (dense -> gelu -> dense_1 [H, 1])
    generator_predictions/dense/*, generator_predictions/LayerNorm/*, generator_predictions/output_bias [V]
    task_specific/<task>/...                                       (fine-tuning heads, see TASK_HEADS)
    <variable>/adam_m, <variable>/adam_v, global_step              (AdamWeightDecayOptimizer slots, the step)

Generator layouts (run_pretraining.py):
  * "separate" (untied_generator=True, the default): a smaller generator under `generator/` (embeddings_project,
    encoder) that reads the discriminator's `electra/embeddings/` (shared, stored once); its LM head is tied to them.
  * "shared" (untied_generator=False): generator and discriminator are one network under `electra/`; only the two
    heads differ.
  * "untied_embeddings" (untied_generator_embeddings=True): the generator also has its own `generator/embeddings/`.
  * "discriminator": no generator head at all (a fine-tuned checkpoint, or a discriminator alone).
TensorFlow kernels are [in, out], as ours, so every tensor is copied as is; the per-layer `layer_N` tensors are
stacked on a leading [num_layers] axis.
"""

from __future__ import annotations

import dataclasses
import re

LAYOUTS = ("separate", "shared", "untied_embeddings", "discriminator")
SLOT_SUFFIXES = ("/adam_m", "/adam_v")
GLOBAL_STEP = "global_step"


@dataclasses.dataclass(frozen=True)
class TFRule:
  """Our path (relative to a network or encoder root) <- a TF name (relative to a TF scope); "{i}" is per layer."""
  jax: str
  tf: str

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.tf


def _dense(jax: str, tf: str) -> list[TFRule]:
  return [TFRule(f"{jax}/kernel", f"{tf}/kernel"), TFRule(f"{jax}/bias", f"{tf}/bias")]


def _norm(jax: str, tf: str) -> list[TFRule]:
  return [TFRule(f"{jax}/scale", f"{tf}/gamma"), TFRule(f"{jax}/bias", f"{tf}/beta")]


_L = "encoder/layers"
_TL = "encoder/layer_{i}"

# Under our ".../electra/" <- under a TF scope ("electra/" or "generator/").
EMBEDDINGS: list[TFRule] = [
    TFRule("embeddings/word_embeddings", "embeddings/word_embeddings"),
    TFRule("embeddings/position_embeddings", "embeddings/position_embeddings"),
    TFRule("embeddings/token_type_embeddings", "embeddings/token_type_embeddings"),
    *_norm("embeddings/layer_norm", "embeddings/LayerNorm"),
]
PROJECTION: list[TFRule] = _dense("embeddings_project", "embeddings_project")
ENCODER: list[TFRule] = [
    *_dense(f"{_L}/query", f"{_TL}/attention/self/query"),
    *_dense(f"{_L}/key", f"{_TL}/attention/self/key"),
    *_dense(f"{_L}/value", f"{_TL}/attention/self/value"),
    *_dense(f"{_L}/attention_output", f"{_TL}/attention/output/dense"),
    *_norm(f"{_L}/attention_norm", f"{_TL}/attention/output/LayerNorm"),
    *_dense(f"{_L}/intermediate", f"{_TL}/intermediate/dense"),
    *_dense(f"{_L}/output", f"{_TL}/output/dense"),
    *_norm(f"{_L}/output_norm", f"{_TL}/output/LayerNorm"),
]

# Heads: our path under the head module's root <- the full TF name.
DISCRIMINATOR_HEAD: list[TFRule] = [*_dense("discriminator_predictions/dense", "discriminator_predictions/dense"),
                                    *_dense("discriminator_predictions/dense_prediction",
                                            "discriminator_predictions/dense_1")]
GENERATOR_HEAD: list[TFRule] = [*_dense("generator_predictions/dense", "generator_predictions/dense"),
                                *_norm("generator_predictions/layer_norm", "generator_predictions/LayerNorm"),
                                TFRule("generator_lm_head/bias", "generator_predictions/output_bias")]

# The original fine-tuning heads (under task_specific/<task>/): head class -> rules, with "{task}" in the TF name.
TASK_HEADS: dict[str, list[TFRule]] = {
    "OriginalElectraForSequenceClassification": _dense("classifier", "task_specific/{task}/dense"),
    "OriginalElectraForQuestionAnswering": [
        *_dense("start_logits", "task_specific/{task}/dense"),
        *_dense("qa_hidden", "task_specific/{task}/qa_hidden"),
        *_dense("end_logits", "task_specific/{task}/dense_1"),
        *_dense("answerable_hidden", "task_specific/{task}/dense_2"),
        *_dense("answerable_logit", "task_specific/{task}/dense_3"),
    ],
    "ElectraForTokenClassification": _dense("classifier", "task_specific/{task}/dense"),   # the tagging task
}
QA_TASKS = ("squad", "squadv1", "newsqa", "naturalqs", "triviaqa", "searchqa")
TAGGING_TASKS = ("chunk",)


def task_head(task: str) -> str:
  """Our head class for an original task name (finetune/task_builder.py)."""
  if task in QA_TASKS:
    return "OriginalElectraForQuestionAnswering"
  if task in TAGGING_TASKS:
    return "ElectraForTokenClassification"
  return "OriginalElectraForSequenceClassification"


def body_rules(scope: str, embeddings_scope: str | None, projection: bool) -> list[TFRule]:
  """Rules for an encoder under our "electra/": TF names under `scope` (embeddings under `embeddings_scope`, or
  none when they are another network's)."""
  rules = []
  if embeddings_scope is not None:
    rules += [TFRule(f"electra/{r.jax}", f"{embeddings_scope}/{r.tf}") for r in EMBEDDINGS]
  if projection:
    rules += [TFRule(f"electra/{r.jax}", f"{scope}/{r.tf}") for r in PROJECTION]
  rules += [TFRule(f"electra/{r.jax}", f"{scope}/{r.tf}") for r in ENCODER]
  return rules


def detect_layout(names: set[str]) -> str:
  """The generator layout of a checkpoint, from its variable names (see the module docstring)."""
  has_gen_head = "generator_predictions/output_bias" in names
  if not has_gen_head:
    return "discriminator"
  if "generator/embeddings/word_embeddings" in names:
    return "untied_embeddings"
  if any(n.startswith("generator/encoder/") for n in names):
    return "separate"
  return "shared"


def num_layers(names: set[str], scope: str) -> int:
  """Number of encoder layers under `scope` (layer_0 .. layer_{n-1}; a gap is an error)."""
  pattern = re.compile(rf"^{re.escape(scope)}/encoder/layer_(\d+)/")
  found = {int(m.group(1)) for n in names if (m := pattern.match(n))}
  if found and found != set(range(max(found) + 1)):
    missing = sorted(set(range(max(found) + 1)) - found)
    raise ValueError(f"{scope}/encoder has layers {sorted(found)} but not layer_{missing[0]}")
  return len(found)


def task_names(names: set[str]) -> list[str]:
  return sorted({n.split("/")[1] for n in names if n.startswith("task_specific/") and n.count("/") >= 2})


def is_slot(name: str) -> bool:
  return name.endswith(SLOT_SUFFIXES)
