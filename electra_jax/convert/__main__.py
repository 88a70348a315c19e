r"""Move weights between Hugging Face folders and this project's Orbax checkpoints, both ways, for any head.

    # HF -> Orbax (e.g. to fine-tune or continue pretraining released weights with our trainers)
    python -m electra_jax.convert hf_to_orbax --hf_dir=electra-small-discriminator --out=ckpt/disc
    python -m electra_jax.convert hf_to_orbax --hf_dir=google/electra-small-discriminator --out=ckpt/disc  # Hub id
    python -m electra_jax.convert hf_to_orbax --hf_dir=DISC_DIR --hf_generator_dir=GEN_DIR --out=ckpt/pretrain
    # Orbax -> HF (a fine-tuned head, or the discriminator / generator of a pretraining run)
    python -m electra_jax.convert orbax_to_hf --checkpoint=WORKDIR --out=hf/disc [--part=discriminator]
    python -m electra_jax.convert orbax_to_hf --checkpoint=FINETUNE_DIR/seed_0 --out=hf/mrpc --overwrite  # replace
    python -m electra_jax.convert orbax_to_hf --checkpoint=WORKDIR --out=hf/gen --part=generator --vocab_file=vocab.txt
    python -m electra_jax.convert orbax_to_hf --checkpoint=WORKDIR --out=hf/disc --push_to_hub=me/electra-small-x
    # original TF1 ELECTRA checkpoints (google-research/electra), read without TensorFlow
    python -m electra_jax.convert tf_to_orbax --tf_checkpoint=electra_small/ --out=WORKDIR [--continue_pretraining]
    python -m electra_jax.convert tf_to_hf --tf_checkpoint=electra_small/model.ckpt-1000000 --out=hf/electra_small \
        [--vocab_file=vocab.txt --lowercase --strip_accents=true --num_attention_heads=4]

Every mapping goes through electra_jax/convert/mapping.py (HF) and tf_mapping.py (TF); an unmapped, missing or mis-shaped key is an error.
A checkpoint is verified against the fingerprints saved with it before anything is exported. orbax_to_hf writes the
tokenizer files from the vocab the checkpoint records (fine-tuning and pretraining record theirs) unless --vocab_file
says otherwise. Bad input: one line on stderr, exit status 1 (2 for bad usage).

tf_to_orbax: a pretraining checkpoint (a generator under generator/, the original's default, or one network for both
with untied_generator=False, then resumed with --config.generator.weight_sharing=all) becomes a workdir that
`train.pretrain` resumes (with the matching --config overrides, printed) and `train.finetune` initialises from
(--config.init_checkpoint=WORKDIR); --continue_pretraining carries over global_step and the Adam slots (adam_m,
adam_v), whose update continues exactly under our AdamW (no bias correction, as the original), else training starts
at step 0 with zero moments. A fine-tuned checkpoint (task_specific/<task>/) becomes a checkpoint of the original head.
tf_to_hf: OUT/discriminator (ElectraForPreTraining) and OUT/generator (ElectraForMaskedLM, for both generator layouts)
with vocab.txt and tokenizer files (--vocab_file, default: vocab.txt beside the checkpoint). The number of attention
heads is not stored in a checkpoint: hidden_size // 64 as the original, unless given.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
from absl import flags
from flax import nnx

from electra_jax import convert, errors
from electra_jax.convert import hub
from electra_jax.modeling import ElectraPretrainingModel
from electra_jax.runtime import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The binary's flags, defined when it runs (importing this module for its functions defines none, so other
  binaries' flags of the same names can live in the same process)."""
  flags.DEFINE_string("hf_dir", None, "hf_to_orbax: the HF folder or Hub model id (the discriminator, for a "
                      "pretraining checkpoint).")
  flags.DEFINE_string("hf_generator_dir", None, "hf_to_orbax: the HF generator folder; with it, --out is a joint "
                      "pretraining checkpoint (generator + discriminator with shared embeddings).")
  flags.DEFINE_string("head", None, "hf_to_orbax: head class (default: config.json architectures).")
  flags.DEFINE_string("checkpoint", None, "orbax_to_hf: workdir, checkpoint directory or one step's directory.")
  flags.DEFINE_integer("step", None, "orbax_to_hf: the step to export (default: the latest complete one).")
  flags.DEFINE_enum("part", None, ["discriminator", "generator"], "orbax_to_hf: which network of a pretraining "
                    "checkpoint to export (default: the discriminator); refused for other checkpoints.")
  flags.DEFINE_string("vocab_file", None, "orbax_to_hf / tf_*: write tokenizer files from this vocab.txt (default: the "
                      "vocab the checkpoint records, if any).")
  flags.DEFINE_bool("lowercase", None, "orbax_to_hf: the tokenizer lower-cases (default: as recorded, else true).")
  flags.DEFINE_enum("strip_accents", None, ["true", "false"], "tf_*: the original's strip_accents (default true; it "
                    "applies only when lower-casing).")
  flags.DEFINE_string("tf_checkpoint", None, "tf_to_orbax / tf_to_hf: an original TF checkpoint: its folder (latest "
                      "in its `checkpoint` file), its prefix (model.ckpt-N) or its .index file.")
  flags.DEFINE_bool("continue_pretraining", False, "tf_to_orbax: carry over global_step and the Adam slots.")
  flags.DEFINE_integer("num_attention_heads", None,
                       "tf_*: discriminator heads (default: hidden_size // 64, at least 1).")
  flags.DEFINE_integer("generator_num_attention_heads", None, "tf_*: generator heads (default: its hidden_size // 64).")
  flags.DEFINE_string("task", None, "tf_*: the task_specific/<task> head of a multi-task fine-tuned checkpoint.")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "orbax_to_hf: cast the exported tensors.")
  flags.DEFINE_string("revision", None, "hf_to_orbax: the Hub revision (branch, tag or commit) of Hub model ids.")
  flags.DEFINE_string("push_to_hub", None, "orbax_to_hf: also upload the written folder to this Hub repository "
                      "(owner/name; created if missing; token from HF_TOKEN or `hf auth login`).")
  flags.DEFINE_string("out", None, "Output folder.")
  flags.DEFINE_bool("overwrite", False, "orbax_to_hf: replace an existing non-empty --out folder whole (refused "
                    "otherwise).")


