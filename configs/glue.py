r"""GLUE fine-tuning (and the shared fine-tuning defaults that configs/squad.py builds on).

    python -m electra_jax.train.finetune --config=configs/glue.py:task=mrpc,size=small --workdir=/tmp/mrpc \
        --config.init_checkpoint=/ckpt/electra_small        # an HF folder or an Orbax checkpoint of this project
    python -m electra_jax.train.finetune --config=configs/glue.py:task=rte,size=base,trials=10 --workdir=/tmp/rte
    python -m electra_jax.eval.evaluate --config=configs/glue.py:task=mrpc --checkpoint=/tmp/mrpc/seed_0 \
        --workdir=/tmp/mrpc_eval

Arguments after the colon (all optional):
  task     cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (AX is predicted with the MNLI model)
  size     tiny (tests), small, base, large: the paper's learning rate and layer-wise decay for that size, and the
           architecture when training from scratch
  head     hf (the default: Hugging Face's ElectraForSequenceClassification, dense + gelu + linear) or original
           (the original ELECTRA's dropout + linear, for replicating the paper). hf is the default because the
           documented chain is fine-tune, then `convert orbax_to_hf`, then transformers: no transformers class has
           the original head (a linear layer on [CLS], where HF's head has a dense + gelu layer before it, which no
           choice of weights makes the identity), so an original-head checkpoint cannot be exported; with
           head=original the fine-tuning run says so before it trains, and orbax_to_hf refuses it. The
           experiments/ replication uses head=original, as the paper did.
  recipe   original (the original code: weight decay 0.01, top layer decayed twice) or paper (Table 7: no weight
           decay, layer-wise decay as described)
  trials   fine-tuning runs with seeds seed, seed+1, ...; the results report median, mean and spread
  runlocal a smoke run: tiny slices, a handful of steps
"""

from __future__ import annotations

import ml_collections

from configs import common

