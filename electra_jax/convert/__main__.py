"""Move weights between Hugging Face folders and this project's Orbax checkpoints, both ways, for any head.

    # HF -> Orbax (e.g. to fine-tune or continue pretraining released weights with our trainers)
    python -m electra_jax.convert hf_to_orbax --hf_dir=electra-small-discriminator --out=ckpt/disc
    python -m electra_jax.convert hf_to_orbax --hf_dir=DISC_DIR --hf_generator_dir=GEN_DIR --out=ckpt/pretrain
    # Orbax -> HF (a fine-tuned head, or the discriminator / generator of a pretraining run)
    python -m electra_jax.convert orbax_to_hf --checkpoint=WORKDIR --out=hf/disc [--part=discriminator]
    python -m electra_jax.convert orbax_to_hf --checkpoint=WORKDIR --out=hf/gen --part=generator --vocab_file=vocab.txt

Every mapping goes through electra_jax/convert/mapping.py; an unmapped, missing or mis-shaped key is an error.
A checkpoint is verified against the fingerprints saved with it before anything is exported. orbax_to_hf writes the
tokenizer files from the vocab the checkpoint records (fine-tuning and pretraining record theirs) unless --vocab_file
says otherwise. Bad input: one line on stderr, exit status 1 (2 for bad usage).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from absl import flags
from flax import nnx

from electra_jax import convert
from electra_jax.modeling import ElectraPretrainingModel
from electra_jax.runtime import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "hf_to_orbax: the HF folder (the discriminator, for a pretraining checkpoint).")
flags.DEFINE_string("hf_generator_dir", None, "hf_to_orbax: the HF generator folder; with it, --out is a joint "
                    "pretraining checkpoint (generator + discriminator with shared embeddings).")
flags.DEFINE_string("head", None, "hf_to_orbax: head class (default: config.json architectures).")
flags.DEFINE_string("checkpoint", None, "orbax_to_hf: workdir, checkpoint directory or one step's directory.")
flags.DEFINE_integer("step", None, "orbax_to_hf: the step to export (default: the latest complete one).")
flags.DEFINE_enum("part", None, ["discriminator", "generator"], "orbax_to_hf: which network of a pretraining "
                  "checkpoint to export (default: the discriminator); refused for other checkpoints.")
flags.DEFINE_string("vocab_file", None, "orbax_to_hf: write tokenizer files from this vocab.txt (default: the vocab "
                    "the checkpoint records, if any).")
flags.DEFINE_bool("lowercase", None, "orbax_to_hf: the tokenizer lower-cases (default: as recorded, else true).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "orbax_to_hf: cast the exported tensors.")
flags.DEFINE_string("out", None, "Output folder.")


def hf_to_orbax(hf_dir: str, out: str, head: str | None = None, hf_generator_dir: str | None = None) -> str:
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
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
                vocab_file: str | None = None, lowercase: bool | None = None, dtype: str | None = None) -> str:
  """Exports a checkpoint of this project as an HF folder. part: "discriminator" (the default) or "generator" of a
  pretraining checkpoint; any other checkpoint holds one network and refuses a part."""
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  model = checkpointing.load_model(checkpoint, step)
  if isinstance(model, ElectraPretrainingModel):
    model = getattr(model, part or "discriminator")
  elif part is not None:
    raise ValueError(f"--part={part}: {checkpoint} holds one {type(model).__name__}, not a pretraining checkpoint "
                     f"(generator + discriminator); drop --part to export it")
  tokenizer = checkpointing.read_model_config(checkpoint).get("tokenizer") or {}
  if vocab_file is None and tokenizer.get("vocab_file"):
    vocab_file = tokenizer["vocab_file"]
    if not os.path.isfile(vocab_file):
      raise FileNotFoundError(f"{checkpoint} records the vocab {vocab_file}, which does not exist; pass --vocab_file")
  if lowercase is None:
    lowercase = bool(tokenizer.get("lowercase", True))
  strip_accents = tokenizer.get("strip_accents") if vocab_file == tokenizer.get("vocab_file") else None
  return convert.to_hf(model, out, dtype=dtype, vocab_file=vocab_file, lowercase=lowercase,
                       strip_accents=strip_accents)


def main(argv):
  if len(argv) != 2 or argv[1] not in ("hf_to_orbax", "orbax_to_hf"):
    raise cli.UsageError("usage: python -m electra_jax.convert {hf_to_orbax|orbax_to_hf} --out=DIR ... (see --help)")
  if not FLAGS.out:
    raise cli.UsageError("--out is required")
  if argv[1] == "hf_to_orbax":
    if not FLAGS.hf_dir:
      raise cli.UsageError("--hf_dir is required")
    path = hf_to_orbax(FLAGS.hf_dir, FLAGS.out, FLAGS.head, FLAGS.hf_generator_dir)
  else:
    if not FLAGS.checkpoint:
      raise cli.UsageError("--checkpoint is required")
    path = orbax_to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.part, FLAGS.step, FLAGS.vocab_file, FLAGS.lowercase,
                       FLAGS.dtype)
  print(f"wrote {os.path.abspath(path)}")


if __name__ == "__main__":
  cli.run(main)
