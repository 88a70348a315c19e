"""The Hugging Face Flax peer: ELECTRA pretraining steps with transformers 4.46.3's Flax classes, jitted.

Runs in its own virtual environment (jax 0.4.30, flax 0.8.5; see benchmarks/requirements-flax-peer.txt), created by
benchmarks/pretrain.py; it imports nothing from electra_jax.

    benchmarks/.venv-flax-peer/bin/python benchmarks/workers/flax_peer.py --batch=/tmp/b.npz --size=small --steps=10

FlaxElectraForMaskedLM (generator) + FlaxElectraForPreTraining (discriminator). As in the original ELECTRA the
generator uses the discriminator's embedding parameters (word, position, token-type tables and embedding LayerNorm:
one copy in the parameter tree, gradients from both networks); its LM head is HF's tied dense on that word table.
One jitted step (pure function of params, optimizer state, batch, rng): the original's masking, generator forward
(HF's class computes logits at every position), MLM loss at the masked positions, Gumbel-max sampling under
stop_gradient, discriminator forward, loss = gen + 50 * disc, grads, optax clip(1.0) + adamw(5e-4, eps 1e-6, wd 0.01).
Dropout on. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  pylint: disable=wrong-import-position

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
import optax  # noqa: E402  pylint: disable=wrong-import-position
import transformers  # noqa: E402  pylint: disable=wrong-import-position
from transformers import FlaxElectraForMaskedLM, FlaxElectraForPreTraining  # noqa: E402  pylint: disable=wrong-import-position


def mask_inputs(rng, input_ids, input_mask, max_pred: int, mask_prob: float):
  """The original ELECTRA masking: positions [B, P], weights, original ids and the masked input."""
  k_score, k_mask = jax.random.split(rng)
  special = ((input_ids == common.CLS_ID) | (input_ids == common.SEP_ID) | (input_ids == common.MASK_ID)
             | (input_ids == common.PAD_ID))
  candidate = input_mask.astype(bool) & ~special
  num = jnp.minimum(jnp.round(input_mask.sum(1) * mask_prob), max_pred).astype(jnp.int32)
  scores = jnp.where(candidate, jax.random.uniform(k_score, input_ids.shape), -1.0)
  _, positions = jax.lax.top_k(scores, max_pred)
  weights = (jnp.arange(max_pred)[None, :] < num[:, None]) & jnp.take_along_axis(candidate, positions, 1)
  originals = jnp.take_along_axis(input_ids, positions, 1)
  use_mask = jax.random.uniform(k_mask, positions.shape) < 0.85
  rows = jnp.arange(input_ids.shape[0])[:, None]
  masked = input_ids.at[rows, positions].set(jnp.where(weights & use_mask, common.MASK_ID, originals))
  return positions, weights, originals, masked


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", required=True)
  p.add_argument("--size", default="small", choices=sorted(common.SIZES))
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--attention_dropout", type=float, default=0.1, help="attention_probs_dropout_prob (ELECTRA's 0.1)")
  args = p.parse_args(argv)
  start = time.perf_counter()

  d = common.model_dims(args.size, args.layers)
  shared = dict(vocab_size=d["vocab_size"], embedding_size=d["embedding_size"], max_position_embeddings=512,
                attention_probs_dropout_prob=args.attention_dropout)
  disc_model = FlaxElectraForPreTraining(transformers.ElectraConfig(**shared, **d["disc"]), seed=0)
  gen_model = FlaxElectraForMaskedLM(transformers.ElectraConfig(**shared, **d["gen"]), seed=1)
  gen_params = dict(gen_model.params)
  gen_params["electra"] = {k: v for k, v in gen_params["electra"].items() if k != "embeddings"}
  params = {"disc": disc_model.params, "gen": gen_params}
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))

  batch = {k: jnp.asarray(v) for k, v in common.load_batch(args.batch).items()}
  ids, mask, types = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  mask_prob = d["mask_prob"]
  max_pred = common.max_predictions(ids.shape[1], mask_prob)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(5e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01))
  opt_state = tx.init(params)

  def loss_fn(params, rng):
    k_mask, k_gen, k_sample, k_disc = jax.random.split(rng, 4)
    positions, weights, originals, masked = mask_inputs(k_mask, ids, mask, max_pred, mask_prob)
    gp = dict(params["gen"])
    gp["electra"] = {**gp["electra"], "embeddings": params["disc"]["electra"]["embeddings"]}
    logits = gen_model(masked, mask, types, params=gp, dropout_rng=k_gen, train=True).logits       # [B, L, V]
    logits = jnp.take_along_axis(logits, positions[..., None], axis=1)                              # [B, P, V]
    w = weights.astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, originals)
    gen_loss = (nll * w).sum() / jnp.maximum(w.sum(), 1.0)
    sampled = jnp.argmax(jax.lax.stop_gradient(logits) + jax.random.gumbel(k_sample, logits.shape), -1)
    rows = jnp.arange(ids.shape[0])[:, None]
    corrupted = ids.at[rows, positions].set(jnp.where(weights, sampled, originals))
    labels = ((corrupted != ids) & mask.astype(bool)).astype(jnp.float32)
    d_logits = disc_model(corrupted, mask, types, params=params["disc"], dropout_rng=k_disc, train=True).logits
    bce = optax.sigmoid_binary_cross_entropy(d_logits, labels)
    disc_loss = (bce * mask).sum() / mask.sum()
    return gen_loss + 50.0 * disc_loss

  @jax.jit
  def train_step(params, opt_state, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {"params": params, "opt": opt_state, "step": 0}
  losses = []
  t0 = time.perf_counter()
  compiled = train_step.lower(params, opt_state, jax.random.PRNGKey(0)).compile()
  compile_s = time.perf_counter() - t0

  def step():
    rng = jax.random.fold_in(jax.random.PRNGKey(0), state["step"])
    state["params"], state["opt"], loss = compiled(state["params"], state["opt"], rng)
    state["step"] += 1
    losses.append(float(loss))   # blocks until the step is done

  times = common.time_steps(step, args.warmup, args.steps)
  common.emit({"impl": "hf_flax", "task": "pretrain", "n_params": int(n_params), "loss_first": losses[0],
               "loss_last": losses[-1], **common.summarize(times), "times": times, "compile_s": compile_s,
               "jax_version": jax.__version__, "transformers_version": transformers.__version__,
               "wall_s": time.perf_counter() - start, "peak_rss_mib": common.peak_rss_mib()})


if __name__ == "__main__":
  main()
