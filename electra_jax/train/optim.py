"""AdamW and LAMB, learning-rate schedules and layer-wise LR decay as ELECTRA uses them (pretraining and fine-tuning).

    schedule = optim.schedule_from_config(config.optimizer, config.learning_rate, config.num_train_steps)
    tx = optim.create(config.optimizer, params, schedule)        # config.optimizer.name: "adamw" (default) or "lamb"
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    tx, schedules = optim.create_groups(config.optimizer, params, learning_rates={"generator": 1e-4,
                                        "discriminator": 5e-4}, label_of=lambda names: names[0], num_train_steps=T)

The pieces, in the order the chain applies them (as the original's `model/optimization.py`):
  1. global-norm clipping (1.0);
  2. Adam moments, eps 1e-6, with or without bias correction (the original's AdamWeightDecayOptimizer has none);
  3. decoupled weight decay, `update += wd * param`, skipped for LayerNorm parameters and biases;
  4. layer-wise LR multipliers (fine-tuning), per slice of the stacked [num_layers, ...] encoder parameters;
  5. the learning rate: min(1, t/warmup) * (lr - end) * (1 - t/T)^power + end, i.e. warmup MULTIPLIED by the decay.
LAMB (`name="lamb"`, You et al. 2019, as NVIDIA's ELECTRA recipe runs TensorFlow Addons' LAMB): clipping, Adam moments
with bias correction, the same decoupled weight decay and exclusions, then the layer-wise trust ratio
||param|| / ||update|| (1 where either norm is 0), which `lamb_skip_adaptive` leaves out for LayerNorm parameters and
biases (NVIDIA's --skip_adaptive), then the learning rate.

Parameter trees are nested dicts (or nnx.State) whose keys are the NNX attribute names of electra_jax.modeling:
LayerNorms are `.../layer_norm|attention_norm|output_norm/{scale,bias}`, the encoder's per-layer parameters live
under `.../encoder/layers/...` with a leading [num_hidden_layers] axis, embeddings under `.../embeddings/...` and
`.../embeddings_project/...`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from electra_jax import errors

PyTree = Any
SCHEDULE_KINDS = ("multiply", "sequential")
LLRD_MODES = ("original", "paper")


# ------------------------------------------------------------------------------------------------ schedules

class OptimError(errors.Error, ValueError):
  """An optimizer or schedule setting out of range."""


def warmup_decay_schedule(learning_rate: float, num_train_steps: int, warmup_steps: int = 0, *,
                          power: float = 1.0, end_learning_rate: float = 0.0,
                          kind: str = "multiply") -> optax.Schedule:
  """The learning rate at update count t (0 for the first update, like TF's global_step).

  kind="multiply" (the original ELECTRA/BERT code): polynomial_decay(t) * min(1, t / warmup_steps), where
    polynomial_decay(t) = (lr - end) * (1 - min(t, T) / T) ** power + end.
  kind="sequential" (HF-style): linear warmup to lr over warmup_steps, then the polynomial decay over the rest.
  """
  if kind not in SCHEDULE_KINDS:
    raise OptimError(f"schedule kind {kind!r}: must be one of {SCHEDULE_KINDS}")
  if num_train_steps <= 0:
    raise OptimError(f"num_train_steps={num_train_steps}: must be positive")
  if warmup_steps < 0:
    raise OptimError(f"warmup_steps={warmup_steps}: must be >= 0")
  lr, end, total, warmup = float(learning_rate), float(end_learning_rate), float(num_train_steps), float(warmup_steps)

  def decay(t, start, length):
    frac = jnp.clip((t - start) / max(length, 1.0), 0.0, 1.0)
    return (lr - end) * (1.0 - frac) ** power + end

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    if kind == "multiply":
      value = decay(t, 0.0, total)
      if warmup > 0:
        value = value * jnp.minimum(1.0, t / warmup)
      return value
    if warmup <= 0:
      return decay(t, 0.0, total)
    return jnp.where(t < warmup, lr * t / warmup, decay(t, warmup, total - warmup))

  return schedule


# ------------------------------------------------------------------------------------------------ parameter names
def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def path_names(path) -> tuple[str, ...]:
  """A tree_util key path -> its names, e.g. ('discriminator', 'electra', 'encoder', 'layers', 'query', 'kernel')."""
  return tuple(_key_name(k) for k in path)


def is_layer_norm_or_bias(names: tuple[str, ...]) -> bool:
  """True for LayerNorm scales/biases and every bias (the parameters the original excludes from weight decay)."""
  if not names:
    return False
  if names[-1] in ("bias", "scale"):   # every bias; "scale" only exists in LayerNorms
    return True
  return any("norm" in n.lower() for n in names[:-1])


def weight_decay_mask(params: PyTree) -> PyTree:
  """Same tree as `params` with True where weight decay applies (kernels and embedding tables)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: not is_layer_norm_or_bias(path_names(p)), params)


# ------------------------------------------------------------------------------------------------ layer-wise LR decay
def _is_stacked(names: tuple[str, ...]) -> bool:
  return "encoder" in names and "layers" in names


