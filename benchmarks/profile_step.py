"""Where the time of our pretraining step goes: interleaved A/B timings of step variants and of its parts, plus HLO facts.

    python benchmarks/profile_step.py                                   # ELECTRA-Small, batch 16 x 128, all variants
    python benchmarks/profile_step.py --variants=base,rbg,no_dropout --rounds=8
    python benchmarks/profile_step.py --size=tiny --rounds=2 --variants=base,parts   # smoke test

Variants (each the real `pretrain_lib` step with one thing changed; `parts` times pieces of it):
  base        float32, unrolled layers, threefry keys (what benchmarks/pretrain.py runs)
  rbg         the same step with `jax.random.key(seed, impl="rbg")` (XLA's RngBitGenerator instead of threefry)
  unsafe_rbg  the same with impl="unsafe_rbg"
  no_dropout  hidden and attention dropout 0 (an upper bound of what dropout and its random bits cost)
  bf16        compute dtype bfloat16 (parameters float32)
  scan        jax.lax.scan over the layers
  gelu_erfc   exact GELU as jax.nn.gelu(approximate=False), which XLA lowers through erfc (the model before it took
              torch's form, x / 2 * (1 + erf(x / sqrt 2)), layers.gelu_exact); the same function
  dropout_float  dropout masks from a float32 uniform per element (jax.random.bernoulli: 32 random bits each), as
              the model did before its masks took 16 bits per element (four per threefry hash since change 13)
  attn_heads_major  attention computed in [B, heads, L, head_dim] order: q/k/v projected straight into it with
              einsum('blh,hnd->bnld') on the reshaped kernels, the output projection contracting (heads, head_dim)
              directly; the same arithmetic without the [B, L, N, D] <-> [B, N, L, D] transposes (candidate fix)
  parts       generator fwd+bwd, discriminator fwd+bwd, the optimizer update, each jitted alone
All variants are compiled first; then rounds of one step of each, in turn, so that the load of a shared machine hits
them alike. Reported: median and min seconds per step and the ratio to base. HLO facts of the base step: op counts
(fusions, dots, random-bit generation, scatters, sorts, gathers) and the largest temporary buffers.
Ends with one JSON line.
"""

from __future__ import annotations

import collections
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position

import common  # noqa: E402  pylint: disable=wrong-import-position

VARIANTS = ("base", "rbg", "unsafe_rbg", "no_dropout", "bf16", "scan", "gelu_erfc", "dropout_float",
            "attn_heads_major", "parts")

FLAGS = flags.FLAGS
flags.DEFINE_enum("size", "small", sorted(common.SIZES), "Model size.")
flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_list("variants", ["base", "rbg", "no_dropout", "bf16", "scan", "parts"], f"Any of {VARIANTS}.")
flags.DEFINE_integer("rounds", 6, "Timed rounds (one step of every variant per round) after one warm-up round.")
flags.DEFINE_bool("reuse_host_memory", True, "Steps run inline and reuse their host buffers, as the binaries' "
                  "--reuse_host_memory (their default) sets the process up "
                  "(electra_jax.train.compiling.keep_host_buffers_mapped).")
flags.DEFINE_string("hlo_out", "", "Write the base step's optimized HLO here.")
flags.DEFINE_string("trace_dir", "", "Trace 2 base steps with jax.profiler into this folder and print the time per "
                    "category of XLA op (needs 'base' in --variants).")

# Categories of XLA ops. Matrix products and pure layout copies are recognised from the HLO itself (a fusion is a
# matmul when its computation holds a dot); the rest by the named scope of the JAX code they came from (the model
# names them: layers.dropout, layers.gelu_exact, layers.LayerNorm, the attention core, the optimizer update), which
# XLA keeps in the op_name metadata of forward and backward ops alike. The first match wins.
SCOPES = (
    ("dropout random bits and masks", "dropout_mask"),
    ("GELU", "gelu"),
    ("LayerNorm", "layer_norm"),
    ("attention scores, mask, softmax", "attention"),
    ("optimizer update", "optimizer"),
)
MATMUL, LAYOUT, OTHER = "matrix products", "layout copies, transposes, slices", "other elementwise and reductions"
_LAYOUT_ROOTS = {"copy", "transpose", "slice"}


def _gelu_erfc(x):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.nn.gelu(x, approximate=False)


