"""This project's side of the benchmarks: the real pretraining / fine-tuning steps, timed in a process of their own.

    python benchmarks/workers/ours.py --task=pretrain --batch=/tmp/b.npz --size=small --steps=10 --warmup=3
    python benchmarks/workers/ours.py --task=pretrain --batch=/tmp/b.npz --layers=24 --scan=false --compile_only
    python benchmarks/workers/ours.py --task=finetune --batch=/tmp/c.npz --size=small --steps=10
    python benchmarks/workers/ours.py --task=matmul --matmul_n=2048 --steps=10     # this host's float32 GFLOP/s
    JAX_PLATFORMS=cuda python benchmarks/workers/ours.py --task=pretrain --f32_matmul=tf32 ...   # on a GPU

pretrain: `electra_jax.train.pretrain_lib.build_setup` on configs/pretrain.py (the step the pretraining binary runs:
masking, generator, CDF sampling, discriminator, gen + 50 * disc, AdamW without bias correction, clipping), one CPU
device (JAX_PLATFORMS picks which). finetune: `finetune_lib.Steps` on configs/glue.py with the HF head
(ElectraForSequenceClassification), its train step and its predict function. Reports step times, compile time, XLA's
memory analysis of the compiled step, the process's peak RSS and, on an accelerator, the device's peak bytes in use.
--kernels sets the model's kernel choice (config.model.kernels: auto, reference, ...; a checkout without that field
runs only `auto`, its one implementation); the result says whether the compiled step calls a fused attention kernel.
--f32_matmul sets jax_default_matmul_precision for float32 products (on NVIDIA GPUs JAX's own default is TF32; the
benchmark commands pass `highest` or `tf32` so that both sides of a comparison compute alike). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from electra_jax.runtime import host_memory  # noqa: E402  pylint: disable=wrong-import-position
import common  # noqa: E402  pylint: disable=wrong-import-position

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position


def _bool(text: str) -> bool:
  if text.lower() in ("1", "true", "yes"):
    return True
  if text.lower() in ("0", "false", "no"):
    return False
  raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


# --f32_matmul -> jax_default_matmul_precision.
F32_MATMUL = {"highest": "highest", "tf32": "tensorfloat32"}

SPECIAL_IDS = {"pad": common.PAD_ID, "unk": common.UNK_ID, "cls": common.CLS_ID, "sep": common.SEP_ID,
               "mask": common.MASK_ID}


def pretrain_config(args):
  from configs import pretrain as pretrain_config_module  # pylint: disable=import-outside-toplevel
  dims = common.model_dims(args.size, args.layers)
  c = pretrain_config_module.get_config(f"size={'small' if args.size == 'tiny' else args.size}")
  c.batch_size = args.batch_size
  c.max_seq_length = args.seq_len
  c.model.dtype = args.dtype
  c.model.scan_layers = args.scan
  c.model.remat_policy = args.remat
  c.model.embedding_size = dims["embedding_size"]
  c.model.hidden_size = dims["disc"]["hidden_size"]
  c.model.num_attention_heads = dims["disc"]["num_attention_heads"]
  c.model.intermediate_size = dims["disc"]["intermediate_size"]
  c.model.num_hidden_layers = dims["disc"]["num_hidden_layers"]
  c.mask_prob = dims["mask_prob"]
  c.model.attention_probs_dropout_prob = getattr(args, "attention_dropout", 0.1)
  set_kernels(c, getattr(args, "kernels", "auto"))
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  # No warmup, so that the loss moves as the peers' (constant-rate AdamW) does in a few steps; the step computes the
  # same thing at any learning rate.
  c.optimizer.warmup_steps = 0
  return c


def set_kernels(config, kernels: str) -> None:
  """config.model.kernels (or a top-level config.kernels) = `kernels`; `auto` is also what a config without the field
  computes, anything else on such a config is an error."""
  for holder in (config.get("model"), config):
    if holder is not None and "kernels" in holder:
      holder.kernels = kernels
      return
  if kernels != "auto":
    raise SystemExit(f"--kernels={kernels}: this checkout's config has no kernels field (only 'auto' runs)")


def pretrain_setup(args):
  """(pretrain_lib.Setup, the batch on the device, the initial state) for `args` on one device."""
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  config = pretrain_config(args)
  mesh = pretrain_lib.build_mesh(config, jax.devices()[:1])
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=30522, ids=SPECIAL_IDS)
  host = common.load_batch(args.batch) if args.batch else common.make_batch(args.batch_size, args.seq_len)
  batch = {k: jax.device_put(jnp.asarray(host[k]), setup.batch_sharding)
           for k in ("input_ids", "input_mask", "segment_ids")}
  return setup, batch, pretrain_lib.init_state(setup)


def pretrain(args) -> dict:
  from electra_jax.runtime import compile as compiling  # pylint: disable=import-outside-toplevel
  from electra_jax.train import flops  # pylint: disable=import-outside-toplevel
  setup, batch, state = pretrain_setup(args)
  key = jax.random.key(0)
  with jax.set_mesh(setup.mesh):
    from electra_jax import sharding  # pylint: disable=import-outside-toplevel
    with sharding.use_rules(setup.rules):
      t0 = time.perf_counter()
      lowered = setup.train_step.lower(state, batch, key)
      lower_s = time.perf_counter() - t0
      compiled = lowered.compile()
      compile_s = time.perf_counter() - t0
      run_step = compiling.ready_step(compiled)   # as compiling.compile_step does in the pretraining binary
  text = compiled.as_text()
  result = {"impl": "ours", "task": "pretrain", "dtype": args.dtype, "scan": args.scan, "remat": args.remat,
            "kernels": args.kernels, **compiling.fused_kernels(text),
            "layers": setup.disc_config.num_hidden_layers, "lower_s": lower_s, "compile_s": compile_s,
            "xla_memory": compiling.memory_mib(compiled),
            "n_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"]))),
            "flops_per_step": flops.train_flops_per_step(
                setup.disc_config, setup.gen_config, batch_size=args.batch_size, seq_len=args.seq_len,
                num_predictions=setup.step_config.max_predictions),
            # What the HF peers compute: their ElectraForMaskedLM runs the vocabulary head at every position.
            "flops_per_step_head_everywhere": flops.train_flops_per_step(
                setup.disc_config, setup.gen_config, batch_size=args.batch_size, seq_len=args.seq_len,
                num_predictions=args.seq_len)}
  if args.dump_hlo:
    with open(args.dump_hlo, "w", encoding="utf-8") as f:
      f.write(text)
  if args.compile_only:
    return result
  losses = []
  holder = {"state": state, "step": 0}

  def step():
    holder["state"], out = run_step(holder["state"], batch, jax.random.fold_in(key, holder["step"]))
    holder["step"] += 1
    losses.append(float(out["loss"]))   # the step has run (inline) or is waited for here

  times = common.time_steps(step, args.warmup, args.steps)
  result.update(loss_first=losses[0], loss_last=losses[-1], **common.summarize(times), times=times)
  return result


def finetune_setup(args):
  """(finetune_lib.Steps, the labelled batch on the device) for `args` on one device: the GLUE trainer's steps."""
  from configs import glue as glue_config  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.eval import tasks  # pylint: disable=import-outside-toplevel
  from electra_jax.train import finetune_lib  # pylint: disable=import-outside-toplevel
  dims = common.model_dims(args.size, args.layers)
  config = glue_config.get_config(f"task=mrpc,size={'small' if args.size == 'tiny' else args.size},head=hf")
  for k in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"):
    config.model[k] = dims["disc"][k]
  config.model.embedding_size = dims["embedding_size"]
  config.model.dtype = args.dtype
  config.model.scan_layers = args.scan
  config.model.remat_policy = args.remat
  config.batch_size = args.batch_size
  config.max_seq_length = args.seq_len
  adapter = tasks.GlueAdapter(config, None)
  spec, _, _ = finetune_lib.model_spec(config, adapter)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  rules = sharding.rules_from_config(config.get("sharding_rules"))
  steps = finetune_lib.Steps(spec, adapter, mesh, rules, config=config, num_train_steps=1000)
  host = common.load_batch(args.batch) if args.batch else common.make_classification_batch(args.batch_size,
                                                                                             args.seq_len)
  batch = sharding.put_batch({"input_ids": host["input_ids"], "attention_mask": host["input_mask"],
                               "token_type_ids": host["segment_ids"], "labels": host["labels"]}, mesh, rules)
  return steps, batch


