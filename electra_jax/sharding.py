"""The one place where logical axis names meet the device mesh.

Model code names axes logically (`nnx.Param(..., sharding=("embed", "mlp"))`); a rules table maps each logical name to
mesh axes of a (data, fsdp, tensor) mesh. Configs carry the table (`config.sharding_rules`), defaulting to DEFAULT_RULES
(electra_jax/sharding_rules.py, free of JAX so that configs can read it before a binary starts JAX).

    mesh = make_mesh({"data": -1, "fsdp": 2, "tensor": 1})           # -1 takes the remaining devices
    model = create_sharded_model(lambda: ElectraForPreTraining(cfg, rngs=nnx.Rngs(0)), mesh)   # born sharded
    shardings = logical_to_sharding(nnx.state(model), mesh)          # NamedShardings, same tree
    batch = jax.device_put(batch, batch_sharding(mesh))

A parameter without logical names, or with a name the table does not cover, raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from electra_jax import errors
from electra_jax.sharding_rules import DEFAULT_RULES, MESH_AXES, MeshAxes, Rules  # noqa: F401  (re-exported)

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar("electra_sharding_rules", default=DEFAULT_RULES)


class ShardingError(errors.Error, ValueError):
  """A parameter or activation whose logical axes the rules table cannot place."""


@contextlib.contextmanager
def use_rules(rules: Rules | None):
  """Sets the rules that `constrain` uses for activations (model code reads them while tracing)."""
  token = _RULES.set(tuple(rules) if rules is not None else DEFAULT_RULES)
  try:
    yield
  finally:
    _RULES.reset(token)


def current_rules() -> Rules:
  """The rules table in effect (`use_rules`), else DEFAULT_RULES."""
  return _RULES.get()


def rules_from_config(rules: Iterable[Any] | None) -> tuple[tuple[str, MeshAxes], ...]:
  """Normalises a rules table from a config (lists from ml_collections become tuples)."""
  if rules is None:
    return DEFAULT_RULES
  out = []
  for entry in rules:
    name, axes = entry
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((str(name), axes))
  return tuple(out)


# ------------------------------------------------------------------------------------------------ mesh
def num_slices(devices: Sequence[jax.Device]) -> int:
  """How many slices `devices` span: distinct slice_index values (TPU multislice); devices without one (CPUs, a single
  slice) count as one."""
  return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh. One size may be -1 (the remaining devices); `data` may be 0, the number of slices
  (`num_slices`: 1 unless the devices span several TPU slices). Default: all devices on `data`.

  On devices of several slices, `data` must be a multiple of the slices: it is the only axis that crosses the
  data-centre network between them (data parallelism across slices); fsdp and tensor stay inside a slice.
  """
  devices = list(devices) if devices is not None else jax.devices()
  shape = dict(shape or {"data": -1})
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ShardingError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
  slices = num_slices(devices)
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes[0] == 0:
    sizes[0] = slices
  if sizes.count(-1) > 1:
    raise ShardingError(f"mesh {shape}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise ShardingError(f"mesh {shape}: sizes must be positive or -1 (data may be 0: one per slice)")
  if -1 in sizes:
    if len(devices) % known:
      raise ShardingError(f"mesh {shape}: {len(devices)} devices are not divisible by {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ShardingError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                        f"{len(devices)} are available")
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if slices == 1:
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
  if sizes[0] % slices:
    raise ShardingError(f"mesh {dict(zip(MESH_AXES, sizes))}: the devices span {slices} slices (their slice_index), "
                        f"so data must be a multiple of {slices} (only data parallelism crosses slices); e.g. "
                        "--config.mesh.data=0")
  per_slice = [sizes[0] // slices, *sizes[1:]]
  grid = mesh_utils.create_hybrid_device_mesh(per_slice, [slices] + [1] * (len(sizes) - 1), devices)
  return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


# ------------------------------------------------------------------------------------------------ rules -> specs
def logical_to_spec(axes: Sequence[str | None], rules: Rules = DEFAULT_RULES, mesh: Any = None,
                    shape: Sequence[int] | None = None, name: str = "") -> P:
  """Logical axis names -> PartitionSpec. Raises on a name the table lacks.

  A mesh axis already used by an earlier dimension is not reused; a dimension not divisible by the product of its mesh
  axes is split over the longest leading run of them that divides it, or replicated (logged), so one table serves
  every model size and mesh.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for dim, logical in enumerate(axes):
    if logical is None:
      spec.append(None)
      continue
    if logical not in table:
      raise ShardingError(f"{name or 'array'}: logical axis {logical!r} is not covered by the sharding rules "
                          f"(covered: {sorted(table)})")
    mesh_axes = table[logical]
    if mesh_axes is None:
      spec.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    mesh_axes = tuple(a for a in mesh_axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1))
    if mesh is not None and shape is not None and mesh_axes:
      fit = mesh_axes
      while fit and shape[dim] % math.prod(mesh.shape[a] for a in fit):
        fit = fit[:-1]
      if fit != mesh_axes:
        logging.info("%s: dim %d (%s, size %d) not divisible by mesh axes %s; split over %s", name, dim, logical,
                     shape[dim], mesh_axes, fit or "none (replicated)")
      mesh_axes = fit
    used.update(mesh_axes)
    spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def logical_to_sharding(state: Any, mesh: jax.sharding.Mesh, rules: Rules | None = None) -> Any:
  """Same tree as `state` (an nnx.State of Variables, abstract or concrete) with NamedShardings as values."""
  rules = rules if rules is not None else DEFAULT_RULES

  def one(path, var):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    axes = var.get_metadata().get("out_sharding") if _is_variable(var) else None
    if axes is None:
      raise ShardingError(f"parameter {name} carries no logical axis names; every parameter needs them")
    shape = var.get_value().shape if _is_variable(var) else var.shape
    spec = logical_to_spec(axes, rules, mesh, shape, name)
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def create_sharded_model(ctor: Callable[[], nnx.Module], mesh: jax.sharding.Mesh, rules: Rules | None = None):
  """Builds the module with every parameter created directly in its sharded layout (nothing lands on one device)."""
  abstract = nnx.eval_shape(ctor)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = logical_to_sharding(abstract_state, mesh, rules)

  def init():
    return nnx.state(ctor())

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules | None = None, ndim: int = 2) -> NamedSharding:
  """Sharding of an input batch: leading dim over the activation_batch mesh axes, the rest replicated."""
  spec = logical_to_spec(("activation_batch",) + (None,) * (ndim - 1), rules or DEFAULT_RULES, mesh)
  return NamedSharding(mesh, spec)


def batch_axes(mesh: jax.sharding.Mesh, rules: Rules | None = None) -> tuple[str, ...]:
  """The mesh axes a batch's leading dim is split over (what activation_batch maps to in the rules)."""
  spec = batch_sharding(mesh, rules).spec[0]
  return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def batch_shards(mesh: jax.sharding.Mesh, rules: Rules | None = None) -> int:
  """How many ways a batch is split."""
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh, rules)]))


def put_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh, rules: Rules | None = None
              ) -> dict[str, jax.Array]:
  """Host arrays (the same global batch on every process) -> global jax.Arrays placed by the rules' batch sharding."""
  out = {}
  for k, x in batch.items():
    sh = batch_sharding(mesh, rules, ndim=x.ndim)
    out[k] = jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx])
  return out


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """with_sharding_constraint by logical names, under the mesh set by `jax.set_mesh`; a no-op without one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(axes, _RULES.get(), mesh, x.shape)
  return jax.lax.with_sharding_constraint(x, spec)


def describe(abstract: Any) -> str:
  """A table of parameters, shapes and partition specs (logged at start-up by the trainers): `abstract` is a tree of
  arrays or ShapeDtypeStructs that carry their sharding."""
  lines, total = [], 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
    total += int(np.prod(leaf.shape))
    lines.append(f"  {name:72s} {str(tuple(leaf.shape)):20s} {leaf.sharding.spec}")
  lines.append(f"  total parameters: {total:,}")
  return "\n".join(lines)