def hf_to_orbax(hf_dir: str, out: str, head: str | None = None, hf_generator_dir: str | None = None,
                revision: str | None = None) -> str:
  """hf_dir / hf_generator_dir: folders or Hub model ids (resolved through the Hugging Face cache)."""
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  hf_dir = hub.resolve(hf_dir, revision)
  hf_generator_dir = None if hf_generator_dir is None else hub.resolve(hf_generator_dir, revision)
  meta, params = _hf_params(hf_dir, head, hf_generator_dir)
  if os.path.isfile(os.path.join(hf_dir, "vocab.txt")):   # so predict / orbax_to_hf need no --vocab_file later
    meta["tokenizer"] = convert.read_tokenizer_settings(os.path.abspath(hf_dir))
  with checkpointing.WorkdirLock(out):   # read first, so bad input leaves no folder behind
    return checkpointing.save_params(out, meta, params)


def _hf_params(hf_dir: str, head: str | None, hf_generator_dir: str | None):
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  if hf_generator_dir is None:
    model = convert.from_hf(hf_dir, head)
    return checkpointing.head_meta(type(model).__name__, model.config), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  disc = convert.from_hf(hf_dir, "ElectraForPreTraining")
  gen = convert.from_hf(hf_generator_dir, "ElectraForMaskedLM")
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    a = np.asarray(getattr(disc.electra.embeddings, name)[...])
    b = np.asarray(getattr(gen.electra.embeddings, name)[...])
    if a.shape != b.shape:
      raise convert.ConversionError(f"{hf_generator_dir}: generator {name} shape {b.shape} differs from the "
                                    f"discriminator's {a.shape}; they cannot share embeddings")
    if not np.array_equal(a, b):
      logging.warning("generator and discriminator %s differ (max |diff| %.3g); the joint model shares the "
                      "discriminator's", name, float(np.abs(a - b).max()))
  joint = nnx.eval_shape(lambda: ElectraPretrainingModel(disc.config, gen.config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(joint)
  gen_params = nnx.to_pure_dict(nnx.state(gen, nnx.Param))
  del gen_params["electra"]["embeddings"]   # shared: stored once, under the discriminator
  params = {"discriminator": nnx.to_pure_dict(nnx.state(disc, nnx.Param)), "generator": gen_params}
  nnx.replace_by_pure_dict(state, params)   # raises if the structure differs
  return checkpointing.pretraining_meta(disc.config, gen.config), params


def orbax_to_hf(checkpoint: str, out: str, part: str | None = None, step: int | None = None,
                vocab_file: str | None = None, lowercase: bool | None = None, dtype: str | None = None,
                push_to_hub: str | None = None, overwrite: bool = False) -> str:
  """Exports a checkpoint of this project as an HF folder. part: "discriminator" (the default) or "generator" of a
  pretraining checkpoint; any other checkpoint holds one network and refuses a part. push_to_hub: a Hub repository
  id (owner/name) to upload the written folder to (created if missing; token from HF_TOKEN).

  `out` must be new or empty unless `overwrite`; then the whole folder is replaced (the export is written beside it
  and swapped in), so no file of an earlier export (tokenizer.json, another head's config) survives to mislead
  transformers."""
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  out = os.path.normpath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
    held = sorted(os.listdir(out))[:4] if os.path.isdir(out) else []
    raise convert.ConversionError(f"--out={out} already exists{' and holds ' + ', '.join(held) if held else ''}; "
                                  f"pass --overwrite to replace it whole, or choose a new folder")
  from electra_jax.modeling import original_heads  # pylint: disable=import-outside-toplevel
  model = checkpointing.load_model(checkpoint, step)
  kind = type(model).__name__
  if kind in original_heads.ORIGINAL_HEADS:
    raise convert.ConversionError(
        f"{checkpoint} holds {kind}, the original ELECTRA head (fine-tuned with head=original), which no transformers "
        f"class has, so it cannot be exported; fine-tune with head=hf (the configs' default) to export")
  if isinstance(model, ElectraPretrainingModel):
    parts = model.hf_parts()   # the networks as HF heads (gdes: the discriminator holds E_G + E_delta)
    if (part or "discriminator") not in parts:
      raise convert.ConversionError(f"--part={part}: {checkpoint}'s generator ({type(model.generator).__name__}) "
                                    f"is not a Hugging Face head; export the discriminator")
    model = parts[part or "discriminator"]
  elif part is not None:
    raise convert.ConversionError(f"--part={part}: {checkpoint} holds one {type(model).__name__}, not a pretraining "
                                  f"checkpoint (generator + discriminator); drop --part to export it")
  tokenizer = checkpointing.read_model_config(checkpoint).get("tokenizer") or {}
  if vocab_file is None and tokenizer.get("vocab_file"):
    vocab_file = tokenizer["vocab_file"]
    if not os.path.isfile(vocab_file):
      raise FileNotFoundError(f"{checkpoint} records the vocab {vocab_file}, which does not exist; pass --vocab_file")
  if lowercase is None:
    lowercase = bool(tokenizer.get("lowercase", True))
  strip_accents = tokenizer.get("strip_accents") if vocab_file == tokenizer.get("vocab_file") else None
  staging = f"{out}.partial-{os.getpid()}"
  try:
    if os.path.exists(staging):
      shutil.rmtree(staging)
    convert.to_hf(model, staging, dtype=dtype, vocab_file=vocab_file, lowercase=lowercase,
                  strip_accents=strip_accents)
    if os.path.isdir(out):
      old = f"{out}.old-{os.getpid()}"
      os.rename(out, old)
      os.rename(staging, out)
      shutil.rmtree(old)
    elif os.path.exists(out):
      os.remove(out)
      os.rename(staging, out)
    else:
      os.rename(staging, out)
  except errors.DiskFullError:
    raise
  except OSError as e:
    if errors.is_disk_full(e):
      raise errors.disk_full(out, "exporting the Hugging Face folder", e) from e
    raise
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  if push_to_hub:
    print(f"pushed {out} to {push_to_hub}: {hub.push(out, push_to_hub)}")
  return out


def tf_command(command: str) -> str:
  """tf_to_orbax / tf_to_hf from the flags; everything is read and checked before anything is written."""
  from electra_jax.convert import tf_convert  # pylint: disable=import-outside-toplevel
  if not FLAGS.tf_checkpoint:
    raise cli.UsageError("--tf_checkpoint is required")
  if FLAGS.continue_pretraining and command != "tf_to_orbax":
    raise cli.UsageError("--continue_pretraining applies to tf_to_orbax")
  conv = tf_convert.load_tf_checkpoint(FLAGS.tf_checkpoint, num_attention_heads=FLAGS.num_attention_heads,
                                       generator_num_attention_heads=FLAGS.generator_num_attention_heads,
                                       task=FLAGS.task, with_slots=FLAGS.continue_pretraining)
  strip = None if FLAGS.strip_accents is None else FLAGS.strip_accents == "true"
  tokenizer = dict(vocab_file=FLAGS.vocab_file, lowercase=FLAGS.lowercase is not False, strip_accents=strip)
  if command == "tf_to_hf":
    dirs = tf_convert.tf_to_hf(conv, FLAGS.out, dtype=FLAGS.dtype, **tokenizer)
    for name, path in dirs.items():
      print(f"{name}: {path}")
    return FLAGS.out
  path = tf_convert.tf_to_orbax(conv, FLAGS.out, continue_pretraining=FLAGS.continue_pretraining, **tokenizer)
  if conv.layout in tf_convert.PRETRAINING_LAYOUTS:
    print("resume with: python -m electra_jax.train.pretrain --config=configs/pretrain.py:size=... "
          f"--workdir={os.path.abspath(path)} " + " ".join(tf_convert.resume_flags(conv)) +
          " --config.optimizer.bias_correction=False --config.data.vocab_file=VOCAB and the original run's "
          "--config.learning_rate, --config.num_train_steps, --config.optimizer.warmup_steps, --config.batch_size")
  return path


COMMANDS = ("hf_to_orbax", "orbax_to_hf", "tf_to_orbax", "tf_to_hf")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise cli.UsageError(f"usage: python -m electra_jax.convert {{{'|'.join(COMMANDS)}}} --out=DIR ... (see --help)")
  if not FLAGS.out:
    raise cli.UsageError("--out is required")
  if argv[1] == "hf_to_orbax":
    if not FLAGS.hf_dir:
      raise cli.UsageError("--hf_dir is required")
    path = hf_to_orbax(FLAGS.hf_dir, FLAGS.out, FLAGS.head, FLAGS.hf_generator_dir, FLAGS.revision)
  elif argv[1].startswith("tf_"):
    path = tf_command(argv[1])
  else:
    if not FLAGS.checkpoint:
      raise cli.UsageError("--checkpoint is required")
    path = orbax_to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.part, FLAGS.step, FLAGS.vocab_file, FLAGS.lowercase,
                       FLAGS.dtype, FLAGS.push_to_hub, FLAGS.overwrite)
  print(f"wrote {os.path.abspath(path)}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
