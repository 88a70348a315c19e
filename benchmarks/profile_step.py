"""Where our pretraining step's time goes: interleaved A/B timings of step variants and of its parts, plus HLO facts.

    python benchmarks/profile_step.py                                   # ELECTRA-Small, batch 16 x 128, all variants
    python benchmarks/profile_step.py --variants=base,rbg,no_dropout --rounds=8
    python benchmarks/profile_step.py --size=tiny --rounds=2 --variants=base,parts   # smoke test
    # on a GPU (JAX's default device there), the setting of benchmarks/gpu.sh, with a kernel-level profile:
    python benchmarks/profile_step.py --dtype=bfloat16 --batch_size=128 --variants=base --trace_dir=/tmp/tr --top_ops=45

It runs on JAX's default device. On a GPU each variant compiles for 45-90 s (XLA autotunes its GEMMs), so name few.
--kernels picks the model's kernels in every variant (config.model.kernels: auto, reference); the base step's HLO says
whether attention became a fused kernel.

Variants (each the real `pretrain_lib` step with one thing changed; `parts` times pieces of it):
  base        --dtype (float32 unless told), unrolled layers, threefry keys (what benchmarks/pretrain.py runs)
  rbg         the same step with `jax.random.key(seed, impl="rbg")` (XLA's RngBitGenerator instead of threefry)
  unsafe_rbg  the same with impl="unsafe_rbg"
  no_dropout  hidden and attention dropout 0 (an upper bound of what dropout and its random bits cost)
  bf16        compute dtype bfloat16 (parameters float32)
  scan        jax.lax.scan over the layers
  gelu_erfc   exact GELU as jax.nn.gelu(approximate=False), which XLA lowers through erfc (the model before it took
              torch's form, x / 2 * (1 + erf(x / sqrt 2)), ops.gelu); the same function
  dropout_float  dropout masks from a float32 uniform per element (jax.random.bernoulli: 32 random bits each), as
              the model did before its masks took 16 bits per element (four per threefry hash since change 13)
  attn_heads_major  attention computed in [B, heads, L, head_dim] order: q/k/v projected straight into it with
              einsum('blh,hnd->bnld') on the reshaped kernels, the output projection contracting (heads, head_dim)
              directly; the same arithmetic without the [B, L, N, D] <-> [B, N, L, D] transposes (candidate fix)
  parts       generator fwd+bwd, discriminator fwd+bwd, the optimizer update, each jitted alone
All variants are compiled first; then rounds of one step of each, in turn, so that the load of a shared machine hits
them alike. Reported: median and min seconds per step and the ratio to base. HLO facts of the base step: op counts
(fusions, dots, random-bit generation, scatters, sorts, gathers). With --trace_dir: op (or GPU kernel) time per step
by category, the ops per step, the device's busy time on an accelerator, and with --top_ops the busiest ops.
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
                  "(electra_jax.runtime.host_memory.keep_host_buffers_mapped).")
flags.DEFINE_string("hlo_out", "", "Write the base step's optimized HLO here.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of every variant but bf16 (parameters "
                  "float32); bfloat16 with --batch_size=128 is the GPU setting of benchmarks/gpu.sh.")
flags.DEFINE_string("trace_dir", "", "Trace --trace_steps base steps with jax.profiler into this folder and print the "
                    "time per category of XLA op (needs 'base' in --variants).")
flags.DEFINE_integer("trace_steps", 2, "Steps traced with --trace_dir.")
flags.DEFINE_integer("top_ops", 0, "With --trace_dir, also list the N ops that take the most time per step.")
flags.DEFINE_string("kernels", "auto", "The model's kernel choice in every variant (config.model.kernels).")
flags.DEFINE_float("attention_dropout", 0.1, "attention_probs_dropout_prob of every variant but no_dropout (ELECTRA's "
                   "0.1; the fused attention kernels need 0).")
flags.DEFINE_string("json_out", "", "Also write the final JSON line to this file.")

# Categories of XLA ops. Matrix products and pure layout copies are recognised from the HLO itself (a fusion is a
# matmul when its computation holds a dot); the rest by the named scope of the JAX code they came from (the model
# names them: ops.dropout, ops.gelu, layers.LayerNorm, the attention core, the optimizer update), which
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


def _dropout_float(x, rate, rng, *, kernels="auto"):
  del kernels
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _layer_heads_major(self, x, mask, rng=None, positions=None):
  """ElectraLayer.__call__ with attention in [B, N, L, D] order (see the attn_heads_major variant)."""
  if positions is not None:
    raise NotImplementedError("attn_heads_major: the pretraining step computes every position of the last layer")
  import math  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from electra_jax import ops, sharding  # pylint: disable=import-outside-toplevel
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
    probs = ops.dropout(jax.nn.softmax(scores, axis=-1), self.attention_rate, r_att, kernels=self.kernels).astype(dt)
    ctx = jnp.einsum("bnqk,bnkd->bnqd", probs, v)
  wo = self.attention_output.kernel[...].astype(dt).reshape(n, d, -1)
  a = jnp.einsum("bnld,ndh->blh", ctx, wo) + self.attention_output.bias[...].astype(dt)
  x = self.attention_norm(ops.dropout(a, self.hidden_rate, r_out1, kernels=self.kernels) + x)
  f = self.output(self.act(self.intermediate(x)))
  x = self.output_norm(ops.dropout(f, self.hidden_rate, r_out2, kernels=self.kernels) + x)
  return sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))


class patched:  # pylint: disable=invalid-name
  """Context: the modeling functions replaced by a candidate while a step variant is built and traced."""

  def __init__(self, gelu_erfc: bool = False, dropout_float: bool = False, attn_heads_major: bool = False):
    self.gelu_erfc, self.dropout_float, self.attn_heads_major = gelu_erfc, dropout_float, attn_heads_major
    self.saved = []

  def __enter__(self):
    from electra_jax import ops  # pylint: disable=import-outside-toplevel
    from electra_jax.modeling import layers, models, original_heads  # pylint: disable=import-outside-toplevel
    if self.gelu_erfc:
      original = layers.activation

      def activation(name, kernels="auto"):
        return _gelu_erfc if name == "gelu" else original(name, kernels)

      for mod in (layers, models, original_heads):
        self.saved.append((mod, "activation", getattr(mod, "activation")))
        mod.activation = activation
    if self.attn_heads_major:
      self.saved.append((layers.ElectraLayer, "__call__", layers.ElectraLayer.__call__))
      layers.ElectraLayer.__call__ = _layer_heads_major
    if self.dropout_float:   # every module's dropout goes through ops.dropout
      self.saved.append((ops, "dropout", ops.dropout))
      ops.dropout = _dropout_float
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
                            remat="none", kernels=FLAGS.kernels, attention_dropout=FLAGS.attention_dropout)
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

  A fusion (or op) is a matrix product when its computation holds a dot (or it calls a GEMM library, as on a GPU), and
  a layout op when its result is a copy, transpose or slice (seen through bitcasts): e.g. a bias add fused into the
  transposition that follows it.
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
    target = re.search(r'custom_call_target="([^"]*)"', rest)
    instrs.append((name, opcode, called.group(1) if called else None, op.group(1) if op else "",
                   target.group(1) if target else ""))

  def result_op(comp):   # the opcode that makes a computation's result, looking through bitcasts
    name = comp["root"]
    while name in comp["ops"] and comp["ops"][name][0] == "bitcast":
      name = comp["ops"][name][1]
    return comp["ops"].get(name, ("", ""))[0]

  index = {}
  for name, opcode, called, op_name, target in instrs:
    comp = comps.get(called) if opcode == "fusion" else None
    ops = {o for o, _ in comp["ops"].values()} if comp else {opcode}
    if ops & {"dot", "convolution"} or re.search(r"gemm|matmul|conv", target):   # GPU: cuBLAS / cuDNN calls
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


def trace_breakdown(trace_dir: str, hlo_text: str, steps: int) -> dict:
  """Op time per step from the perfetto trace that jax.profiler wrote into `trace_dir` (see `events_breakdown`)."""
  import glob  # pylint: disable=import-outside-toplevel
  import gzip  # pylint: disable=import-outside-toplevel
  files = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")))
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[-1]) as f:
    data = json.load(f)
  return events_breakdown(data["traceEvents"] if isinstance(data, dict) else data, hlo_text, steps)


_GEMM_KERNEL = re.compile(r"gemm|nvjet|cutlass|cublas|xmma|matmul", re.IGNORECASE)


def events_breakdown(events: list[dict], hlo_text: str, steps: int) -> dict:
  """ms per step of each op category, the busiest ops, and (on an accelerator) the device's busy time, the union of
  its kernels' intervals, from trace events of `steps` runs of the step whose optimized HLO is `hlo_text`.

  On a CPU the op events carry the HLO instruction's name. On a GPU the kernels sit on the device's tracks, named
  after their instruction with '.' and '-' as '_' (kernels of identical fusions share the first one's name; inside a
  CUDA graph, args.hlo_op names the command buffer); library GEMM kernels (cuBLAS's nvjet, cutlass) have their own
  names and count as matrix products. Other kernels that name no instruction count as "unattributed".
  """
  processes = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in processes.items() if re.search(r"/device:(GPU|TPU)", name)}
  index = _hlo_index(hlo_text)
  kernel_names = {re.sub(r"[.-]", "_", name): name for name in index}
  categories: dict[str, float] = collections.Counter()
  per_op: dict[str, list] = {}
  intervals = []
  for e in events:
    if e.get("ph") != "X" or (devices and e.get("pid") not in devices):
      continue
    kernel = e.get("name", "")
    name = kernel if kernel in index else kernel_names.get(kernel) or (e.get("args") or {}).get("hlo_op")
    if name in index:
      category = categorize(name, index)
    elif devices:
      name, category = kernel, MATMUL if _GEMM_KERNEL.search(kernel) else "unattributed"
    else:
      continue   # on a CPU, the runtime's own events
    ms = e.get("dur", 0) / 1e3 / steps
    categories[category] += ms
    entry = per_op.setdefault(name, [category, 0.0, 0])
    entry[1] += ms
    entry[2] += 1
    if devices:
      intervals.append((e["ts"], e["ts"] + e.get("dur", 0)))
  busy, end = 0.0, float("-inf")
  for a, b in sorted(intervals):
    busy += max(0.0, b - max(a, end))
    end = max(end, b)
  top = sorted(([name, *v] for name, v in per_op.items()), key=lambda r: -r[2])
  return {"categories": dict(categories), "device_busy_ms": busy / 1e3 / steps if devices else None,
          "ops_per_step": sum(v[2] for v in per_op.values()) / steps,
          "top": [{"op": n, "category": c, "ms_per_step": ms, "calls_per_step": k / steps,
                   "scope": index.get(n, ("", ""))[1][-60:]} for n, c, ms, k in top]}


def main(argv) -> None:
  del argv
  from electra_jax.runtime import compile as compiling  # pylint: disable=import-outside-toplevel
  from electra_jax.runtime import host_memory  # pylint: disable=import-outside-toplevel
  if FLAGS.reuse_host_memory:   # before the first JAX computation, as the binaries do
    host_memory.keep_host_buffers_mapped()
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.train import masking, pretrain_lib  # pylint: disable=import-outside-toplevel

  bad = [v for v in FLAGS.variants if v not in VARIANTS]
  if bad:
    raise app.UsageError(f"--variants: unknown {bad}; choose from {VARIANTS}")
  host = common.make_batch(FLAGS.batch_size, FLAGS.seq_len)
  batch = {k: jnp.asarray(host[k]) for k in ("input_ids", "input_mask", "segment_ids")}
  runners: dict[str, object] = {}
  compile_s: dict[str, float] = {}
  facts, fused = {}, {}

  def add_step(name, setup, impl="threefry2x32"):
    state = pretrain_lib.init_state(setup)
    key = jax.random.key(0, impl=impl)
    placed = jax.device_put(batch, setup.batch_sharding)   # as benchmarks/workers/ours.py: the same program
    with jax.set_mesh(setup.mesh), sharding.use_rules(setup.rules):
      t0 = time.perf_counter()
      compiled = setup.train_step.lower(state, placed, key).compile()
      compile_s[name] = time.perf_counter() - t0
    holder = {"state": state}
    step = compiling.ready_step(compiled)   # as compiling.compile_step readies the binaries' step

    def run():
      holder["state"], out = step(holder["state"], placed, key)
      float(out["loss"])

    runners[name] = run
    return compiled

  base_dims = dict(size=FLAGS.size, batch_size=FLAGS.batch_size, seq_len=FLAGS.seq_len, dtype=FLAGS.dtype)
  for v in FLAGS.variants:
    if v == "base":
      compiled = add_step(v, _setup(**base_dims))
      text = compiled.as_text()
      facts = hlo_facts(text)
      fused = compiling.fused_kernels(text)
      if FLAGS.hlo_out:
        with open(FLAGS.hlo_out, "w", encoding="utf-8") as f:
          f.write(text)
    elif v in ("rbg", "unsafe_rbg"):
      add_step(v, _setup(**base_dims), impl=v)
    elif v == "no_dropout":
      add_step(v, _setup(**base_dims, dropout=False))
    elif v == "bf16":
      add_step(v, _setup(**{**base_dims, "dtype": "bfloat16"}))
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
      m = masking.mask_tokens(key, ids, mask, mask_prob=cfg.mask_prob, max_predictions=cfg.max_predictions,
                                   mask_id=cfg.mask_id, ignore_ids=(0, 101, 102, 103), vocab_size=cfg.vocab_size)

      def gen_loss(p):
        model = nnx.merge(setup.graphdef, p, setup.rest)
        out = model.generator(m.input_ids, mask, seg, masked_positions=m.positions, dropout_rng=key)
        return masking.masked_lm_loss(out.logits, m.targets, m.weights)[0]

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

  breakdown, trace = {}, {}
  if FLAGS.trace_dir and "base" in runners:
    runners["base"]()
    t0 = time.perf_counter()
    with jax.profiler.trace(FLAGS.trace_dir, create_perfetto_trace=True):
      for _ in range(FLAGS.trace_steps):
        runners["base"]()
    traced_s = (time.perf_counter() - t0) / FLAGS.trace_steps
    trace = trace_breakdown(FLAGS.trace_dir, text, FLAGS.trace_steps)
    breakdown = trace["categories"]
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
    print(f"kernels={FLAGS.kernels}: fused attention kernel {'yes' if fused['fused_attention'] else 'no'}"
          f" (hand-written kernel calls: {fused['kernel_calls'] or 'none'})")
  if breakdown:
    total = sum(breakdown.values())
    print(f"\nbase step, XLA op time by category (profiler trace, {total:.0f} ms of op time per step; ops of the two "
          "threads add up):")
    rows_b = [{"category": k, "ms_per_step": v, "share": v / total}
              for k, v in sorted(breakdown.items(), key=lambda kv: -kv[1])]
    print(common.format_table(rows_b, ["category", "ms_per_step", "share"]))
    unit = "ops" if trace["device_busy_ms"] is None else "kernels"
    print(f"{trace['ops_per_step']:.0f} {unit} per step; wall time per traced step {traced_s * 1e3:.1f} ms", end="")
    if trace["device_busy_ms"] is not None:
      print(f", device busy {trace['device_busy_ms']:.1f} ms (idle {traced_s * 1e3 - trace['device_busy_ms']:.1f})")
    else:
      print()
    if FLAGS.top_ops:
      print(f"\nthe {FLAGS.top_ops} ops with the most time per step:")
      print(common.format_table(trace["top"][:FLAGS.top_ops], ["op", "category", "ms_per_step", "calls_per_step",
                                                                   "scope"]))
  line = json.dumps({"benchmark": "profile_step", "size": FLAGS.size, "batch_size": FLAGS.batch_size,
                     "seq_len": FLAGS.seq_len, "rounds": FLAGS.rounds, "variants": out, "hlo_ops": facts,
                     "kernels": FLAGS.kernels, "attention_dropout": FLAGS.attention_dropout, "fused": fused,
                     "op_time_ms_per_step": breakdown,
                     "reuse_host_memory": FLAGS.reuse_host_memory, "dtype": FLAGS.dtype,
                     "device_kind": jax.devices()[0].device_kind, "trace": {**trace, "top": trace.get("top", [])[:50]},
                     "load": list(os.getloadavg())}, sort_keys=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      f.write(line + "\n")
  print(line)


if __name__ == "__main__":
  app.run(main)