def _dropout_float(x, rate, rng):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _layer_heads_major(self, x, mask, rng=None):
  """ElectraLayer.__call__ with attention in [B, N, L, D] order (see the attn_heads_major variant)."""
  import math  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.modeling import layers  # pylint: disable=import-outside-toplevel
  r_att, r_out1, r_out2 = layers.split_rng(rng, 3)
  n, d, dt = self.num_heads, self.head_dim, self.dtype
  xc = x.astype(dt)

  def project(dense):
    w = dense.kernel[...].astype(dt).reshape(-1, n, d)
    return jnp.einsum("blh,hnd->bnld", xc, w) + dense.bias[...].astype(dt).reshape(n, 1, d)

  q, k, v = project(self.query), project(self.key), project(self.value)
  if r_att is None or self.attention_rate == 0.0:
    ctx = jax.nn.dot_product_attention(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                                       mask=mask).transpose(0, 2, 1, 3)
  else:
    scores = jnp.einsum("bnqd,bnkd->bnqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(d)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = layers.dropout(jax.nn.softmax(scores, axis=-1), self.attention_rate, r_att).astype(dt)
    ctx = jnp.einsum("bnqk,bnkd->bnqd", probs, v)
  wo = self.attention_output.kernel[...].astype(dt).reshape(n, d, -1)
  a = jnp.einsum("bnld,ndh->blh", ctx, wo) + self.attention_output.bias[...].astype(dt)
  x = self.attention_norm(layers.dropout(a, self.hidden_rate, r_out1) + x)
  f = self.output(self.act(self.intermediate(x)))
  x = self.output_norm(layers.dropout(f, self.hidden_rate, r_out2) + x)
  return sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))


class patched:  # pylint: disable=invalid-name
  """Context: the modeling functions replaced by a candidate while a step variant is built and traced."""

  def __init__(self, gelu_erfc: bool = False, dropout_float: bool = False, attn_heads_major: bool = False):
    self.gelu_erfc, self.dropout_float, self.attn_heads_major = gelu_erfc, dropout_float, attn_heads_major
    self.saved = []

  def __enter__(self):
    from electra_jax.modeling import layers, models  # pylint: disable=import-outside-toplevel
    if self.gelu_erfc:
      original = layers.activation

      def activation(name):
        return _gelu_erfc if name == "gelu" else original(name)

      for mod in (layers, models):
        self.saved.append((mod, "activation", getattr(mod, "activation")))
        mod.activation = activation
    if self.attn_heads_major:
      self.saved.append((layers.ElectraLayer, "__call__", layers.ElectraLayer.__call__))
      layers.ElectraLayer.__call__ = _layer_heads_major
    if self.dropout_float:
      for mod in (layers, models):
        self.saved.append((mod, "dropout", getattr(mod, "dropout")))
        mod.dropout = _dropout_float
    return self

  def __exit__(self, *exc):
    for mod, name, value in reversed(self.saved):
      setattr(mod, name, value)


def _setup(size, batch_size, seq_len, *, dtype="float32", scan=False, dropout=True):
  import argparse  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import ours  # pylint: disable=import-outside-toplevel
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  args = argparse.Namespace(size=size, layers=None, batch_size=batch_size, seq_len=seq_len, dtype=dtype, scan=scan,
                            remat="none")
  c = ours.pretrain_config(args)
  if not dropout:
    c.model.hidden_dropout_prob = 0.0
    c.model.attention_probs_dropout_prob = 0.0
  mesh = pretrain_lib.build_mesh(c, jax.devices()[:1])
  return pretrain_lib.build_setup(c, mesh, vocab_size=30522, ids=ours.SPECIAL_IDS)


def hlo_facts(text: str) -> dict:
  """Counts of interesting ops in an optimized HLO module and the largest non-parameter buffers of its entry."""
  ops = collections.Counter()
  for m in re.finditer(r"=\s*[a-z0-9\[\]{}, ]*?\s([a-z][a-z0-9-]*)\(", text):
    ops[m.group(1)] += 1
  keys = ("fusion", "dot", "convolution", "rng-bit-generator", "scatter", "sort", "gather", "while", "custom-call",
          "transpose", "copy", "reduce", "dynamic-slice", "dynamic-update-slice", "all-reduce")
  return {k: ops.get(k, 0) for k in keys}


