"""ElectraConfig: every field of Hugging Face's ElectraConfig (same defaults) plus runtime-only options.

    cfg = ElectraConfig(hidden_size=256, num_attention_heads=4)            # HF defaults = ELECTRA-Small discriminator
    cfg = ElectraConfig.from_json_file("hf_dir/config.json")               # reads an HF config.json
    cfg.to_hf_dict()                                                        # what goes back into config.json
    cfg = cfg.replace(dtype="bfloat16", scan_layers=True, remat_policy="dots", kernels="auto")

The runtime-only fields (`dtype`, `param_dtype`, `scan_layers`, `remat_policy`, `kernels`) never reach config.json.
Invalid values raise `ConfigError` naming the field (and the file, when read from one).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax.numpy as jnp

from electra_jax import errors
from electra_jax import ops

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SUMMARY_TYPES = ("first", "last", "mean")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "kernels")
# Keys that HF writes into config.json but that say nothing about the architecture.
_HF_BOOKKEEPING = {"model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "output_past",
                   "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward",
                   "tokenizer_class", "prefix", "task_specific_params", "finetuning_task"}


class ConfigError(errors.Error, ValueError):
  """An ElectraConfig field with an invalid value."""


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
  """Architecture (HF ElectraConfig fields and defaults) + runtime options. Frozen and hashable."""
  vocab_size: int = 30522
  embedding_size: int = 128
  hidden_size: int = 256
  num_hidden_layers: int = 12
  num_attention_heads: int = 4
  intermediate_size: int = 1024
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  summary_type: str = "first"
  summary_use_proj: bool = True
  summary_activation: str | None = "gelu"
  summary_last_dropout: float = 0.1
  summary_first_dropout: float = 0.0
  summary_proj_to_labels: bool = False
  pad_token_id: int | None = 0
  bos_token_id: int | None = None
  eos_token_id: int | None = None
  position_embedding_type: str = "absolute"
  use_cache: bool = True
  classifier_dropout: float | None = None
  is_decoder: bool = False
  add_cross_attention: bool = False
  tie_word_embeddings: bool = True
  # PretrainedConfig fields that heads use.
  num_labels: int = 2
  id2label: tuple[tuple[int, str], ...] | None = None   # stored as pairs so the config stays hashable
  problem_type: str | None = None
  architectures: tuple[str, ...] | None = None
  # Runtime-only (never written to config.json).
  dtype: str = "float32"            # compute dtype of activations and matmuls
  param_dtype: str = "float32"      # storage dtype of parameters
  scan_layers: bool = False         # jax.lax.scan over the stacked layers instead of a Python loop
  remat_policy: str = "none"        # rematerialisation of each layer in the backward pass
  kernels: str = "auto"             # forms of the ops (electra_jax/ops): auto, reference, xla_cpu, cudnn, splash

  def __post_init__(self):
    if isinstance(self.id2label, dict):  # accept HF's {id: name} mapping; store hashable pairs
      object.__setattr__(self, "id2label", _label_pairs(self.id2label))
    if isinstance(self.architectures, list):
      object.__setattr__(self, "architectures", tuple(self.architectures))
    self.validate()

  # ---------------------------------------------------------------- validation
  def validate(self, source: str | None = None) -> None:
    where = f" in {source}" if source else ""

    def bad(field: str, why: str):
      raise ConfigError(f"ElectraConfig.{field}={getattr(self, field)!r}{where}: {why}")

    for f in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
      v = getattr(self, f)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        bad(f, "must be a positive integer")
    if self.hidden_size % self.num_attention_heads:
      bad("hidden_size", f"must be divisible by num_attention_heads={self.num_attention_heads}")
    for f in ("hidden_dropout_prob", "attention_probs_dropout_prob", "summary_last_dropout", "summary_first_dropout"):
      v = getattr(self, f)
      if not 0.0 <= float(v) < 1.0:
        bad(f, "must be in [0, 1)")
    if self.classifier_dropout is not None and not 0.0 <= float(self.classifier_dropout) < 1.0:
      bad("classifier_dropout", "must be None or in [0, 1)")
    if self.hidden_act not in ACTIVATIONS:
      bad("hidden_act", f"must be one of {ACTIVATIONS}")
    if self.summary_activation not in (None, "tanh", *ACTIVATIONS):
      bad("summary_activation", f"must be None, 'tanh' or one of {ACTIVATIONS}")
    if self.summary_type not in SUMMARY_TYPES:
      bad("summary_type", f"must be one of {SUMMARY_TYPES} (cls_index and attn are not supported)")
    if self.position_embedding_type != "absolute":
      bad("position_embedding_type", "only 'absolute' position embeddings are supported")
    if self.add_cross_attention:
      bad("add_cross_attention", "cross-attention (ELECTRA as a decoder of an encoder-decoder) is not supported")
    if self.layer_norm_eps <= 0:
      bad("layer_norm_eps", "must be positive")
    if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
      bad("pad_token_id", f"must be None or in [0, vocab_size={self.vocab_size})")
    if self.problem_type not in PROBLEM_TYPES:
      bad("problem_type", f"must be one of {PROBLEM_TYPES}")
    if self.id2label is not None and len(self.id2label) != self.num_labels:
      bad("id2label", f"has {len(self.id2label)} labels but num_labels={self.num_labels}")
    for f in ("dtype", "param_dtype"):
      if getattr(self, f) not in DTYPES:
        bad(f, f"must be one of {tuple(DTYPES)}")
    if self.remat_policy not in REMAT_POLICIES:
      bad("remat_policy", f"must be one of {REMAT_POLICIES}")
    if self.kernels not in ops.KERNELS:
      bad("kernels", f"must be one of {ops.KERNELS}")
    if self.kernels in ops.FUSED_ATTENTION and float(self.attention_probs_dropout_prob) > 0:
      bad("kernels", f"attention_probs_dropout_prob must be 0 for kernels={self.kernels!r} (its fused attention has "
                     f"no dropout; got {self.attention_probs_dropout_prob}): set "
                     f"--config.model.attention_probs_dropout_prob=0 or kernels=auto")
    if self.kernels == "cudnn" and self.dtype == "float32":
      bad("kernels", "cuDNN's fused attention runs bfloat16 or float16, not dtype=float32: set dtype=bfloat16 or "
                     "kernels=auto")

  # ---------------------------------------------------------------- helpers
  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def storage_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def labels(self) -> list[str]:
    """Label names by index (HF's LABEL_i when none were given)."""
    if self.id2label is None:
      return [f"LABEL_{i}" for i in range(self.num_labels)]
    return [name for _, name in sorted(self.id2label)]

  def replace(self, **changes) -> "ElectraConfig":
    if "id2label" in changes and isinstance(changes["id2label"], dict):
      changes["id2label"] = _label_pairs(changes["id2label"])
    return dataclasses.replace(self, **changes)

  # ---------------------------------------------------------------- HF config.json
  def to_hf_dict(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
    labels = self.labels
    d.pop("num_labels")
    d["id2label"] = {str(i): name for i, name in enumerate(labels)}
    d["label2id"] = {name: i for i, name in enumerate(labels)}
    d["architectures"] = list(self.architectures) if self.architectures else None
    if d["architectures"] is None:
      del d["architectures"]
    if d["problem_type"] is None:
      del d["problem_type"]
    d["model_type"] = "electra"
    return d

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str | None = None, **runtime) -> "ElectraConfig":
    """Builds a config from an HF config dict. Unknown architecture keys are logged and ignored."""
    if d.get("model_type", "electra") != "electra":
      raise ConfigError(f"model_type={d.get('model_type')!r}{' in ' + source if source else ''}: not an ELECTRA config")
    names = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
    kw: dict[str, Any] = {}
    for key, value in d.items():
      if key in names:
        kw[key] = value
      elif key not in _HF_BOOKKEEPING and key != "label2id":
        logging.warning("ElectraConfig%s: ignoring unknown key %r", f" ({source})" if source else "", key)
    if kw.get("id2label") is not None:
      kw["id2label"] = _label_pairs(kw["id2label"])
      kw["num_labels"] = len(kw["id2label"])
      if all(name == f"LABEL_{i}" for i, name in kw["id2label"]):
        kw["id2label"] = None
    if kw.get("architectures") is not None:
      kw["architectures"] = tuple(kw["architectures"])
    if isinstance(kw.get("eos_token_id"), list):
      raise ConfigError(f"eos_token_id{' in ' + source if source else ''}: a list of EOS ids is not supported")
    kw.update(runtime)
    try:
      return cls(**kw)
    except ConfigError as e:
      raise ConfigError(f"{e}{' (from ' + source + ')' if source else ''}") from None
    except TypeError as e:
      raise ConfigError(f"{source or 'config'}: {e}") from None

  @classmethod
  def from_json_file(cls, path: str | os.PathLike, **runtime) -> "ElectraConfig":
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
    except FileNotFoundError:
      raise FileNotFoundError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return cls.from_hf_dict(d, source=path, **runtime)

  def to_json_file(self, path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)
      f.write("\n")


def _label_pairs(id2label: dict) -> tuple[tuple[int, str], ...]:
  return tuple(sorted((int(k), str(v)) for k, v in id2label.items()))


def generator_config(disc: ElectraConfig, hidden_fraction: float = 0.25, layers_fraction: float = 1.0,
                     ) -> ElectraConfig:
  """The ELECTRA generator for a discriminator: width a fraction of it (heads of size 64, FFN 4x), same embeddings."""
  hidden = max(1, round(disc.hidden_size * hidden_fraction))
  heads = max(1, hidden // 64)
  if hidden % heads:
    raise ConfigError(f"generator hidden size {hidden} (= {disc.hidden_size} x {hidden_fraction}) is not divisible "
                      f"by its {heads} heads")
  return disc.replace(hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                      num_hidden_layers=max(1, round(disc.num_hidden_layers * layers_fraction)),
                      architectures=("ElectraForMaskedLM",))
