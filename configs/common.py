"""Helpers shared by every config file in configs/ (pretraining and fine-tuning).

    # configs/pretrain.py
    from configs import common
    def get_config(arg=None):
      arg = common.parse_arg(arg, size="small", runlocal=False)   # --config=configs/pretrain.py:size=tiny,runlocal
      config = ml_collections.ConfigDict()
      config.optimizer = common.optimizer_config(weight_decay=0.01)
      config.mesh = common.mesh_config()
      ...

`parse_arg` turns the text after the colon into a ConfigDict whose fields have the types of the defaults:
`size=base,runlocal,steps=10` gives size="base", runlocal=True (a bare key means True), steps=10.
"""

from __future__ import annotations

from typing import Any

import ml_collections

_TRUE = ("1", "true", "yes", "on", "")
_FALSE = ("0", "false", "no", "off")


def _cast(key: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    low = text.lower()
    if low in _TRUE:
      return True
    if low in _FALSE:
      return False
    raise ValueError(f"config argument {key}={text!r}: expected a boolean (true/false)")
  if default is None or isinstance(default, str):
    return text
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f"config argument {key}={text!r}: expected {type(default).__name__} "
                     f"(the type of its default {default!r})") from None


def parse_arg(arg: str | None, lazy: bool = False, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,flag,...` against `defaults` (every key must have a default unless lazy=True).

  Values take the type of their default; a bare `key` sets a boolean to True. With lazy=True unknown keys are kept
  as strings. Raises ValueError naming the key on an unknown key or a value of the wrong type.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return result
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      if not lazy:
        raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
      result[key] = value if has_value else True
      continue
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
    else:
      result[key] = _cast(key, value.strip(), default)
  return result


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
  """AdamW as ELECTRA uses it (or LAMB); read by `electra_jax.train.optim.create`. The peak rate is
  `config.learning_rate`."""
  c = ml_collections.ConfigDict()
  c.name = "adamw"                   # "adamw" (the original's) or "lamb" (NVIDIA's recipe; configs/pretrain_nvidia.py)
  c.b1 = 0.9
  c.b2 = 0.999
  c.eps = 1e-6
  c.weight_decay = 0.01
  c.clip_norm = 1.0                  # global-norm clipping before Adam; 0 or None turns it off
  c.bias_correction = False          # the original's AdamWeightDecayOptimizer has none; True = optax.adamw
  c.lamb_skip_adaptive = True        # LAMB: no trust ratio for LayerNorm parameters and biases (NVIDIA --skip_adaptive)
  c.warmup_steps = 10_000
  c.warmup_proportion = -1.0         # >= 0: warmup = round(proportion * num_train_steps), overriding warmup_steps
  c.lr_decay_power = 1.0             # polynomial decay to end_learning_rate; 1 = linear
  c.end_learning_rate = 0.0
  c.schedule = "multiply"            # "multiply": min(1, t/warmup) * decay(t), as the original; "sequential": HF-style
  c.layerwise_lr_decay = 0.0         # > 0 turns layer-wise LR decay on (fine-tuning)
  c.layerwise_lr_decay_mode = "original"   # "original" (head n+2, top layer decay^2) or "paper" (head n+1)
  c.update(overrides)
  return c


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  """Mesh axis sizes; one of them may be -1 (the remaining devices); data may be 0: the number of slices the devices
  span (their slice_index: TPU multislice; 1 on a single slice and on CPUs), so that only data parallelism crosses the
  network between slices (electra_jax.sharding.make_mesh)."""
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def default_sharding_rules() -> list[tuple[str, Any]]:
  """electra_jax.sharding.DEFAULT_RULES as lists (what a ConfigDict holds; `--config.sharding_rules` may replace it).

  Read from electra_jax.sharding_rules, which does not import JAX: configs load while absl parses a binary's flags."""
  from electra_jax import sharding_rules  # pylint: disable=import-outside-toplevel
  return [(name, list(axes) if isinstance(axes, tuple) else axes) for name, axes in sharding_rules.DEFAULT_RULES]
