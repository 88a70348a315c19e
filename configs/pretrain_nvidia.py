"""NVIDIA's ELECTRA-Base pretraining recipe (LAMB, large batches), phase 1, on configs/pretrain.py's base model.

    python -m electra_jax.train.pretrain --config=configs/pretrain_nvidia.py --workdir=gs://b/electra_base_lamb \
        --config.data.corpus=/data/wiki_books --config.data.vocab_file=/data/vocab.txt

The hyperparameters are those NVIDIA publishes in DeepLearningExamples, TensorFlow2/LanguageModeling/ELECTRA
(github.com/NVIDIA/DeepLearningExamples):
  * scripts/configs/pretrain_config.sh, `dgxa100_8gpu_amp` (8 A100 GPUs): phase 1 train_batch_size 176 per GPU,
    gradient_accumulation_steps 48 (global batch 176 x 8 x 48 = 67,584 sequences of 128 tokens), learning_rate 6e-3,
    warmup_steps 2000, train_steps 10000; phase 2: 24 per GPU x 144 accumulation (27,648 sequences of 512 tokens),
    learning_rate 4e-3, warmup_steps 200, train_steps 933;
  * scripts/run_pretraining.sh: --optimizer=lamb --skip_adaptive --opt_beta_1=0.878 --opt_beta_2=0.974
    --lr_decay_power=0.5 --disc_weight=50.0 --generator_hidden_size=0.3333333 --max_seq_length=128;
  * optimization.py: TensorFlow Addons' LAMB, epsilon 1e-6, weight_decay_rate 0.01 excluding "layer_norm", "bias",
    "LayerNorm" (the same list for the trust ratio with --skip_adaptive), a linear warmup followed by a polynomial
    decay to end_lr 0 over the remaining steps (our schedule "sequential");
  * run_pretraining.py: mask_prob 0.15, gen_weight 1, the accumulated gradients clipped to global norm 1.0 before
    the optimizer.
This preset is phase 1: the global batch is config.batch_size, run as config.gradient_accumulation_steps
micro-batches (48: 1,408 sequences each; 176 per device on 8 devices), the same update as the whole batch.
"""

import os
import sys

import ml_collections

try:
  from configs import pretrain
except ImportError:  # run from outside the repository root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import pretrain

PER_DEVICE_BATCH, DEVICES, ACCUMULATION = 176, 8, 48


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = pretrain.get_config("size=base,objective=electra")
  c.max_seq_length = 128
  c.batch_size = PER_DEVICE_BATCH * DEVICES * ACCUMULATION
  c.gradient_accumulation_steps = ACCUMULATION
  c.num_train_steps = 10_000
  c.learning_rate = 6e-3
  c.mask_prob = 0.15
  c.gen_weight = 1.0
  c.disc_weight = 50.0
  c.generator.hidden_fraction = 1 / 3
  o = c.optimizer
  o.name = "lamb"
  o.b1, o.b2, o.eps = 0.878, 0.974, 1e-6
  o.weight_decay = 0.01
  o.lamb_skip_adaptive = True
  o.clip_norm = 1.0
  o.warmup_steps = 2000
  o.warmup_proportion = -1.0
  o.schedule = "sequential"
  o.lr_decay_power = 0.5
  o.end_learning_rate = 0.0
  return c
