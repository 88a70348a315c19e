"""The replication harness's settings (electra_jax/experiments): model size, compute budget, fine-tuning subset.

    python -m electra_jax.experiments.replicate --suite=efficiency --workdir=/tmp/rep          # size=micro
    python -m electra_jax.experiments.replicate --suite=all --size=small --workdir=gs://b/rep --corpus=/data/owt

Sizes (each suite runs unchanged at every size; the budget is the ELECTRA variant's steps, every other variant gets
the same analytical pretraining FLOPs, electra_jax.train.flops.train_flops_per_step):
  smoke  a few steps of a 1-layer model, one task, one seed: the tests' end-to-end run (seconds).
  micro  a CPU: E64 H128, 2 layers (configs/pretrain.py's tiny model), batch 32 x 128, ELECTRA 1,200 steps
         (25.5 TFLOP per variant); fine-tuning: 5 GLUE tasks x 3 seeds, 200 steps of 32 x 128 (CoLA, SST-2: x 64)
         each, full dev sets. Measured stage and suite times: benchmarks/replication/README.md.
  small  ELECTRA-Small (paper Table 6) for 125k steps of 128 x 128 (12.5% of the paper's 1M: Table 1's "12.5%
         trained" row, GLUE 76.0); fine-tuning with the paper's recipe (Table 7; 3 epochs, 10 for RTE/STS-B) and
         10 seeds. Needs an accelerator and a real corpus (--corpus): the shared corpus is ~2M tokens.
Any field can be changed with --config.<field>=... on the binary (e.g. --config.finetune.seeds=5).
"""

from __future__ import annotations

import os
import sys

import ml_collections

try:
  from configs import common
except ImportError:  # run from outside the repository root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import common
from electra_jax import paths

SIZES = ("smoke", "micro", "small")
GLUE_SUBSET = ("cola", "sst2", "mrpc", "stsb", "rte")   # the GLUE tasks with train and dev sets in the data folder


def _corpus(*relative: str) -> str:
  return ",".join(str(paths.data_dir() / "corpus" / r) for r in relative)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="micro")
  if arg.size not in SIZES:
    raise ValueError(f"size={arg.size!r}: must be one of {SIZES}")
  c = ml_collections.ConfigDict()
  c.size = arg.size
  # Pretraining corpus: WikiText-2 (valid + test) and the three public-domain novels of the data folder, ~2.0M
  # WordPiece tokens (Wikipedia + books, as the paper's corpus; disjoint from every GLUE file).
  c.corpus = _corpus("wikitext-2-raw", "books")
  c.vocab_file = str(paths.default_vocab())

  # Pretraining: configs/pretrain.py:size=<preset>, then these field overrides (nested as in that config), then each
  # variant's (electra_jax/experiments/suites.py).
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.preset = "small" if arg.size == "small" else "tiny"
  c.pretrain.overrides = ml_collections.ConfigDict()
  c.pretrain.seed = 0
  c.budget = ml_collections.ConfigDict()
  c.budget.electra_steps = 1200      # the ELECTRA variant's steps: the FLOPs budget of every variant
  c.budget.match = "flops"           # "flops" (the rule) or "steps" (every variant the same steps)
  c.budget.warmup_proportion = 0.1   # each variant warms up over this share of its own steps

  c.finetune = ml_collections.ConfigDict()
  c.finetune.tasks = GLUE_SUBSET
  c.finetune.seeds = 3
  c.finetune.size = "tiny"           # configs/glue.py size: learning rate 1e-3, layer-wise decay 0.8
  c.finetune.overrides = ml_collections.ConfigDict()   # configs/glue.py fields, for every task
  c.finetune.num_train_steps = 200   # > 0: steps per task and seed (else the paper's epochs)
  c.finetune.max_train_examples = -1
  c.finetune.max_eval_examples = -1  # -1: the full dev sets
  c.finetune.max_seq_length = 128
  # shorter for the single-sentence tasks, whose longest dev/train example has 55/66 WordPieces (none is cut)
  c.finetune.max_seq_length_per_task = ml_collections.ConfigDict({"cola": 64, "sst2": 64})
  c.finetune.batch_size = 32

  # mlm_vs_electra also scores these earlier checkpoints (fractions of each variant's steps)
  c.curve_fractions = (0.25, 0.5, 1.0)
  # ETA before the first stages have run: assumed pretraining FLOP rate and seconds per fine-tuning run
  c.estimate = ml_collections.ConfigDict()
  c.estimate.pretrain_flops_per_second = 7.0e10     # measured here: ELECTRA micro 21.2 GFLOP in ~0.29 s
  c.estimate.finetune_seconds_per_step = 0.085      # measured: batch 32 x 128, 4.8e4 tok/s (shorter tasks scale down)
  c.estimate.finetune_overhead_seconds = 10.0       # per task: data, compilation, per-seed evaluation
  c.log_every_steps = 100
  c.compilation_cache = True         # JAX's persistent compilation cache in WORKDIR/jax_cache (identical fine-tuning
                                     # steps of different variants compile once)

  if arg.size == "micro":
    # lr 3e-4, not the tiny smoke preset's 1e-3: at 1e-3 the generator learned the unigram distribution within ~300
    # steps and the micro discriminator's AUC fell from 0.85 to 0.59 (RTD loss at the replaced-token prior's entropy)
    # for the rest of the run; at 3e-4 it declines slowly and ends near 0.70. Against uniform replacements the same
    # discriminator reaches 0.96: the decline is the samples getting harder (benchmarks/replication/README.md).
    c.pretrain.overrides.update(batch_size=32, max_seq_length=128, learning_rate=3e-4)
  elif arg.size == "smoke":
    c.corpus = _corpus("wikitext-2-raw/wiki.valid.raw")
    c.pretrain.overrides.update(batch_size=8, max_seq_length=32)
    c.pretrain.overrides.model = ml_collections.ConfigDict(dict(
        hidden_size=32, embedding_size=16, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1))
    c.pretrain.overrides.data = ml_collections.ConfigDict(dict(num_shards=2))
    c.budget.electra_steps = 8
    c.finetune.tasks = ("sst2",)
    c.finetune.seeds = 1
    c.finetune.num_train_steps = 4
    c.finetune.max_train_examples = 64
    c.finetune.max_eval_examples = 64
    c.finetune.max_seq_length = 32
    c.finetune.max_seq_length_per_task = ml_collections.ConfigDict()
    c.finetune.batch_size = 8
    c.curve_fractions = (0.5, 1.0)
    c.log_every_steps = 2
    c.estimate.pretrain_flops_per_second = 2e10
    c.estimate.finetune_seconds_per_step = 0.02
  elif arg.size == "small":
    c.corpus = ""                    # a real corpus: --corpus=... (the shared one is ~2M tokens)
    c.budget.electra_steps = 125_000
    c.budget.warmup_proportion = 0.08   # 10k of 125k: the paper's warm-up steps
    c.finetune.size = "small"        # the paper's Table 7 learning rate for Small
    c.finetune.num_train_steps = -1  # the paper's epochs (3; 10 for RTE and STS-B)
    c.finetune.seeds = 10            # the paper reports the median of 10 fine-tuning runs
    c.log_every_steps = 1000
    c.estimate.pretrain_flops_per_second = 1.0e14
    c.estimate.finetune_seconds_per_step = 0.05
    c.estimate.finetune_overhead_seconds = 60.0
  return c
