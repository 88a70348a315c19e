r"""Times the replication harness's stages at a size and extrapolates a suite's total (wall and CPU seconds).

    python benchmarks/replication/time_stages.py --size=micro --suite=efficiency --steps=20

Pretraining: each variant's jitted step (configs/replicate.py + the variant's overrides) on a batch of WikiText-2
tokens, compile time, then the median wall time and the mean process CPU time of --steps steps. Fine-tuning: one
task's run of finetune_lib (from scratch at the pretraining architecture) with 1 and 2 seeds and with 2x the steps, so
that the compile/data overhead, the per-seed cost and the per-step cost separate; the dev-set evaluation is scaled to
each task's dev size. On a shared machine wall times run long; the CPU seconds (both threads of XLA's pool added up)
bound what a quiet machine needs from below when they are divided by 2 and from above undivided.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("size", "micro", "configs/replicate.py size")
flags.DEFINE_string("suite", "efficiency", "suite(s) whose variants to time")
flags.DEFINE_integer("steps", 20, "timed pretraining steps per variant (after 3 warm-up steps)")
flags.DEFINE_integer("finetune_steps", 40, "fine-tuning steps of the timed runs")
flags.DEFINE_string("finetune_task", "sst2", "task of the timed fine-tuning runs")
flags.DEFINE_boolean("finetune", True, "time fine-tuning")
flags.DEFINE_boolean("pretrain", True, "time pretraining")

DEV_SIZES = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "rte": 277, "qnli": 5463}


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def time_pretraining(hc, variants) -> dict[str, dict[str, float]]:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.data import tokenization  # pylint: disable=import-outside-toplevel
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  from benchmarks import common  # pylint: disable=import-outside-toplevel
  tok = tokenization.load_tokenizer(hc.vocab_file)
  ids = tokenization.special_ids(tok)
  out = {}
  for key, pv in variants.items():
    if not pv.variant.pretrain:
      continue
    c = pv.config
    batch = common.make_batch(batch_size=int(c.batch_size), seq_len=int(c.max_seq_length))
    setup = pretrain_lib.build_setup(c, sharding.make_mesh({"data": 1}, jax.devices()[:1]),
                                     vocab_size=tok.get_vocab_size(), ids=ids)
    state = pretrain_lib.init_state(setup)
    b = {k: jax.device_put(np.asarray(v), setup.batch_sharding) for k, v in batch.items()
         if k in ("input_ids", "input_mask", "segment_ids")}
    t0 = time.time()
    state, o = pretrain_lib.run_step(setup, state, b, jax.random.key(0))
    jax.block_until_ready(o)
    compile_s = time.time() - t0
    for i in range(2):
      state, o = pretrain_lib.run_step(setup, state, b, jax.random.key(i + 1))
    jax.block_until_ready(o)
    walls, cpu0 = [], _cpu()
    for i in range(FLAGS.steps):
      t = time.time()
      state, o = pretrain_lib.run_step(setup, state, b, jax.random.key(i + 3))
      jax.block_until_ready(o)
      walls.append(time.time() - t)
    cpu = (_cpu() - cpu0) / FLAGS.steps
    out[key] = {"compile_s": compile_s, "wall_s_per_step": statistics.median(walls), "cpu_s_per_step": cpu,
                "gflop_per_step": pv.flops_per_step / 1e9, "steps": pv.steps,
                "run_wall_s": pv.steps * statistics.median(walls), "run_cpu_s": pv.steps * cpu}
    print(f"{key:22s} compile {compile_s:5.1f} s | step {statistics.median(walls) * 1e3:7.1f} ms wall, "
          f"{cpu * 1e3:7.1f} ms CPU | {pv.flops_per_step / 1e9:6.1f} GFLOP | {pv.steps} steps -> "
          f"{pv.steps * statistics.median(walls) / 60:5.1f} min wall, {pv.steps * cpu / 60:5.1f} min CPU",
          flush=True)
  return out


def time_finetuning(hc) -> dict[str, float]:
  from electra_jax.experiments import run_configs, suites  # pylint: disable=import-outside-toplevel
  from electra_jax.train import finetune_lib  # pylint: disable=import-outside-toplevel
  pre = run_configs.pretrain_config(hc, suites.VARIANTS["electra"], tempfile.mkdtemp())
  runs = {}
  for name, seeds, steps in (("a", 1, FLAGS.finetune_steps), ("b", 2, FLAGS.finetune_steps),
                             ("c", 1, 2 * FLAGS.finetune_steps)):
    c = run_configs.finetune_config(hc, FLAGS.finetune_task, "", architecture=pre)
    c.num_trials = seeds
    c.num_train_steps = steps
    t, cpu0 = time.time(), _cpu()
    finetune_lib.train_and_evaluate(c, tempfile.mkdtemp())
    runs[name] = (time.time() - t, _cpu() - cpu0)
  per_seed = (runs["b"][0] - runs["a"][0], runs["b"][1] - runs["a"][1])
  per_step = ((runs["c"][0] - runs["a"][0]) / FLAGS.finetune_steps,
              (runs["c"][1] - runs["a"][1]) / FLAGS.finetune_steps)
  overhead = (runs["a"][0] - per_seed[0], runs["a"][1] - per_seed[1])
  seed_fixed = (per_seed[0] - FLAGS.finetune_steps * per_step[0], per_seed[1] - FLAGS.finetune_steps * per_step[1])
  out = {"overhead_wall_s": overhead[0], "overhead_cpu_s": overhead[1], "per_step_wall_s": per_step[0],
         "per_step_cpu_s": per_step[1], "per_seed_fixed_wall_s": seed_fixed[0], "per_seed_fixed_cpu_s": seed_fixed[1],
         "task": FLAGS.finetune_task}
  print(f"fine-tuning ({FLAGS.finetune_task}): overhead per task {overhead[0]:.1f} s wall / {overhead[1]:.1f} s CPU; "
        f"per step {per_step[0] * 1e3:.1f} ms wall / {per_step[1] * 1e3:.1f} ms CPU; per seed besides the steps "
        f"(init, dev evaluation) {seed_fixed[0]:.1f} s wall / {seed_fixed[1]:.1f} s CPU", flush=True)
  return out


def main(argv) -> None:
  del argv
  import logging  # pylint: disable=import-outside-toplevel
  logging.getLogger().setLevel(logging.WARNING)
  from electra_jax.experiments import harness, run_configs, suites  # pylint: disable=import-outside-toplevel
  hc = run_configs.config_module("replicate").get_config(f"size={FLAGS.size}")
  names = suites.suite_names(FLAGS.suite)
  variants, stages, budget = harness.plan(names, hc, tempfile.mkdtemp())
  load = os.getloadavg()
  pre = time_pretraining(hc, variants) if FLAGS.pretrain else {}
  ft = time_finetuning(hc) if FLAGS.finetune else None
  seq = {s.task: int(hc.finetune.get("max_seq_length_per_task", {}).get(s.task, hc.finetune.max_seq_length))
         for s in stages if s.kind == "finetune"}
  timed_seq = seq.get(FLAGS.finetune_task, int(hc.finetune.max_seq_length))
  total_wall = sum(v["run_wall_s"] + v["compile_s"] for v in pre.values())
  total_cpu = sum(v["run_cpu_s"] for v in pre.values())
  n_ft = sum(1 for s in stages if s.kind == "finetune")
  if ft:
    seeds, steps = int(hc.finetune.seeds), int(hc.finetune.num_train_steps)
    eval_scale = {s.task: DEV_SIZES.get(s.task, 1000) / DEV_SIZES[FLAGS.finetune_task] for s in stages
                  if s.kind == "finetune"}
    for s in stages:
      if s.kind != "finetune":
        continue
      sc, ls = eval_scale[s.task], seq[s.task] / timed_seq    # evaluation ~ dev size, steps ~ sequence length
      total_wall += ft["overhead_wall_s"] + seeds * (steps * ls * ft["per_step_wall_s"] +
                                                     sc * ft["per_seed_fixed_wall_s"])
      total_cpu += ft["overhead_cpu_s"] + seeds * (steps * ls * ft["per_step_cpu_s"] + sc * ft["per_seed_fixed_cpu_s"])
  summary = {"size": FLAGS.size, "suite": FLAGS.suite, "load_before": load, "load_after": os.getloadavg(),
             "budget_flops": budget["flops"], "pretrain": pre, "finetune": ft, "finetune_stages": n_ft,
             "total_wall_min_as_measured": total_wall / 60, "total_cpu_min": total_cpu / 60}
  print(f"{FLAGS.suite} at {FLAGS.size}: {len(variants)} pretraining runs, {n_ft} fine-tuning stages; extrapolated "
        f"{total_wall / 60:.1f} min wall as measured (load {load[0]:.1f} -> {os.getloadavg()[0]:.1f}), "
        f"{total_cpu / 60:.1f} min of CPU time (quiet 2-core wall between {total_cpu / 120:.1f} and "
        f"{total_cpu / 60:.1f} min, plus compilation)")
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
