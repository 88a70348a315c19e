"""How long the matrix products of our step take alone: a floor under the step time, and what a target leaves the rest.

    python benchmarks/product_bound.py --task=pretrain --batch_size=16 --target_s=0.395   # 4x the PyTorch peer's 1.58 s
    python benchmarks/product_bound.py --task=finetune --batch_size=32 --target_s=0.845   # 2x its 1.69 s
    python benchmarks/product_bound.py --task=infer --batch_size=32 --target_s=0.2295     # 2x its 0.459 s

Every `dot_general` in the jaxpr of the real step (pretrain: `pretrain_lib.build_setup`'s train step, the one
benchmarks/pretrain.py times; finetune / infer: `finetune_lib.Steps`' train step and predict function, as in
benchmarks/finetune.py), counted as often as the step runs it, is timed alone with XLA on this host (jitted, median of
--repeats) in two forms: as traced (the operands' own layouts, so the transposes XLA needs are included) and in its
best layout (operands already laid out as [batch, m, k] x [batch, k, n], transposes not counted). The sums are the time
the products alone need at the speeds XLA reaches for them; the step itself is timed in the same process, and so is a
2048^3 product, the host's reference rate (both cores near their peak): the products' FLOPs at that rate are the floor
if every product, however small or batched, ran as fast as the best one. With --target_s, the report says how much of
the target the products alone already take: what is left is all the time every other op (GELU, LayerNorm, softmax,
dropout, embeddings, losses, the optimizer) could have.
float32, one CPU device, unrolled layers (the benchmarks' settings). Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers"))

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, str(common.REPO_ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_enum("task", "pretrain", ["pretrain", "finetune", "infer"], "Which step.")
flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_enum("size", "small", sorted(common.SIZES), "Model size.")
flags.DEFINE_integer("layers", None, "Override the number of layers.")
flags.DEFINE_integer("repeats", 15, "Timed repetitions per product and of the step (median), after two warm-ups.")
flags.DEFINE_float("target_s", None, "A target step time to set the products' floor against.")
flags.DEFINE_bool("reuse_host_memory", True, "Steps run inline and reuse their host buffers, as the binaries' "
                  "--reuse_host_memory (their default) sets the process up "
                  "(electra_jax.runtime.host_memory.keep_host_buffers_mapped).")
flags.DEFINE_integer("top", 12, "Rows of the table (the products that take longest in all).")


def products(closed_jaxpr) -> dict[tuple, dict]:
  """{(lhs shape, rhs shape, dtype, dimension numbers): {"count", "params"}} of every dot_general the jaxpr runs."""
  from jax.extend import core as jex_core  # pylint: disable=import-outside-toplevel
  found: dict[tuple, dict] = {}

  def visit(jaxpr, times: int) -> None:
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        lhs, rhs = (v.aval for v in eqn.invars)
        dims = eqn.params["dimension_numbers"]
        key = (tuple(lhs.shape), tuple(rhs.shape), str(lhs.dtype), str(rhs.dtype),
               tuple(tuple(map(tuple, d)) for d in dims))
        entry = found.setdefault(key, {"count": 0, "params": eqn.params})
        entry["count"] += times
      inner = times * int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else times
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          if isinstance(sub, jex_core.ClosedJaxpr):
            visit(sub.jaxpr, inner)
          elif isinstance(sub, jex_core.Jaxpr):
            visit(sub, inner)

  visit(closed_jaxpr.jaxpr, 1)
  return found


def _median_s(fn, repeats: int) -> float:
  return statistics.median(common.time_steps(fn, warmup=2, steps=repeats))


def time_product(key: tuple, params: dict, repeats: int) -> dict:
  """FLOPs and seconds of one product alone: as traced, and with its operands in [batch, m, k] x [batch, k, n]."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  lhs_shape, rhs_shape, lhs_dtype, rhs_dtype, dims = key
  (lc, rc), (lb, _) = dims
  prod = lambda shape, axes: math.prod(shape[i] for i in axes)  # noqa: E731
  batch, k = prod(lhs_shape, lb), prod(lhs_shape, lc)
  m = math.prod(lhs_shape) // (batch * k)
  n = math.prod(rhs_shape) // (batch * prod(rhs_shape, rc))
  flops = 2.0 * batch * m * k * n
  lhs, rhs = jnp.ones(lhs_shape, lhs_dtype), jnp.ones(rhs_shape, rhs_dtype)
  pet = params.get("preferred_element_type")
  traced = jax.jit(lambda a, b: jax.lax.dot_general(a, b, params["dimension_numbers"], preferred_element_type=pet))
  traced_s = _median_s(lambda: traced(lhs, rhs).block_until_ready(), repeats)
  a, b = jnp.ones((batch, m, k), lhs_dtype), jnp.ones((batch, k, n), rhs_dtype)
  if batch == 1:
    a, b = a[0], b[0]
  plain = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=pet))
  plain_s = _median_s(lambda: plain(a, b).block_until_ready(), repeats)
  return {"flops": flops, "traced_s": traced_s, "best_s": min(traced_s, plain_s),
          "shape": f"{batch} x ({m} x {k} x {n})" if batch > 1 else f"{m} x {k} x {n}"}


def _worker_args(**overrides) -> argparse.Namespace:
  """Arguments for benchmarks/workers/ours.py's setups: float32, unrolled layers, no remat, a fresh batch."""
  return argparse.Namespace(**{"size": FLAGS.size, "layers": FLAGS.layers, "batch_size": FLAGS.batch_size,
                               "seq_len": FLAGS.seq_len, "dtype": "float32", "scan": False, "remat": "none",
                               "batch": "", **overrides})


