"""The run configs the replication harness builds: the pretraining config of a variant, the fine-tuning config of a
task, their FLOPs, and the harness's own overrides.

    c = run_configs.pretrain_config(hc, suites.VARIANTS["electra"], workdir)   # configs/pretrain.py + overrides
    f = run_configs.finetune_config(hc, "rte", init_checkpoint)                # configs/glue.py + overrides
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections

from electra_jax import paths
from electra_jax.experiments import ExperimentError, suites

def config_module(name: str):
  """configs/<name>.py as a module (the configs folder sits next to the package, not inside it)."""
  root = str(paths.REPO_ROOT)
  if root not in sys.path:
    sys.path.insert(0, root)
  return importlib.import_module(f"configs.{name}")


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """config.a.b = value for dotted = "a.b"; the field must exist (a typo is an error, not a new field)."""
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    if p not in node:
      raise ExperimentError(f"unknown config field {dotted!r} ({p!r} does not exist)")
    node = node[p]
  if leaf not in node:
    raise ExperimentError(f"unknown config field {dotted!r}")
  node[leaf] = value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested ConfigDict of overrides -> {"a.b": value}."""
  out: dict[str, Any] = {}
  for k, v in config.items():
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def parse_override(text: str, config: ml_collections.ConfigDict) -> tuple[str, Any]:
  """'finetune.seeds=5' -> ("finetune.seeds", 5), typed like the field's current value."""
  key, sep, raw = text.partition("=")
  if not sep:
    raise ExperimentError(f"override {text!r}: expected FIELD=VALUE")
  key = key.strip()
  node: Any = config
  for p in key.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, Mapping)) or p not in node:
      raise ExperimentError(f"override {text!r}: unknown field {key!r}")
    node = node[p]
  raw = raw.strip()
  if isinstance(node, bool):
    value: Any = raw.lower() in ("1", "true", "yes")
  elif isinstance(node, int):
    value = int(raw)
  elif isinstance(node, float):
    value = float(raw)
  elif isinstance(node, (tuple, list)):
    items = [s.strip() for s in raw.split(",") if s.strip()]
    value = tuple(type(node[0])(s) for s in items) if node else tuple(items)
  else:
    value = raw
  return key, value


def pretrain_config(hc: ml_collections.ConfigDict, variant: suites.Variant, workdir: str
                    ) -> ml_collections.ConfigDict:
  """configs/pretrain.py at the harness's preset + its overrides + the variant's, data in WORKDIR/data."""
  objective = str(variant.overrides.get("objective", "electra"))
  c = config_module("pretrain").get_config(f"size={hc.pretrain.preset},objective={objective}")
  for key, value in flatten(hc.pretrain.overrides).items():
    set_field(c, key, value)
  for key, value in variant.overrides.items():
    set_field(c, key, value)
  c.seed = int(hc.pretrain.seed)
  c.data.corpus = hc.corpus
  c.data.vocab_file = hc.vocab_file
  c.data.cache_dir = os.path.join(workdir, "data")
  c.export = False
  c.optimizer.warmup_proportion = float(hc.budget.warmup_proportion)
  c.log_every_steps = int(hc.log_every_steps)
  return c


def vocab_size(vocab_file: str) -> int:
  with open(vocab_file, encoding="utf-8") as f:
    return sum(1 for line in f if line.strip())


def flops_per_step(config: ml_collections.ConfigDict, vocab: int) -> float:
  """electra_jax.train.flops.train_flops_per_step of a pretraining config (what its step computes)."""
  from electra_jax.train import flops, pretrain_lib  # pylint: disable=import-outside-toplevel
  disc, gen = pretrain_lib.model_configs(config, vocab)
  preds = int(config.max_predictions_per_seq)
  if preds <= 0:
    preds = pretrain_lib.max_predictions_per_seq(float(config.mask_prob), int(config.max_seq_length))
  return flops.train_flops_per_step(disc, gen, batch_size=int(config.batch_size),
                                    seq_len=int(config.max_seq_length), num_predictions=preds,
                                    objective=config.objective)


def finetune_config(hc: ml_collections.ConfigDict, task: str, init_checkpoint: str,
                    architecture: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """configs/glue.py for `task` from `init_checkpoint` ("" with `architecture`, a pretraining config: from scratch)."""
  f = hc.finetune
  # The paper's head (dropout + linear): the replication compares objectives as the paper fine-tuned them.
  c = config_module("glue").get_config(f"task={task},size={f.size},head=original,trials={int(f.seeds)}")
  c.init_checkpoint = init_checkpoint
  if not init_checkpoint and architecture is not None:
    for field in ("embedding_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "hidden_dropout_prob", "attention_probs_dropout_prob"):
      c.model[field] = architecture.model[field]
  c.max_seq_length = int(f.get("max_seq_length_per_task", {}).get(task, f.max_seq_length))
  c.batch_size = int(f.batch_size)
  c.eval_batch_size = max(int(f.batch_size), 32)
  if int(f.num_train_steps) > 0:
    c.num_train_steps = int(f.num_train_steps)
  c.max_train_examples = int(f.max_train_examples)
  c.max_eval_examples = int(f.max_eval_examples)
  c.write_predictions = False
  c.predict_test = False
  c.checkpoint_every_steps = 0
  c.keep_checkpoints = 1
  c.log_every_steps = max(1, int(hc.log_every_steps))
  for key, value in flatten(f.overrides).items():
    set_field(c, key, value)
  return c


def finetune_dir(pv: Any, step: int, task: str) -> str:
  """Where the harness fine-tunes `task` from the step-`step` checkpoint of a planned variant (harness.PlannedVariant:
  WORKDIR/variants/<key>/glue_<step>/<task>)."""
  return os.path.join(os.path.dirname(pv.workdir), f"glue_{step}", task)
