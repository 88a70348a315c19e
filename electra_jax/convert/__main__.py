"""Move weights between Hugging Face folders and this project's Orbax checkpoints, both ways, for any head.

    # HF -> Orbax (e.g. to fine-tune or continue pretraining released weights with our trainers)
    python -m electra_jax.convert hf_to_orbax --hf_dir=electra-small-discriminator --out=ckpt/disc
    python -m electra_jax.convert hf_to_orbax --hf_dir=DISC_DIR --hf_generator_dir=GEN_DIR --out=ckpt/pretrain
    # Orbax -> HF (a fine-tuned head, or the discriminator / generator of a pretraining run)
    python -m electra_jax.convert orbax_to_hf --checkpoint=WORKDIR --out=hf/disc [--part=discriminator]
    python -m electra_jax.convert orbax_to_hf --checkpoint=WORKDIR --out=hf/gen --part=generator --vocab_file=vocab.txt

Every mapping goes through electra_jax/convert/mapping.py; an unmapped, missing or mis-shaped key is an error.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
from absl import app, flags
from flax import nnx

from electra_jax import convert
from electra_jax.modeling import ConfigError, ElectraPretrainingModel

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_dir", None, "hf_to_orbax: the HF folder (the discriminator, for a pretraining checkpoint).")
flags.DEFINE_string("hf_generator_dir", None, "hf_to_orbax: the HF generator folder; with it, --out is a joint "
                    "pretraining checkpoint (generator + discriminator with shared embeddings).")
flags.DEFINE_string("head", None, "hf_to_orbax: head class (default: config.json architectures).")
flags.DEFINE_string("checkpoint", None, "orbax_to_hf: workdir, checkpoint directory or one step's directory.")
flags.DEFINE_integer("step", None, "orbax_to_hf: the step to export (default: the latest complete one).")
flags.DEFINE_enum("part", "discriminator", ["discriminator", "generator"], "orbax_to_hf: which network of a "
                  "pretraining checkpoint to export.")
flags.DEFINE_string("vocab_file", None, "orbax_to_hf: also write tokenizer files from this vocab.txt.")
flags.DEFINE_bool("lowercase", True, "orbax_to_hf: the tokenizer lower-cases (with --vocab_file).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "orbax_to_hf: cast the exported tensors.")
flags.DEFINE_string("out", None, "Output folder.")


def hf_to_orbax(hf_dir: str, out: str, head: str | None = None, hf_generator_dir: str | None = None) -> str:
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  if hf_generator_dir is None:
    model = convert.from_hf(hf_dir, head)
    meta = checkpointing.head_meta(type(model).__name__, model.config)
    return checkpointing.save_params(out, meta, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
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
  meta = checkpointing.pretraining_meta(disc.config, gen.config)
  return checkpointing.save_params(out, meta, params)


def orbax_to_hf(checkpoint: str, out: str, part: str = "discriminator", step: int | None = None,
                vocab_file: str | None = None, lowercase: bool = True, dtype: str | None = None) -> str:
  from electra_jax import checkpointing  # pylint: disable=import-outside-toplevel
  model = checkpointing.load_model(checkpoint, step)
  if isinstance(model, ElectraPretrainingModel):
    model = getattr(model, part)
  return convert.to_hf(model, out, dtype=dtype, vocab_file=vocab_file, lowercase=lowercase)


def main(argv):
  if len(argv) != 2 or argv[1] not in ("hf_to_orbax", "orbax_to_hf"):
    print("usage: python -m electra_jax.convert {hf_to_orbax|orbax_to_hf} --out=DIR ...", file=sys.stderr)
    sys.exit(2)
  try:
    if not FLAGS.out:
      raise ValueError("--out is required")
    if argv[1] == "hf_to_orbax":
      if not FLAGS.hf_dir:
        raise ValueError("--hf_dir is required")
      path = hf_to_orbax(FLAGS.hf_dir, FLAGS.out, FLAGS.head, FLAGS.hf_generator_dir)
    else:
      if not FLAGS.checkpoint:
        raise ValueError("--checkpoint is required")
      path = orbax_to_hf(FLAGS.checkpoint, FLAGS.out, FLAGS.part, FLAGS.step, FLAGS.vocab_file, FLAGS.lowercase,
                         FLAGS.dtype)
  except (convert.ConversionError, ConfigError, FileNotFoundError, ValueError) as e:
    print(f"convert: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {os.path.abspath(path)}")


if __name__ == "__main__":
  app.run(main)
