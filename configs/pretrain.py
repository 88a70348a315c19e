r"""ELECTRA pretraining presets: tiny (a CPU in minutes), small, base, large (the paper's Table 6 hyperparameters).

    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=tiny --workdir=/tmp/electra_tiny
    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=small --workdir=gs://b/electra_small \
        --config.data.corpus=/data/owt     # vocab: BERT's uncased, $ELECTRA_DATA_DIR/vocab/, unless data.vocab_file
    python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=base,objective=mlm --workdir=...

Arguments after the colon: size (tiny|small|base|large), objective (electra|mlm|electra_15|replace_mlm|all_tokens_mlm|
electric; electra_jax/train/objectives.py says what each trains). Any field can then be overridden with
--config.<field>=<value>, e.g. --config.batch_size=64 --config.mesh.fsdp=4 --config.optimizer.warmup_steps=1000.

| size  | E    | H    | layers | heads | FFN  | generator | mask | lr   | batch | steps | seq |
| small | 128  | 256  | 12     | 4     | 1024 | 1/4       | 15%  | 5e-4 | 128   | 1M    | 128 |
| base  | 768  | 768  | 12     | 12    | 3072 | 1/3       | 15%  | 2e-4 | 256   | 766k  | 512 |
| large | 1024 | 1024 | 24     | 16    | 4096 | 1/4       | 25%  | 2e-4 | 2048  | 400k  | 512 |
All: Adam eps 1e-6, b1 0.9, b2 0.999, no bias correction (as the original), weight decay 0.01, warmup 10k steps
multiplied by linear decay, clipping 1.0, dropout 0.1, gen_weight 1, disc_weight 50, generator.temperature 1.
tiny (E64 H128, 2 layers, seq 128, batch 16, 1000 steps, lr 1e-3, warmup 100, Adam with bias correction) is a smoke
run for a CPU, with the real vocab and the WikiText-2 corpus from the data folder.
"""

import os
import sys

import ml_collections

try:
  from configs import common
except ImportError:  # run from outside the repository root
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import common
from electra_jax import paths