def finetune(args) -> dict:
  from electra_jax.eval.tasks import INPUT_KEYS  # pylint: disable=import-outside-toplevel
  steps, batch = finetune_setup(args)
  params = steps.init_params(0)
  inputs = {k: batch[k] for k in INPUT_KEYS}
  key = jax.random.key(0)
  losses = []
  holder = {"state": steps.init_state(params)}

  def train_step():
    holder["state"], stats = steps.train_step(holder["state"], batch, key)
    losses.append(float(stats["loss"]))

  def infer_step():
    jnp.argmax(steps.predict(holder["state"]["params"], inputs)["logits"], -1).block_until_ready()

  train_times = common.time_steps(train_step, args.warmup, args.steps)
  infer_times = common.time_steps(infer_step, args.warmup, args.steps)
  return {"impl": "ours", "task": "finetune", "dtype": args.dtype, "scan": args.scan,
          "n_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
          "loss_first": losses[0], "loss_last": losses[-1],
          "train": {**common.summarize(train_times), "times": train_times},
          "infer": {**common.summarize(infer_times), "times": infer_times}}


def matmul(args) -> dict:
  """float32 jnp.dot of two n x n matrices: median GFLOP/s over `steps` products after `warmup` (this host's limit)."""
  n = args.matmul_n
  dtype = jnp.dtype(args.dtype)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  dot = jax.jit(jnp.dot)
  times = common.time_steps(lambda: dot(a, b).block_until_ready(), args.warmup, args.steps)
  s = common.summarize(times)
  return {"impl": "matmul", "task": "matmul", "n": n, "dtype": args.dtype, **s,
          "gflops_median": 2.0 * n**3 / s["median_s"] / 1e9, "gflops_best": 2.0 * n**3 / s["min_s"] / 1e9}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", choices=("pretrain", "finetune", "matmul"), required=True)
  p.add_argument("--batch", default="", help=".npz from benchmarks/common.save_batch ('' = make one)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--size", default="small", choices=sorted(common.SIZES))
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--scan", type=_bool, default=False)
  p.add_argument("--remat", default="none")
  p.add_argument("--kernels", default="auto", help="the model's kernel choice (config.model.kernels)")
  p.add_argument("--attention_dropout", type=float, default=0.1, help="attention_probs_dropout_prob (ELECTRA's 0.1)")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--compile_only", action="store_true")
  p.add_argument("--matmul_n", type=int, default=2048)
  p.add_argument("--dump_hlo", default="", help="write the compiled step's optimized HLO to this file")
  p.add_argument("--reuse_host_memory", type=_bool, default=True,
                 help="steps reuse their host buffers, as the binaries' --reuse_host_memory (on by default) does")
  p.add_argument("--f32_matmul", default="default", choices=sorted(F32_MATMUL) + ["default"],
                 help="float32 product precision (default: JAX's own for the platform)")
  args = p.parse_args(argv)
  # As the binaries set the process up (distributed.initialize_from_flags), before the first JAX computation; whether
  # it was applied (only on one CPU device, with glibc) goes into the result.
  reuse_host_memory = args.reuse_host_memory and host_memory.keep_host_buffers_mapped()
  if args.f32_matmul != "default":
    jax.config.update("jax_default_matmul_precision", F32_MATMUL[args.f32_matmul])
  start = time.perf_counter()
  result = {"pretrain": pretrain, "finetune": finetune, "matmul": matmul}[args.task](args)
  device = jax.devices()[0]
  result.update(jax_version=jax.__version__, backend=jax.default_backend(), device_count=jax.device_count(),
                device_kind=device.device_kind, f32_matmul=args.f32_matmul,
                reuse_host_memory=reuse_host_memory,
                wall_s=time.perf_counter() - start, peak_rss_mib=common.peak_rss_mib())
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "peak_bytes_in_use" in stats:
    result["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  common.emit(result)


if __name__ == "__main__":
  main()