def _is_embedding(names: tuple[str, ...]) -> bool:
  return "embeddings" in names or "embeddings_project" in names


def num_stacked_layers(params: PyTree) -> int:
  """The leading [num_layers] size of the encoder's stacked parameters (raises if absent or inconsistent)."""
  sizes = set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if _is_stacked(path_names(path)):
      sizes.add(int(np.shape(leaf)[0]))
  if len(sizes) != 1:
    raise OptimError(f"layer-wise LR decay needs one stack of encoder layers (params under .../encoder/layers/...); "
                     f"found leading sizes {sorted(sizes)}")
  return sizes.pop()


def layer_depths(params: PyTree, mode: str = "original") -> tuple[PyTree, int]:
  """(depth of every parameter, depth of the head): 0 embeddings, i+1 for layer i (an int array [L]), head n+2 or n+1.

  mode="original" follows the original code (`_get_layer_lrs`: head depth n+2, a leftover of the removed pooler, so
  the top layer gets decay^2); mode="paper" as the paper describes it (head depth n+1, top layer decay^1).
  """
  if mode not in LLRD_MODES:
    raise OptimError(f"layer-wise LR decay mode {mode!r}: must be one of {LLRD_MODES}")
  n = num_stacked_layers(params)
  head = n + 2 if mode == "original" else n + 1

  def depth(path, leaf):
    names = path_names(path)
    if _is_embedding(names):
      return 0
    if _is_stacked(names):
      return np.arange(1, n + 1)
    return head

  return jax.tree_util.tree_map_with_path(depth, params), head


def layerwise_lr_multipliers(params: PyTree, decay: float, mode: str = "original") -> PyTree:
  """decay ** (top - depth) for every parameter; stacked encoder parameters get an array [L, 1, ..., 1].

  Multiply the update (Adam step plus weight decay) by it: `optax.chain(..., scale_by_tree(mults), ...)`.
  """
  depths, top = layer_depths(params, mode)

  def mult(d, leaf):
    if isinstance(d, np.ndarray):
      m = np.power(float(decay), top - d).astype(np.float32)
      return m.reshape((-1,) + (1,) * (np.ndim(leaf) - 1))
    return np.float32(float(decay) ** (top - d))

  return jax.tree.map(mult, depths, params)