def reference_rate(repeats: int) -> float:
  """GFLOP/s of one 2048^3 float32 product: ours.py's matmul task, the rate benchmarks/pretrain.py's MFU uses."""
  import ours  # pylint: disable=import-outside-toplevel
  return ours.matmul(_worker_args(matmul_n=2048, warmup=2, steps=repeats))["gflops_median"]


def step_and_jaxpr():
  """(a callable running one real step to completion, the closed jaxpr of that step)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ours  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.runtime import compile as compiling  # pylint: disable=import-outside-toplevel
  from electra_jax.eval.tasks import INPUT_KEYS  # pylint: disable=import-outside-toplevel
  key = jax.random.key(0)
  if FLAGS.task == "pretrain":
    setup, batch, state = ours.pretrain_setup(_worker_args())
    holder = {"state": state}
    with jax.set_mesh(setup.mesh), sharding.use_rules(setup.rules):
      jaxpr = setup.train_step.trace(holder["state"], batch, key).jaxpr
      compiled = compiling.ready_step(setup.train_step.lower(holder["state"], batch, key).compile())

    def run():
      holder["state"], out = compiled(holder["state"], batch, key)
      float(out["loss"])
    return run, jaxpr

  steps, batch = ours.finetune_setup(_worker_args())
  params = steps.init_params(0)
  if FLAGS.task == "infer":
    inputs = {k: batch[k] for k in INPUT_KEYS}
    predict = jax.jit(lambda p, b: steps.adapter.predict(nnx.merge(steps.graphdef, p), b))
    with jax.set_mesh(steps.mesh), sharding.use_rules(steps.rules):
      jaxpr = predict.trace(params, inputs).jaxpr

    def run():
      jnp.argmax(steps.predict(params, inputs)["logits"], -1).block_until_ready()
    return run, jaxpr
  holder = {"state": steps.init_state(params)}
  with jax.set_mesh(steps.mesh), sharding.use_rules(steps.rules):
    jaxpr = jax.jit(steps.train_step_fn).trace(holder["state"], batch, key).jaxpr

  def run():
    holder["state"], stats = steps.train_step(holder["state"], batch, key)
    float(stats["loss"])
  return run, jaxpr


def main(argv) -> None:
  del argv
  from electra_jax.runtime import host_memory  # pylint: disable=import-outside-toplevel
  if FLAGS.reuse_host_memory:   # before the first JAX computation, as the binaries do
    host_memory.keep_host_buffers_mapped()
  run, jaxpr = step_and_jaxpr()
  found = products(jaxpr)
  rows = []
  for key, entry in found.items():
    r = time_product(key, entry["params"], FLAGS.repeats)
    c = entry["count"]
    rows.append({"product": r["shape"], "count": c, "GFLOP": c * r["flops"] / 1e9,
                 "ms as traced": 1e3 * c * r["traced_s"], "ms best layout": 1e3 * c * r["best_s"],
                 "GFLOP/s best": r["flops"] / r["best_s"] / 1e9, "_traced_s": c * r["traced_s"],
                 "_best_s": c * r["best_s"], "_flops": c * r["flops"]})
  step_s = _median_s(run, FLAGS.repeats)
  reference_gflops = reference_rate(FLAGS.repeats)
  traced_s = sum(r["_traced_s"] for r in rows)
  best_s = sum(r["_best_s"] for r in rows)
  flops = sum(r["_flops"] for r in rows)
  rows.sort(key=lambda r: -r["_best_s"])
  print(f"\nmatrix products of our {FLAGS.task} step (ELECTRA-{FLAGS.size}, batch {FLAGS.batch_size} x "
        f"{FLAGS.seq_len}), each timed alone with XLA, {common.cpu_threads()} CPU threads, median of {FLAGS.repeats} "
        f"(load average {os.getloadavg()[0]:.2f}); the {min(FLAGS.top, len(rows))} that take longest:")
  print(common.format_table(rows[:FLAGS.top], ["product", "count", "GFLOP", "ms as traced", "ms best layout",
                                               "GFLOP/s best"]))
  at_reference_s = flops / 1e9 / reference_gflops
  print(f"{len(rows)} distinct products, {sum(r['count'] for r in rows)} in all, {flops / 1e9:.1f} GFLOP: alone they "
        f"take {traced_s:.3f} s as traced, {best_s:.3f} s in their best layouts ({flops / best_s / 1e9:.0f} GFLOP/s), "
        f"{at_reference_s:.3f} s at the 2048^3 reference rate ({reference_gflops:.0f} GFLOP/s); the step takes "
        f"{step_s:.3f} s")
  out = {"benchmark": "product_bound", "task": FLAGS.task, "size": FLAGS.size, "batch_size": FLAGS.batch_size,
         "seq_len": FLAGS.seq_len, "cpu_threads": common.cpu_threads(), "load": list(os.getloadavg()),
         "products_gflop": flops / 1e9, "products_traced_s": traced_s, "products_best_s": best_s, "step_s": step_s,
         "reference_gflops": reference_gflops, "products_at_reference_s": at_reference_s,
         "products": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]}
  if FLAGS.target_s:
    left = FLAGS.target_s - best_s
    out.update(target_s=FLAGS.target_s, left_for_the_rest_s=left,
               left_for_the_rest_at_reference_s=FLAGS.target_s - at_reference_s)
    print(f"target {FLAGS.target_s:.3f} s: the products alone at their best layouts take "
          f"{100 * best_s / FLAGS.target_s:.0f}% of it, leaving {left:.3f} s for every other op (the step now spends "
          f"{step_s - best_s:.3f} s beyond that floor); at the reference rate they would take "
          f"{100 * at_reference_s / FLAGS.target_s:.0f}%, leaving {FLAGS.target_s - at_reference_s:.3f} s")
  print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
