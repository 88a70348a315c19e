r"""Records N steps of the pretraining binary's own step as a replayable trace (format electra-pretraining-trace/1,
docs/trace-format.md): the HF folders before and after, and every random choice of every step.

    python -m electra_jax.experiments.trace --config=configs/pretrain.py:size=tiny --steps=8 --out=/tmp/t
    python -m electra_jax.experiments.trace --config=configs/pretrain.py:size=tiny,objective=mlm --steps=8 --out=/tmp/m
    python -m electra_jax.experiments.trace --config=configs/pretrain.py:size=tiny --steps=8 --out=/tmp/n \
        --config.generator.weight_sharing=none
    python -m electra_jax.experiments.replay /tmp/t          # the independent PyTorch replay: OK or what differed

The steps are trainer.make_train_step over objectives.make_loss_fn, the optimizer and schedule pretrain_lib builds,
the binary's batches (the loader's batches 0..N-1) and its base key (config.seed): the first N steps of
`python -m electra_jax.train.pretrain` with the same config. The loss function is built with
StepConfig.record_corruption, which adds the step's own corruption (the masked input, the targets, the sampled
discriminator input, labels and loss weights) to the step's metrics; the parameters it computes are the same
(tests/test_trace.py). What the trace changes in the config, always: float32 compute and parameters, every dropout 0,
matmuls at full float32 precision. The checking settings (CHECKING) apply where --config.<field> does not set the field
itself: a learning rate and weight decay large enough that a wrong decay rule moves weights beyond the replay's
tolerance within a few steps, no warmup, and the schedule's end at the trace's last step.
Refused, in one line (TraceError): objectives other than electra, electra_15 and mlm; uniform sampling; two-stage
training; weight sharing other than embeddings, none and all (gdes); generator settings it does not know (a frozen
generator); layer-wise LR decay; gradient accumulation; dropout (when checking a config the trace did not prepare).
The data shards are built (once) under config.data.cache_dir, or the system temp folder when that is empty.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from electra_jax import errors

FORMAT = "electra-pretraining-trace/1"
OBJECTIVES = ("electra", "electra_15", "mlm")
SHARING = ("embeddings", "none", "all")
# The five tensors of the original's shared embeddings scope (never embeddings_project).
EMBEDDINGS = tuple(f"electra.embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                                       "token_type_embeddings.weight", "LayerNorm.weight",
                                                       "LayerNorm.bias"))
# config.generator's fields whose steps the format describes (a newer one, e.g. a frozen generator, is refused)
# temperature: the samples it shapes are recorded, so any temperature (or schedule) traces.
GENERATOR_FIELDS = ("hidden_fraction", "layers_fraction", "sampling", "disallow_correct", "weight_sharing",
                    "temperature")
# optim.weight_decay_mask in HF names: every LayerNorm parameter and every bias is not decayed.
NO_DECAY = ("LayerNorm", "layer_norm", "bias")
# Applied where --config.<field> does not set the field: the update's decay term lr * wd * p is then ~1% of a weight
# per step, far beyond the replay's 2e-4 tolerance within a few steps when a replay decays the wrong parameters.
CHECKING = {"learning_rate": 1e-3, "optimizer.weight_decay": 10.0, "optimizer.warmup_steps": 0,
            "optimizer.warmup_proportion": -1.0}
STEP_ARRAYS = ("original_ids", "attention_mask", "token_type_ids", "generator_input_ids", "generator_targets",
               "discriminator_input_ids", "discriminator_labels", "discriminator_weights")
SCALARS = ("learning_rate", "generator_loss", "discriminator_loss", "total_loss", "grad_global_norm")


class TraceError(errors.Error, ValueError):
  """A config the trace cannot record (or a trace folder it will not overwrite)."""


# ------------------------------------------------------------------------------------------------ the config
def _runtime_paths(config: Any, field: str) -> list[tuple[Any, str]]:
  """Where a runtime model field lives: config.model.<field> and/or config.<field>."""
  out = [(config, field)] if field in config else []
  if "model" in config and field in config.model:
    out.append((config.model, field))
  return out


def _set(config: Any, dotted: str, value: Any) -> None:
  """config.<dotted> = value where that field exists."""
  *parents, leaf = dotted.split(".")
  for p in parents:
    config = config[p]
  if leaf in config:
    config[leaf] = value


def prepare(config: Any, steps: int, overridden: Iterable[str] = ()) -> Any:
  """A copy of config as the trace runs it (see the module docstring); refuses what it cannot record."""
  if steps <= 0:
    raise TraceError(f"--steps={steps}: must be positive")
  config = copy.deepcopy(config)
  overridden = set(overridden)
  with config.unlocked():
    for field, value in (("dtype", "float32"), ("param_dtype", "float32")):
      for node, key in _runtime_paths(config, field):
        node[key] = value
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      if key in config.model:
        config.model[key] = 0.0
    if "num_train_steps" not in overridden:
      config.num_train_steps = int(steps)
    for dotted, value in CHECKING.items():
      if dotted not in overridden:
        _set(config, dotted, value)
  check(config)
  return config


def _accumulation(config: Any, prefix: str = "") -> list[str]:
  found = []
  for key in config.keys():
    value = config[key]
    if hasattr(value, "keys"):
      found += _accumulation(value, f"{prefix}{key}.")
    elif "accum" in key.lower() and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1:
      found.append(f"{prefix}{key}={value}")
  return found


def check(config: Any) -> None:
  """Raises TraceError (one line) for a config whose steps the format cannot describe."""
  objective = str(config.objective)
  if objective not in OBJECTIVES:
    raise TraceError(f"config.objective={objective!r}: the trace records {OBJECTIVES} (an ElectraForMaskedLM "
                     f"generator and an ElectraForPreTraining discriminator, or the masked LM alone)")
  gen = config.get("generator") or {}
  sampling = str(gen.get("sampling", "model"))
  sharing = str(gen.get("weight_sharing", "embeddings"))
  if objective != "mlm" and sampling != "model":
    raise TraceError(f"config.generator.sampling={sampling!r}: the trace records a generator network's samples; "
                     f"use sampling='model'")
  if objective != "mlm" and sharing not in SHARING:
    raise TraceError(f"config.generator.weight_sharing={sharing!r}: the trace records {SHARING}")
  unknown = [k for k in gen.keys() if k not in GENERATOR_FIELDS and gen[k] not in (None, "", 0, False)]
  if objective != "mlm" and unknown:
    raise TraceError(f"config.generator.{unknown[0]}={gen[unknown[0]]!r}: a generator setting the trace does not know "
                     f"(it records {GENERATOR_FIELDS}); unset it")
  if int(config.get("two_stage", 0) or 0) > 0:
    raise TraceError(f"config.two_stage={config.two_stage}: two-stage training freezes parameters by phase, which the "
                     f"format does not describe; set --config.two_stage=0")
  if float(config.optimizer.get("layerwise_lr_decay", 0.0) or 0.0) > 0:
    raise TraceError(f"config.optimizer.layerwise_lr_decay={config.optimizer.layerwise_lr_decay}: the format has one "
                     f"learning rate per step; set it to 0")
  accum = _accumulation(config)
  if accum:
    raise TraceError(f"config.{accum[0]}: gradient accumulation is not in the format (one batch per update); set it "
                     f"to 1")
  dropouts = {k: float(config.model.get(k, 0.0)) for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
  if any(dropouts.values()):
    raise TraceError(f"config.model dropout {dropouts}: dropout's randomness is not recorded; the trace runs with 0")


# ------------------------------------------------------------------------------------------------ writing
def _hf_folders(setup: Any, params: Any, out_dir: str) -> dict[str, dict[str, np.ndarray]]:
  """Writes the generator and discriminator HF folders of `params` under out_dir; returns their tensors."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from electra_jax import convert, modeling  # pylint: disable=import-outside-toplevel
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  model = pretrain_lib.merge_model(setup, jax.tree.map(jnp.asarray, params))
  parts = model.hf_parts() if isinstance(model, modeling.ElectraPretrainingModel) else {"generator": model}
  tensors = {}
  for name, module in parts.items():
    # every dropout of config.json 0, the sequence-summary head's too (no ELECTRA pretraining head reads it)
    config = module.config.replace(summary_last_dropout=0.0, summary_first_dropout=0.0)
    path = convert.to_hf(module, os.path.join(out_dir, name), config=config)
    tensors[name] = convert.read_hf_weights(path)
  return tensors