def scale_by_tree(multipliers: PyTree) -> optax.GradientTransformation:
  """Multiplies each update by the matching leaf of `multipliers` (scalars or arrays that broadcast)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

  return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------------------------------------ Adam
class AdamState(NamedTuple):
  count: jax.Array
  mu: PyTree
  nu: PyTree


def scale_by_adam_no_bias_correction(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
                                     ) -> optax.GradientTransformation:
  """The original's AdamWeightDecayOptimizer step without weight decay: m / (sqrt(v) + eps), no bias correction.

  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2 (moments kept in float32).
  """

  def init_fn(params):
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)  # noqa: E731
    return AdamState(count=jnp.zeros([], jnp.int32), mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g.astype(jnp.float32), state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g.astype(jnp.float32)), state.nu, updates)
    new = jax.tree.map(lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu, nu, updates)
    return new, AdamState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """tf.clip_by_global_norm as the original uses it: every gradient times max_norm / max(global_norm, max_norm).

  One scalar factor multiplies every element (optax.clip_by_global_norm divides each element by the norm): a multiply
  is cheap enough for XLA to repeat in each of its consumers, so the clipped gradient is never written out (on the CPU
  backend, one pass over every parameter's gradient less per step). Below max_norm the factor is exactly 1.
  """

  def update_fn(updates, state, params=None):
    del params
    scale = max_norm / jnp.maximum(optax.tree.norm(updates), max_norm)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def adamw(learning_rate: float | optax.Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
          weight_decay: float = 0.01, mask: PyTree | Callable[[PyTree], PyTree] | None = weight_decay_mask,
          clip_norm: float | None = 1.0, bias_correction: bool = False,
          lr_multipliers: PyTree | None = None) -> optax.GradientTransformation:
  """clip -> Adam -> decoupled weight decay (masked) -> layer-wise multipliers -> -learning_rate."""
  parts = []
  if clip_norm:
    parts.append(clip_by_global_norm(float(clip_norm)))
  if bias_correction:
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  else:
    parts.append(scale_by_adam_no_bias_correction(b1=b1, b2=b2, eps=eps))
  if weight_decay:
    parts.append(optax.add_decayed_weights(float(weight_decay), mask=mask))
  if lr_multipliers is not None:
    parts.append(scale_by_tree(lr_multipliers))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


# ------------------------------------------------------------------------------------------------ from config
def resolve_warmup(opt_cfg: Mapping[str, Any], num_train_steps: int) -> int:
  prop = opt_cfg.get("warmup_proportion")
  prop = -1.0 if prop is None else float(prop)   # 0.0 means "no warmup", not "unset"
  if prop >= 0:
    return int(round(prop * num_train_steps))
  return int(opt_cfg.get("warmup_steps", 0))


OPTIMIZERS = ("adamw", "lamb")


def lamb(learning_rate: float | optax.Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.01, mask: PyTree | Callable[[PyTree], PyTree] | None = weight_decay_mask,
         clip_norm: float | None = 1.0, skip_adaptive: bool = True,
         lr_multipliers: PyTree | None = None) -> optax.GradientTransformation:
  """clip -> Adam (bias-corrected) -> decoupled weight decay (masked) -> trust ratio (all parameters, or those weight
  decay applies to with skip_adaptive) -> layer-wise multipliers -> -learning_rate."""
  parts = []
  if clip_norm:
    parts.append(clip_by_global_norm(float(clip_norm)))
  parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  if weight_decay:
    parts.append(optax.add_decayed_weights(float(weight_decay), mask=mask))
  trust = optax.scale_by_trust_ratio()
  parts.append(optax.masked(trust, weight_decay_mask) if skip_adaptive else trust)
  if lr_multipliers is not None:
    parts.append(scale_by_tree(lr_multipliers))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def schedule_from_config(opt_cfg: Mapping[str, Any], learning_rate: float, num_train_steps: int) -> optax.Schedule:
  """The warmup-and-decay schedule a config's optimizer fields describe (peak `learning_rate`)."""
  return warmup_decay_schedule(
      float(learning_rate), int(num_train_steps), resolve_warmup(opt_cfg, int(num_train_steps)),
      power=float(opt_cfg.get("lr_decay_power", 1.0)), end_learning_rate=float(opt_cfg.get("end_learning_rate", 0.0)),
      kind=str(opt_cfg.get("schedule", "multiply")))


def create(opt_cfg: Mapping[str, Any], params: PyTree, schedule: optax.Schedule | None = None, *,
           learning_rate: float | None = None, num_train_steps: int | None = None):
  """The optimizer a config describes (configs/common.py `optimizer_config` lists the fields), stepping at
  `schedule`. Without a schedule (the older form): (optimizer, schedule_from_config(...)) from learning_rate and
  num_train_steps."""
  pair = schedule is None
  if pair:
    if learning_rate is None or num_train_steps is None:
      raise OptimError("optim.create needs a schedule, or learning_rate and num_train_steps")
    schedule = schedule_from_config(opt_cfg, learning_rate, num_train_steps)
  name = str(opt_cfg.get("name", "adamw") or "adamw").lower()
  if name not in OPTIMIZERS:
    raise OptimError(f"config.optimizer.name={name!r}: must be one of {OPTIMIZERS}")
  llrd = float(opt_cfg.get("layerwise_lr_decay", 0.0) or 0.0)
  multipliers = (layerwise_lr_multipliers(params, llrd, str(opt_cfg.get("layerwise_lr_decay_mode", "original")))
                 if llrd > 0 else None)
  common = dict(b1=float(opt_cfg.get("b1", 0.9)), b2=float(opt_cfg.get("b2", 0.999)),
                eps=float(opt_cfg.get("eps", 1e-6)), weight_decay=float(opt_cfg.get("weight_decay", 0.01)),
                mask=weight_decay_mask, clip_norm=opt_cfg.get("clip_norm", 1.0), lr_multipliers=multipliers)
  if name == "lamb":
    tx = lamb(schedule, skip_adaptive=bool(opt_cfg.get("lamb_skip_adaptive", True)), **common)
  else:
    tx = adamw(schedule, bias_correction=bool(opt_cfg.get("bias_correction", False)), **common)
  return (tx, schedule) if pair else tx


# ------------------------------------------------------------------------------------------------ parameter groups
def path_labels(params: PyTree, label_of: Callable[[tuple[str, ...]], str]) -> PyTree:
  """The tree of `params` with label_of(parameter path names) at every leaf (optax.multi_transform's labels)."""
  return jax.tree_util.tree_map_with_path(lambda p, _: label_of(path_names(p)), params)


def create_groups(opt_cfg: Mapping[str, Any], params: PyTree, *, learning_rates: Mapping[str, float | None],
                  label_of: Callable[[tuple[str, ...]], str], num_train_steps: int
                  ) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
  """One optimizer per group of parameters, as `create` builds it (its own peak learning rate, its own Adam state and
  gradient clipping), over the groups label_of gives by parameter path; a group whose rate is None is frozen (no
  update and no optimizer state). Returns (tx, {label: schedule}) (frozen groups have none)."""
  labels = path_labels(params, label_of)
  unknown = sorted(set(jax.tree.leaves(labels)) - set(learning_rates))
  if unknown:
    raise OptimError(f"parameter groups {unknown} have no learning rate (known: {sorted(learning_rates)})")
  transforms, schedules = {}, {}
  for label, lr in learning_rates.items():
    if lr is None:
      transforms[label] = optax.set_to_zero()
    else:
      transforms[label], schedules[label] = create(opt_cfg, params, learning_rate=float(lr),
                                                   num_train_steps=num_train_steps)
  return optax.multi_transform(transforms, labels), schedules