OBJECTIVES = ("electra", "mlm", "electra_15", "replace_mlm", "all_tokens_mlm", "electric")
SIZES = {
    # embedding, hidden, layers, heads, ffn, generator fraction, mask_prob, learning_rate, batch, steps, seq
    "tiny": (64, 128, 2, 2, 512, 0.25, 0.15, 1e-3, 16, 1000, 128),
    "small": (128, 256, 12, 4, 1024, 0.25, 0.15, 5e-4, 128, 1_000_000, 128),
    "base": (768, 768, 12, 12, 3072, 1 / 3, 0.15, 2e-4, 256, 766_000, 512),
    "large": (1024, 1024, 24, 16, 4096, 0.25, 0.25, 2e-4, 2048, 400_000, 512),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, size="small", objective="electra")
  if arg.size not in SIZES:
    raise ValueError(f"size={arg.size!r}: must be one of {sorted(SIZES)}")
  if arg.objective not in OBJECTIVES:
    raise ValueError(f"objective={arg.objective!r}: must be one of {OBJECTIVES}")
  emb, hidden, layers, heads, ffn, gen_frac, mask_prob, lr, batch, steps, seq = SIZES[arg.size]
  tiny = arg.size == "tiny"

  c = ml_collections.ConfigDict()
  c.size = arg.size
  c.objective = arg.objective        # "electra" (replaced-token detection), "mlm" (BERT-style), or an ablation
  c.seed = 0
  c.num_train_steps = steps
  c.batch_size = batch               # global, over all devices and hosts
  c.gradient_accumulation_steps = 1  # K > 1: each step runs the global batch as K micro-batches (less memory, same update)
  c.max_seq_length = seq
  c.phases = ""                      # e.g. "0.9:128:256,0.1:512:64": STEPS:SEQ_LEN[:BATCH] phases of sequence length
                                     # (train/phases.py); "": all steps at max_seq_length x batch_size
  c.learning_rate = lr
  c.log_every_steps = 10 if tiny else 100
  c.checkpoint_every_steps = 500 if tiny else 1000
  c.keep_checkpoints = 5
  c.restart_from_scratch = False     # True: start again from step 0 where every checkpoint proved unreadable
  c.export = True                    # HF folders in WORKDIR/export/{discriminator,generator} (or mlm) at the end

  # The original's Adam has no bias correction, which makes early updates up to ~6x larger than Adam's; with its 10k
  # warmup steps that is harmless. The tiny preset's 100-step warmup needs bias correction (without it, a 2-layer
  # discriminator collapses to a constant output at lr >= 5e-4; measured).
  c.optimizer = common.optimizer_config(weight_decay=0.01, warmup_steps=100 if tiny else 10_000,
                                        bias_correction=tiny)

  # The replaced-token-detection task.
  c.mask_prob = mask_prob
  c.max_predictions_per_seq = -1     # -1: int((mask_prob + 0.005) * max_seq_length), as the original
  c.masking = "electra"              # "electra": 85% [MASK] / 15% kept; "bert": 80% [MASK] / 10% random / 10% kept
  c.gen_weight = 1.0
  c.disc_weight = 50.0

  c.model = ml_collections.ConfigDict()
  c.model.embedding_size = emb
  c.model.hidden_size = hidden
  c.model.num_hidden_layers = layers
  c.model.num_attention_heads = heads
  c.model.intermediate_size = ffn
  c.model.max_position_embeddings = 512
  c.model.vocab_size = 0             # 0: the size of data.vocab_file
  c.model.hidden_dropout_prob = 0.1
  c.model.attention_probs_dropout_prob = 0.1
  # Runtime-only fields (ElectraConfig): speed and memory, never the parameters; the same path in every config.
  c.model.dtype = "float32" if tiny else "bfloat16"   # compute dtype; parameters and optimizer state stay float32
  c.model.param_dtype = "float32"
  c.model.scan_layers = not tiny
  c.model.remat_policy = "dots" if arg.size == "large" else "none"   # large: 24 layers' activations need it on a v5e
  c.model.kernels = "auto"           # forms of the ops (electra_jax/ops): auto | reference | xla_cpu | cudnn | splash
  c.generator = ml_collections.ConfigDict()
  c.generator.hidden_fraction = gen_frac    # generator hidden = round(H * fraction), heads H_g // 64, FFN 4 H_g
  c.generator.layers_fraction = 1.0
  c.generator.sampling = "model"            # "model" (the generator's softmax) or "uniform" (no generator network)
  c.generator.disallow_correct = False      # never sample the original token
  # "embeddings" (the paper's tying: one embedding module), "none", "all" (a same-size generator, every weight), or
  # "gdes" (DeBERTa-v3's gradient-disentangled sharing: the discriminator runs on stop_gradient(E_G) + E_delta over
  # the same embedding scope as "embeddings"; E_delta starts at zero; the export holds E_G + E_delta)
  c.generator.weight_sharing = "embeddings"
  # Sampling temperature (a string): a number, or a schedule over the steps "KIND:START->END[@STEPS]" with KIND linear,
  # exp (geometric) or cosine, reaching END at STEPS (default num_train_steps) and staying there, e.g. "linear:2->1"
  # (Fast-ELECTRA's descending temperature for a frozen generator).
  c.generator.temperature = "1.0"
  # A frozen external generator: an HF ElectraForMaskedLM folder, a Hugging Face Hub id (e.g.
  # google/electra-small-generator, optionally ID@REVISION) or a checkpoint of this project (its generator). It is
  # used as it is (inference mode: no dropout, no MLM loss, no sharing, no optimizer state); "": train a generator.
  c.generator.source = ""
  # The generator's own peak learning rate (DeBERTa-v3 trains its generator with its own optimizer): > 0 gives the
  # generator's parameters an AdamW of their own (config.optimizer's settings and schedule shape, this peak, its own
  # gradient clipping); 0: one optimizer for everything at config.learning_rate. Shared parameters ("embeddings"
  # sharing) follow the discriminator's.
  c.generator.learning_rate = 0.0
  c.two_stage = 0                    # N > 0: the generator alone for N steps, then the discriminator (initialised
                                     # from it) alone with the generator frozen; needs a same-size generator

  c.data = ml_collections.ConfigDict()
  c.data.corpus = str(paths.default_corpus()) if tiny else ""   # files, folders, globs or tfds:NAME (comma-separated)
  c.data.vocab_file = str(paths.default_vocab())   # BERT's uncased vocab (ELECTRA's), <data dir>/vocab/
  c.data.lower_case = True
  c.data.strip_accents = ""          # "": follow lower_case (BERT); "true" / "false" to force
  c.data.cache_dir = ""              # where the ArrayRecord shards are built; "": WORKDIR/data
  c.data.dataset_dir = ""            # shards built by python -m electra_jax.data.pretraining --output_dir=DIR, used as
                                     # they are (no corpus needed; length, vocab and casing must match the run)
  c.data.num_shards = 16
  c.data.num_build_processes = 1
  c.data.build_seed = 0
  c.data.tfds_data_dir = ""
  c.data.prefetch = 2

  # Parallelism: mesh axis sizes (one may be -1; data may be 0, one per TPU slice) and the logical-axis -> mesh-axis
  # table. Base and large shard parameters and AdamW state over fsdp (every device of a slice), data parallelism
  # across slices: what fits them on a v5e pod (launch/tpu_aot.py; benchmarks/README.md has the figures). Small and
  # tiny stay data-parallel: their state is small.
  pod = arg.size in ("base", "large")
  c.mesh = common.mesh_config(data=0, fsdp=-1, tensor=1) if pod else common.mesh_config(data=-1, fsdp=1, tensor=1)
  c.sharding_rules = common.default_sharding_rules()
  c.peak_flops_per_device = 0.0      # for MFU; 0: the datasheet peak of the device kind (measured on CPU)
  return c
