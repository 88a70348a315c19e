"""The model a fine-tuning run trains and its initial values: from scratch, an HF folder or an Orbax checkpoint.

    spec, init_kind, meta = finetune_init.model_spec(config, adapter)     # ModelSpec, "scratch" | "hf" | "orbax"
    values = finetune_init.init_values(spec, config, init_kind, meta, shapes)   # {flat param path: array}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from electra_jax import checkpointing, convert
from electra_jax.checkpointing import ModelSpec
from electra_jax.convert import flatten, params_from_hf, read_hf_weights
from electra_jax.eval.evaluation import runtime_options
from electra_jax.eval.tasks import TaskError
from electra_jax.modeling import ElectraConfig, effective_params, original_heads

ARCH_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob")


class FinetuneError(TaskError):
  """A fine-tuning configuration or checkpoint that cannot be used; the message says which and why."""


def _base_electra_config(config: ml_collections.ConfigDict) -> tuple[ElectraConfig, str, dict[str, Any] | None]:
  """(encoder config, init kind "scratch" | "hf" | "orbax", the Orbax checkpoint's model_config or None)."""
  runtime = runtime_options(config)
  path = config.init_checkpoint
  if not path:
    arch = {k: config.model[k] for k in ARCH_FIELDS if k in config.model}
    return ElectraConfig(**arch, **runtime), "scratch", None
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.init_checkpoint={path} does not exist")
  if convert.is_hf_folder(path):
    return ElectraConfig.from_json_file(os.path.join(path, "config.json"), **runtime), "hf", None
  meta = checkpointing.read_model_config(path)
  return checkpointing.electra_config_from_meta(meta, path, runtime), "orbax", meta


def model_spec(config: ml_collections.ConfigDict, adapter) -> tuple[ModelSpec, str, dict[str, Any] | None]:
  """The model to fine-tune, the init kind and (Orbax) the init checkpoint's model_config."""
  base, init_kind, meta = _base_electra_config(config)
  if config.head == "hf":
    kind, options = adapter.hf_head, {}
  elif config.head == "original":
    kind, options = adapter.original_kind, adapter.original_options()
  else:
    raise FinetuneError(f"config.head={config.head!r}: must be 'original' or 'hf'")
  electra_config = base.replace(architectures=(kind,), **adapter.head_overrides())
  return ModelSpec(kind, electra_config, options), init_kind, meta


def init_values(spec: ModelSpec, config: ml_collections.ConfigDict, init_kind: str,
                meta: Mapping[str, Any] | None, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Flat {param path: array} from the init checkpoint: the encoder, and with an HF head its head when present.

  `shapes` are the model's flat parameter shapes; every encoder parameter must be found, with the same shape.
  """
  path = config.init_checkpoint
  if init_kind == "scratch":
    return {}
  body_shapes = {k[len("electra/"):]: v for k, v in shapes.items() if k.startswith("electra/")}
  if init_kind == "hf":
    tensors = read_hf_weights(path)
    if spec.kind in original_heads.ORIGINAL_HEADS:
      body, _ = params_from_hf("ElectraModel", body_shapes, tensors, source=path)
      values = {f"electra/{k}": v for k, v in body.items()}
    else:
      values, missing = params_from_hf(spec.kind, dict(shapes), tensors, source=path, new_head_ok=True)
      if missing:
        logging.info("%s has no %s head weights; the head starts fresh: %s", path, spec.kind, missing)
  else:
    _, params = checkpointing.load_params(path)
    if meta and meta.get("kind") == "pretraining":   # the discriminator's effective weights (gdes: E_G + E_delta)
      params = effective_params(params, meta.get("options"))
    tree = params.get("discriminator", params) if meta and meta.get("kind") == "pretraining" else params
    if "electra" not in tree:
      raise FinetuneError(f"{path}: checkpoint params have no 'electra' encoder (top-level keys {sorted(tree)})")
    values = {f"electra/{k}": np.asarray(v) for k, v in flatten(tree["electra"]).items()}
  missing = sorted(k for k in shapes if k.startswith("electra/") and k not in values)
  unknown = sorted(k for k in values if k not in shapes)
  if missing or unknown:
    raise FinetuneError(f"{path}: encoder parameters do not match the model: missing {missing[:5]}, "
                        f"unexpected {unknown[:5]}")
  for k, v in values.items():
    if tuple(v.shape) != tuple(shapes[k]):
      raise FinetuneError(f"{path}: parameter {k} has shape {tuple(v.shape)} but the model expects {shapes[k]}")
  return values