# ELECTRA sizes (paper Table 6; "tiny" is for tests). Fields are ElectraConfig fields.
MODEL_SIZES = {
    "tiny": dict(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64),
    "small": dict(embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                  intermediate_size=1024),
    "base": dict(embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
    "large": dict(embedding_size=1024, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096),
}
# Paper Table 7: fine-tuning learning rate and layer-wise LR decay by size.
LEARNING_RATES = {"tiny": 1e-3, "small": 3e-4, "base": 1e-4, "large": 5e-5}
LAYERWISE_DECAY = {"tiny": 0.8, "small": 0.8, "base": 0.8, "large": 0.9}
RECIPES = ("original", "paper")
HEADS = ("original", "hf")
# Paper: 10 epochs for RTE and STS-B, 3 for the other GLUE tasks (2 for SQuAD, in configs/squad.py).
GLUE_EPOCHS = {"rte": 10.0, "stsb": 10.0}
DOUBLE_UNORDERED_TASKS = ("mrpc", "stsb")


def model_config(size: str) -> ml_collections.ConfigDict:
  """Architecture used when training from scratch, plus runtime options that apply to every initialisation."""
  if size not in MODEL_SIZES:
    raise ValueError(f"unknown size {size!r}; known: {sorted(MODEL_SIZES)}")
  m = ml_collections.ConfigDict(dict(MODEL_SIZES[size]))
  m.vocab_size = 30522
  m.max_position_embeddings = 512
  m.hidden_dropout_prob = 0.1
  m.attention_probs_dropout_prob = 0.1
  # Runtime-only (see ElectraConfig): used for scratch, HF and Orbax initialisation alike.
  m.dtype = "float32"
  m.param_dtype = "float32"
  m.scan_layers = False
  m.remat_policy = "none"
  m.kernels = "auto"         # forms of the ops (electra_jax/ops): auto | reference | xla_cpu | cudnn | splash
  return m


def base_config(size: str = "small", head: str = "hf", recipe: str = "original", trials: int = 1,
                ) -> ml_collections.ConfigDict:
  """Fields shared by GLUE and SQuAD fine-tuning (read by electra_jax.train.finetune_lib)."""
  if head not in HEADS:
    raise ValueError(f"head={head!r}: must be one of {HEADS}")
  if recipe not in RECIPES:
    raise ValueError(f"recipe={recipe!r}: must be one of {RECIPES}")
  c = ml_collections.ConfigDict()
  c.size = size
  c.head = head
  c.model = model_config(size)
  # "" = from scratch; an HF folder (config.json + model.safetensors) or an Orbax checkpoint of this project
  # (a pretraining workdir: its discriminator; or a fine-tuning checkpoint: its encoder).
  c.init_checkpoint = ""
  c.vocab_file = ""                 # "" = the init HF folder's vocab.txt if it has one, else the shared BERT vocab
  c.do_lower_case = True

  c.learning_rate = LEARNING_RATES[size]
  c.optimizer = common.optimizer_config(
      weight_decay=0.01 if recipe == "original" else 0.0,
      warmup_proportion=0.1,
      layerwise_lr_decay=LAYERWISE_DECAY[size],
      layerwise_lr_decay_mode=recipe)
  c.batch_size = 32
  c.gradient_accumulation_steps = 1  # K > 1: each step runs the batch as K micro-batches (less memory, same update)
  c.eval_batch_size = 32
  c.num_train_epochs = 3.0
  c.num_train_steps = -1            # > 0 overrides epochs
  c.max_train_examples = -1         # > 0: the first N training examples only (tests, quick runs)
  c.max_eval_examples = -1          # > 0: the first N examples of every dev/test set

  c.seed = 0
  c.num_trials = trials             # runs with seeds seed .. seed + num_trials - 1, in WORKDIR/seed_<s>
  c.log_every_steps = 50
  c.eval_every_steps = 0            # > 0: also score the dev sets every N steps (TensorBoard + metrics.jsonl)
  c.checkpoint_every_steps = 1000   # 0: only at the end
  c.keep_checkpoints = 1
  c.restart_from_scratch = False    # True: start a trial again from step 0 where every checkpoint proved unreadable
  c.write_predictions = True        # dev predictions and test-set submission files at the end

  c.mesh = common.mesh_config()
  c.sharding_rules = common.default_sharding_rules()
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, task="mrpc", size="small", head="hf", recipe="original", trials=1,
                         runlocal=False)
  from electra_jax.data import glue  # pylint: disable=import-outside-toplevel
  task = glue.get_task(arg.task).name
  if task == "ax":
    raise ValueError("AX has no training data: fine-tune task=mnli, which also writes AX.tsv")
  c = base_config(arg.size, arg.head, arg.recipe, arg.trials)
  c.family = "glue"
  c.task = task
  c.data_dir = ""                   # "" = <data dir>/glue_data; or a glue_data/ folder
  c.data_source = "tsv"             # "tsv" (GLUE folder) or "tfds" (a prepared TFDS glue/<task>)
  c.tfds_data_dir = ""
  c.skip_malformed = False          # True: skip (and count, and report) malformed TSV rows instead of failing
  c.max_seq_length = 128
  c.double_unordered = task in DOUBLE_UNORDERED_TASKS   # train on both sentence orders (original ELECTRA)
  c.num_train_epochs = GLUE_EPOCHS.get(task, 3.0)
  c.predict_test = True             # write the leaderboard files (MNLI also writes AX.tsv)
  if arg.runlocal:
    runlocal(c)
  return c


def runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config into a smoke run that finishes in seconds on a CPU."""
  c.model = model_config("tiny")
  c.max_train_examples = 64
  c.max_eval_examples = 64
  c.num_train_steps = 8
  c.batch_size = 8
  c.eval_batch_size = 16
  c.log_every_steps = 2
  c.checkpoint_every_steps = 0
