"""Models from checkpoints: the model_config a checkpoint records, and the module it describes.

    meta = read_model_config("workdir")              # {"kind": "pretraining" | an HF/original head class, ...}
    spec = ModelSpec.from_meta(meta, source="workdir")   # which module to build, with which ElectraConfig
    model = load_model("workdir")                    # the nnx module filled with the checkpoint's parameters

`model_config` is {"kind": "pretraining", "discriminator": <HF config>, "generator": <HF config>} or
{"kind": "<head class>", "config": <HF config>, "head_options": {...}}, optionally with "tokenizer".
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from electra_jax import modeling
from electra_jax.checkpointing.integrity import shape_mismatches
from electra_jax.checkpointing.store import MODEL_CONFIG_FILE, CheckpointError
from electra_jax.checkpointing.tools import load_params, resolve_checkpoint_dir


def _as_dict(config: Any) -> dict[str, Any]:
  return dict(config) if isinstance(config, Mapping) else config.to_hf_dict()


def pretraining_meta(discriminator_config: Any, generator_config: Any,
                     tokenizer: Mapping[str, Any] | None = None,
                     options: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """model_config for the joint ELECTRA model (ElectraConfig objects or HF config dicts; generator None: none).

  tokenizer: optional {"vocab_file", "lowercase", "strip_accents"}, so tools can rebuild the tokenizer.
  options: ElectraPretrainingModel's keyword options (weight_sharing, discriminator_head, generator_kind).
  """
  meta = {"kind": "pretraining", "discriminator": _as_dict(discriminator_config),
          "generator": None if generator_config is None else _as_dict(generator_config)}
  if options:
    meta["options"] = dict(options)
  if tokenizer is not None:
    meta["tokenizer"] = dict(tokenizer)
  return meta


def head_meta(head: str, config: Any, tokenizer: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """model_config for one HF head class (e.g. "ElectraForMaskedLM")."""
  meta = {"kind": head, "config": _as_dict(config)}
  if tokenizer is not None:
    meta["tokenizer"] = dict(tokenizer)
  return meta


def build_model(model_meta: Mapping[str, Any], seed: int = 0, abstract: bool = False, **runtime):
  """The nnx module a model_config describes (randomly initialised, or abstract shapes with abstract=True)."""
  kind = model_meta.get("kind")
  if kind == "pretraining":
    disc = modeling.ElectraConfig.from_hf_dict(model_meta["discriminator"], **runtime)
    gen = (modeling.ElectraConfig.from_hf_dict(model_meta["generator"], **runtime) if model_meta.get("generator")
           else None)
    options = dict(model_meta.get("options") or {})
    ctor = lambda: modeling.ElectraPretrainingModel(disc, gen, rngs=nnx.Rngs(seed), **options)  # noqa: E731
  elif kind:
    config = modeling.ElectraConfig.from_hf_dict(model_meta["config"], **runtime)
    cls = modeling.head_class(kind)   # an HF head or an original ELECTRA head
    options = dict(model_meta.get("head_options") or {})
    ctor = lambda: cls(config, rngs=nnx.Rngs(seed), **options)  # noqa: E731
  else:
    raise CheckpointError(f"model_config has no 'kind': {sorted(model_meta)}")
  return nnx.eval_shape(ctor) if abstract else ctor()


def load_model(path: str | os.PathLike, step: int | None = None, **runtime):
  """The module saved in a checkpoint, with its parameters (on the default device), e.g. for conversion to HF."""
  meta, params = load_params(path, step)
  model = build_model(meta, abstract=True, **runtime)
  graphdef, state = nnx.split(model)
  wanted = nnx.to_pure_dict(state)
  problems = shape_mismatches(wanted, params, "params")
  if problems:
    raise CheckpointError(f"checkpoint {path} does not match its model_config: " + "; ".join(problems[:5]))
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda a, x: jax.numpy.asarray(x, a.dtype), wanted, params))
  return nnx.merge(graphdef, state)


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
  """model_config.json of a checkpoint directory of this project (a workdir, its checkpoints/ or one step)."""
  directory, _ = resolve_checkpoint_dir(path)
  meta_file = os.path.join(directory, MODEL_CONFIG_FILE)
  if not os.path.isfile(meta_file):
    raise CheckpointError(f"{path}: neither a Hugging Face folder (no config.json) nor a checkpoint of this project "
                          f"(no {meta_file})")
  with open(meta_file, encoding="utf-8") as f:
    return json.load(f)


def electra_config_from_meta(meta: Mapping[str, Any], source: str,
                             runtime: Mapping[str, Any] | None = None) -> modeling.ElectraConfig:
  """The encoder config a model_config describes (the discriminator's, for a pretraining checkpoint)."""
  runtime = dict(runtime or {})
  kind = meta.get("kind")
  if kind == "pretraining":
    return modeling.ElectraConfig.from_hf_dict(meta["discriminator"], source=source, **runtime)
  if kind and "config" in meta:
    return modeling.ElectraConfig.from_hf_dict(meta["config"], source=source, **runtime)
  raise CheckpointError(f"{source}: model_config has no usable 'kind'/'config' (keys {sorted(meta)})")


@dataclasses.dataclass
class ModelSpec:
  """Which module to build (an HF head class or an original head), with what config and head options."""
  kind: str
  config: modeling.ElectraConfig
  options: dict[str, Any] = dataclasses.field(default_factory=dict)

  def module_class(self):
    return modeling.head_class(self.kind)

  def build(self, seed: int | jax.Array) -> nnx.Module:
    return self.module_class()(self.config, rngs=nnx.Rngs(seed), **self.options)

  def meta(self) -> dict[str, Any]:
    """The checkpoint's model_config (head_meta, plus head options for original heads)."""
    meta = head_meta(self.kind, self.config)
    if self.options:
      meta["head_options"] = dict(self.options)
    return meta