def _shared_names(sharing: str, tensors: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
  if "discriminator" not in tensors or sharing == "none":
    return []
  if sharing == "embeddings":
    names = list(EMBEDDINGS)
  else:
    names = sorted(k for k in tensors["discriminator"] if k.startswith("electra."))
  for name in names:   # one tensor in training: bit-identical copies in both folders
    a, b = tensors["generator"].get(name), tensors["discriminator"].get(name)
    if a is None or b is None or a.shape != b.shape or not np.array_equal(a.view(np.uint8), b.view(np.uint8)):
      raise AssertionError(f"shared tensor {name} is not one tensor in both folders")
  return names


def trace_meta(config: Any, setup: Any, shared: list[str], ids: Mapping[str, int], steps: int) -> dict[str, Any]:
  """trace.json's content (docs/trace-format.md)."""
  o = config.optimizer
  clip = o.get("clip_norm", 1.0)
  mlm = config.objective == "mlm"
  gen_config = setup.disc_config if mlm else setup.gen_config
  return {
      "format": FORMAT,
      "objective": str(config.objective),
      "weight_sharing": "none" if mlm else str(config.generator.get("weight_sharing", "embeddings")),
      "networks": ["generator"] if mlm else ["generator", "discriminator"],
      "steps": int(steps), "batch_size": int(config.batch_size), "seq_len": int(config.max_seq_length),
      "shared": shared,
      "tied_generator_output": bool(gen_config.tie_word_embeddings),
      "loss": {"generator_weight": 1.0 if mlm else float(config.gen_weight),
               "discriminator_weight": 0.0 if mlm else float(config.disc_weight)},
      "optimizer": {"name": "adamw", "b1": float(o.get("b1", 0.9)), "b2": float(o.get("b2", 0.999)),
                    "eps": float(o.get("eps", 1e-6)), "weight_decay": float(o.get("weight_decay", 0.01)),
                    "bias_correction": bool(o.get("bias_correction", False)), "no_decay": list(NO_DECAY),
                    "clip_global_norm": float(clip) if clip else None},
      "special_ids": {k: int(ids[k]) for k in ("mask", "pad", "cls", "sep")},
      "recorded_by": {"program": "electra_jax.experiments.trace", "seed": int(config.seed),
                      "learning_rate": float(config.learning_rate), "num_train_steps": int(config.num_train_steps),
                      "warmup_steps": int(o.get("warmup_steps", 0)), "masking": str(config.masking),
                      "mask_prob": float(config.mask_prob),
                      "temperature": str(config.generator.get("temperature", "1.0"))},
  }


def _step_record(batch: Mapping[str, Any], metrics: Mapping[str, Any], mlm: bool) -> dict[str, np.ndarray]:
  c = {k: np.asarray(v) for k, v in metrics["corruption"].items()}
  original = np.asarray(batch["input_ids"])
  rec = {"original_ids": original, "attention_mask": np.asarray(batch["input_mask"]),
         "token_type_ids": np.asarray(batch["segment_ids"]),
         "generator_input_ids": c["generator_input_ids"], "generator_targets": c["generator_targets"].astype(bool)}
  if mlm:   # no discriminator: it reads the original, nothing is labelled, nothing weighs
    rec.update(discriminator_input_ids=original, discriminator_labels=np.zeros_like(original),
               discriminator_weights=np.zeros(original.shape, np.float32))
  else:
    rec.update(discriminator_input_ids=c["discriminator_input_ids"],
               discriminator_labels=c["discriminator_labels"].astype(np.int32),
               discriminator_weights=c["discriminator_weights"].astype(np.float32))
  rec.update(learning_rate=np.float32(metrics["learning_rate"]), generator_loss=np.float32(metrics["mlm_loss"]),
             discriminator_loss=np.float32(0.0 if mlm else metrics["rtd_loss"]),
             total_loss=np.float32(metrics["loss"]), grad_global_norm=np.float32(metrics["grad_norm"]))
  return rec


# ------------------------------------------------------------------------------------------------ the run
def _is_trace(folder: str) -> bool:
  """True for a folder that a trace wrote (its trace.json names the format): a new trace may replace it."""
  try:
    with open(os.path.join(folder, "trace.json"), encoding="utf-8") as f:
      return json.load(f).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def record(config: Any, steps: int, out_dir: str, *, overwrite: bool = False) -> dict[str, Any]:
  """Runs `steps` steps of the pretraining step on config (already `prepare`d) and writes the trace to out_dir.

  Returns trace.json's content. out_dir must be absent, empty or an earlier trace (or overwrite=True)."""
  check(config)
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    if not (overwrite or _is_trace(out_dir)):
      raise TraceError(f"--out={out_dir} exists and holds something other than a trace: pass an empty or new folder "
                       f"(or --overwrite)")
    shutil.rmtree(out_dir)
  import jax  # pylint: disable=import-outside-toplevel
  from electra_jax import sharding  # pylint: disable=import-outside-toplevel
  from electra_jax.train import objectives, pretrain_lib, trainer  # pylint: disable=import-outside-toplevel
  tok, ids = pretrain_lib.load_tokenizer(config)
  mesh = pretrain_lib.build_mesh(config)
  setup = pretrain_lib.build_setup(config, mesh, vocab_size=tok.get_vocab_size(), ids=ids)
  # the binary's step over a loss function that also returns the step's corruption
  loss_fn = objectives.make_loss_fn(setup.graphdef, setup.rest,
                                    dataclasses.replace(setup.step_config, record_corruption=True))
  step_fn = jax.jit(trainer.make_train_step(loss_fn, setup.tx, setup.schedule, pass_step=True),
                    donate_argnums=(0,), out_shardings=(setup.state_shardings, sharding.replicated(mesh)))
  cache = config.data.get("cache_dir") or os.path.join(tempfile.gettempdir(), "electra_jax_trace_data")
  with config.unlocked():
    config.data.cache_dir = cache
  dataset_dir, _, _ = pretrain_lib.prepare_data(config, cache)
  loader = pretrain_lib.make_loader(config, dataset_dir, setup)
  base_key = jax.random.key(int(config.seed))
  mlm = config.objective == "mlm"
  records = []
  try:
    with jax.default_matmul_precision("highest"), jax.set_mesh(mesh), sharding.use_rules(setup.rules):
      state = pretrain_lib.init_state(setup)
      initial = jax.device_get(state["params"])
      for s in range(steps):
        batch = loader.batch(s)
        state, metrics = step_fn(state, dict(batch), base_key)
        records.append(_step_record(jax.device_get(batch), jax.device_get(metrics), mlm))
        logging.info("trace step %d/%d: loss %.6g", s + 1, steps, float(records[-1]["total_loss"]))
      final = jax.device_get(state["params"])
  finally:
    loader.close()

  os.makedirs(out_dir, exist_ok=True)
  written = {}
  for when, params in (("initial", initial), ("final", final)):
    written[when] = _hf_folders(setup, params, os.path.join(out_dir, when))
  sharing = "none" if mlm else str(config.generator.get("weight_sharing", "embeddings"))
  shared = _shared_names(sharing, written["initial"])
  _shared_names(sharing, written["final"])
  meta = trace_meta(config, setup, shared, ids, steps)
  np.savez(os.path.join(out_dir, "steps.npz"), **{k: np.stack([r[k] for r in records]) for k in records[0]})
  with open(os.path.join(out_dir, "trace.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
  return meta


# ------------------------------------------------------------------------------------------------ the binary
def main(argv) -> None:
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from electra_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  config = prepare(f.config, int(f.steps), config_flags.get_override_values(f["config"]).keys())  # no JAX call
  distributed.initialize_from_flags()   # before any JAX call
  meta = record(config, int(f.steps), f.out, overwrite=bool(f.overwrite))
  print(f"wrote {meta['steps']} steps of {meta['objective']} (weight sharing {meta['weight_sharing']}) to "
        f"{os.path.abspath(f.out)}; check it with: python -m electra_jax.experiments.replay {f.out}")


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from electra_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Pretraining configuration (configs/pretrain.py:size=...).",
                                  lock_config=True)
  flags.DEFINE_integer("steps", 8, "Training steps to record.")
  flags.DEFINE_string("out", None, "The trace folder (absent, empty, or an earlier trace, which is replaced).")
  flags.DEFINE_bool("overwrite", False, "Replace --out even when it holds something other than an earlier trace.")
  distributed.define_flags()


if __name__ == "__main__":
  from electra_jax.runtime import cli  # pylint: disable=ungrouped-imports
  _define_flags()
  cli.run(main, required=("config", "out"))