def _hlo_index(text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (category by HLO content or "", JAX op_name metadata)} of an optimized HLO module.

  A fusion (or op) is a matrix product when its computation holds a dot, and a layout op when its result is a copy,
  transpose or slice (seen through bitcasts): e.g. a bias add fused into the transposition that follows it.
  """
  comps: dict[str, dict] = {}
  instrs = []
  current = None
  pattern = re.compile(r"^\s*(ROOT )?%?([\w.-]+) = \S+ ([a-z][a-z0-9-]*)\((.*)$")
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.-]+) \(.*\{$", line)
    if head:
      current = comps.setdefault(head.group(1), {"ops": {}, "root": None})
      continue
    m = pattern.match(line)
    if not m:
      continue
    root, name, opcode, rest = m.groups()
    operand = re.match(r"\s*%?([\w.-]+)", rest)
    if current is not None:
      current["ops"][name] = (opcode, operand.group(1) if operand else "")
      if root:
        current["root"] = name
    called = re.search(r"calls=%?([\w.-]+)", rest)
    op = re.search(r'op_name="([^"]*)"', rest)
    instrs.append((name, opcode, called.group(1) if called else None, op.group(1) if op else ""))

  def result_op(comp):   # the opcode that makes a computation's result, looking through bitcasts
    name = comp["root"]
    while name in comp["ops"] and comp["ops"][name][0] == "bitcast":
      name = comp["ops"][name][1]
    return comp["ops"].get(name, ("", ""))[0]

  index = {}
  for name, opcode, called, op_name in instrs:
    comp = comps.get(called) if opcode == "fusion" else None
    ops = {o for o, _ in comp["ops"].values()} if comp else {opcode}
    if ops & {"dot", "convolution"}:
      kind = MATMUL
    elif (result_op(comp) if comp else opcode) in _LAYOUT_ROOTS:
      kind = LAYOUT
    else:
      kind = ""
    index[name] = (kind, op_name)
  return index


def categorize(name: str, index: dict[str, tuple[str, str]]) -> str:
  kind, op_name = index.get(name, ("", ""))
  if kind:
    return kind
  for category, scope in SCOPES:
    if scope in op_name:
      return category
  return OTHER


def trace_breakdown(trace_dir: str, hlo_text: str, steps: int) -> dict[str, float]:
  """ms per step of each op category, from the perfetto trace jax.profiler wrote (op events named as in the HLO)."""
  import glob  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  files = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")))
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[-1]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  index = _hlo_index(hlo_text)
  out: dict[str, float] = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e.get("name") not in index:
      continue
    out[categorize(e["name"], index)] += e.get("dur", 0) / 1e3 / steps
  return dict(out)


def main(argv) -> None:
  del argv
  from electra_jax.train import compiling  # pylint: disable=import-outside-toplevel
  if FLAGS.reuse_host_memory:   # before the first JAX computation, as the binaries do
    compiling.keep_host_buffers_mapped()
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel

  bad = [v for v in FLAGS.variants if v not in VARIANTS]
  if bad:
    raise app.UsageError(f"--variants: unknown {bad}; choose from {VARIANTS}")
  host = common.make_batch(FLAGS.batch_size, FLAGS.seq_len)
  batch = {k: jnp.asarray(host[k]) for k in ("input_ids", "input_mask", "segment_ids")}
  runners: dict[str, object] = {}
  compile_s: dict[str, float] = {}
  facts = {}

  def add_step(name, setup, impl="threefry2x32"):
    state = pretrain_lib.init_state(setup)
    key = jax.random.key(0, impl=impl)
    with jax.set_mesh(setup.mesh), sharding.use_rules(setup.rules):
      t0 = time.perf_counter()
      compiled = setup.train_step.lower(state, batch, key).compile()
      compile_s[name] = time.perf_counter() - t0
    holder = {"state": state}
    step = compiling.ready_step(compiled)   # as compiling.compile_step readies the binaries' step

    def run():
      holder["state"], out = step(holder["state"], batch, key)
      float(out["loss"])

    runners[name] = run
    return compiled

  base_dims = dict(size=FLAGS.size, batch_size=FLAGS.batch_size, seq_len=FLAGS.seq_len)
  for v in FLAGS.variants:
    if v == "base":
      compiled = add_step(v, _setup(**base_dims))
      text = compiled.as_text()
      facts = hlo_facts(text)
      if FLAGS.hlo_out:
        with open(FLAGS.hlo_out, "w", encoding="utf-8") as f:
          f.write(text)
    elif v in ("rbg", "unsafe_rbg"):
      add_step(v, _setup(**base_dims), impl=v)
    elif v == "no_dropout":
      add_step(v, _setup(**base_dims, dropout=False))
    elif v == "bf16":
      add_step(v, _setup(**base_dims, dtype="bfloat16"))
    elif v == "scan":
      add_step(v, _setup(**base_dims, scan=True))
    elif v in ("gelu_erfc", "dropout_float", "attn_heads_major"):
      with patched(gelu_erfc=v == "gelu_erfc", dropout_float=v == "dropout_float",
                   attn_heads_major=v == "attn_heads_major"):
        add_step(v, _setup(**base_dims))
    elif v == "parts":
      setup = _setup(**base_dims)
      state = pretrain_lib.init_state(setup)
      params = state["params"]
      cfg = setup.step_config
      key = jax.random.key(0)
      ids, mask, seg = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
      m = pretrain_lib.mask_tokens(key, ids, mask, mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions,
                                   mask_id=cfg.mask_id, ignore_ids=(0, 101, 102, 103), vocab_size=cfg.vocab_size)

      def gen_loss(p):
        model = nnx.merge(setup.graphdef, p, setup.rest)
        out = model.generator(m.input_ids, mask, seg, masked_positions=m.positions, dropout_rng=key)
        return pretrain_lib.masked_lm_loss(out.logits, m.targets, m.weights)[0]

      def disc_loss(p):
        model = nnx.merge(setup.graphdef, p, setup.rest)
        logits = model.discriminator(ids, mask, seg, dropout_rng=key).logits
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, (ids % 2).astype(jnp.float32)))

      grads = jax.tree.map(jnp.ones_like, params)

      def opt_update(p, o):
        updates, o = setup.tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o

      parts = {"gen_fwd_bwd": jax.jit(jax.grad(gen_loss)), "disc_fwd_bwd": jax.jit(jax.grad(disc_loss))}
      for name, fn in parts.items():
        t0 = time.perf_counter()
        compiled = fn.lower(params).compile()
        compile_s[name] = time.perf_counter() - t0
        runners[name] = lambda c=compiled: jax.block_until_ready(c(params))
      upd = jax.jit(opt_update).lower(params, state["opt_state"]).compile()
      runners["optimizer_update"] = lambda: jax.block_until_ready(upd(params, state["opt_state"]))

  breakdown = {}
  if FLAGS.trace_dir and "base" in runners:
    runners["base"]()
    with jax.profiler.trace(FLAGS.trace_dir, create_perfetto_trace=True):
      for _ in range(2):
        runners["base"]()
    breakdown = trace_breakdown(FLAGS.trace_dir, text, 2)
  times: dict[str, list[float]] = {name: [] for name in runners}
  for r in range(FLAGS.rounds + 1):
    for name, run in runners.items():
      t0 = time.perf_counter()
      run()
      if r:
        times[name].append(time.perf_counter() - t0)

  base = statistics.median(times["base"]) if "base" in times else None
  rows, out = [], {}
  for name, ts in times.items():
    med = statistics.median(ts)
    out[name] = {"median_s": med, "min_s": min(ts), "compile_s": compile_s.get(name),
                 "vs_base": med / base if base else None}
    rows.append({"variant": name, "median_s": med, "min_s": min(ts), "vs_base": out[name]["vs_base"],
                 "compile_s": compile_s.get(name)})
  print(f"\nour pretraining step, {FLAGS.size}, batch {FLAGS.batch_size} x {FLAGS.seq_len}, {FLAGS.rounds} "
        f"interleaved rounds (load average {os.getloadavg()[0]:.2f})")
  print(common.format_table(rows, ["variant", "median_s", "min_s", "vs_base", "compile_s"]))
  if facts:
    print("HLO of the base step (op counts):", json.dumps(facts))
  if breakdown:
    total = sum(breakdown.values())
    print(f"\nbase step, XLA op time by category (profiler trace, {total:.0f} ms of op time per step; ops of the two "
          "threads add up):")
    rows_b = [{"category": k, "ms_per_step": v, "share": v / total}
              for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])]
    print(common.format_table(rows_b, ["category", "ms_per_step", "share"]))
  print(json.dumps({"benchmark": "profile_step", "size": FLAGS.size, "batch_size": FLAGS.batch_size,
                    "seq_len": FLAGS.seq_len, "rounds": FLAGS.rounds, "variants": out, "hlo_ops": facts,
                    "op_time_ms_per_step": breakdown, "reuse_host_memory": FLAGS.reuse_host_memory,
                    "load": list(os.getloadavg())}, sort_keys=True))


if __name__ == "__main__":
  app.run(main)
