"""The Hugging Face PyTorch peer: ELECTRA pretraining or fine-tuning steps with transformers' own classes.

    python benchmarks/workers/torch_peer.py --task=pretrain --batch=/tmp/b.npz --size=small --steps=10 --warmup=3
    python benchmarks/workers/torch_peer.py --task=finetune --batch=/tmp/c.npz --size=small --steps=10
    python benchmarks/workers/torch_peer.py --task=pretrain --batch=/tmp/b.npz --device=cuda --dtype=bfloat16 --compile

pretrain: generator ElectraForMaskedLM + discriminator ElectraForPreTraining. As in the original ELECTRA the generator
uses the discriminator's embedding module (word, position and token-type tables and the embedding LayerNorm; the
generator's LM head stays tied to that word table); the generator keeps its own embeddings_project. Each step: the
original's masking (up to max_predictions positions, 85% [MASK] / 15% kept), generator forward (HF's ElectraForMaskedLM
computes vocabulary logits at every position, its own behaviour), MLM loss at the masked positions, sampling of the
replacements from the generator's softmax without gradient (torch.multinomial, torch's own sampler), discriminator
forward on the corrupted input, loss = gen + 50 * disc, backward, global-norm clip 1.0, torch.optim.AdamW (lr 5e-4,
eps 1e-6, weight decay 0.01). Dropout on (train mode).

finetune: ElectraForSequenceClassification, cross-entropy, backward, clip, AdamW; and inference (eval mode,
torch.inference_mode) of the same batch. torch threads = the machine's cores.

Attention is transformers' SDPA implementation (torch.nn.functional.scaled_dot_product_attention: flash or
memory-efficient kernels on a GPU) unless --attn=eager. --compile wraps each model in torch.compile (default mode,
TorchInductor; forward and backward compiled, masking, sampling, loss and AdamW stay eager); the first step, which
compiles, is reported as compile_s (first_step_s for every run).

--device=cuda runs on the GPU (every timed step ends in a synchronisation: the loss read back, or
torch.cuda.synchronize after inference) and reports torch.cuda.max_memory_allocated; --dtype=bfloat16 runs the
forward passes under torch.autocast (bfloat16), the usual mixed precision; --f32_matmul=tf32 lets float32 products
use TensorFloat-32 (torch.set_float32_matmul_precision("high")), `highest` keeps torch's own full float32.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402  pylint: disable=wrong-import-position

import torch  # noqa: E402  pylint: disable=wrong-import-position
import transformers  # noqa: E402  pylint: disable=wrong-import-position

# --f32_matmul -> torch.set_float32_matmul_precision.
F32_MATMUL = {"highest": "highest", "tf32": "high"}


def hf_configs(size: str, layers: int | None, attn: str = "sdpa", attention_dropout: float = 0.1):
  d = common.model_dims(size, layers)
  shared = dict(vocab_size=d["vocab_size"], embedding_size=d["embedding_size"], max_position_embeddings=512,
                attn_implementation=attn, attention_probs_dropout_prob=attention_dropout)
  disc = transformers.ElectraConfig(**shared, **d["disc"])
  gen = transformers.ElectraConfig(**shared, **d["gen"])
  return disc, gen, d["mask_prob"]


def mask_inputs(input_ids, input_mask, max_pred: int, mask_prob: float, gen: torch.Generator):
  """The original ELECTRA masking: positions [B, P], their weights, original ids, and the masked input."""
  b, length = input_ids.shape
  dev = input_ids.device
  special = ((input_ids == common.CLS_ID) | (input_ids == common.SEP_ID) | (input_ids == common.MASK_ID)
             | (input_ids == common.PAD_ID))
  candidate = input_mask.bool() & ~special
  num = torch.clamp(torch.round(input_mask.sum(1).float() * mask_prob), max=max_pred).long()
  scores = torch.rand(b, length, generator=gen, device=dev).masked_fill(~candidate, -1.0)
  positions = scores.topk(max_pred, dim=1).indices
  weights = (torch.arange(max_pred, device=dev)[None, :] < num[:, None]) & candidate.gather(1, positions)
  originals = input_ids.gather(1, positions)
  use_mask = torch.rand(b, max_pred, generator=gen, device=dev) < 0.85
  masked = input_ids.scatter(1, positions, torch.where(weights & use_mask, common.MASK_ID, originals))
  return positions, weights, originals, masked


def _sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def _autocast(args):
  """bfloat16 mixed precision for --dtype=bfloat16 (forward passes only, as torch's AMP recipe has it)."""
  return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16,
                        enabled=args.dtype == "bfloat16")


def _first_and_timed(step, args) -> tuple[float, list[float]]:
  """The first step's seconds (it compiles under --compile), then `common.time_steps` of the rest of the warm-up and
  the timed steps (each step ends in a read of its loss, which waits for the device)."""
  start = time.perf_counter()
  step()
  first_s = time.perf_counter() - start
  return first_s, common.time_steps(step, max(0, args.warmup - 1), args.steps)


def _load(args) -> dict:
  return {k: torch.from_numpy(v).long().to(args.device) for k, v in common.load_batch(args.batch).items()}


def pretrain(args) -> dict:
  batch = _load(args)
  disc_cfg, gen_cfg, mask_prob = hf_configs(args.size, args.layers, args.attn, args.attention_dropout)
  torch.manual_seed(0)
  disc = transformers.ElectraForPreTraining(disc_cfg).to(args.device)
  gen = transformers.ElectraForMaskedLM(gen_cfg).to(args.device)
  gen.electra.embeddings = disc.electra.embeddings                        # share the embedding module (original)
  gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight   # LM head tied to the shared table
  disc.train()
  gen.train()
  params = {id(p): p for p in list(disc.parameters()) + list(gen.parameters())}
  params = list(params.values())
  n_params = sum(p.numel() for p in params)
  opt = torch.optim.AdamW(params, lr=5e-4, eps=1e-6, weight_decay=0.01)
  ids, mask, types = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
  max_pred = common.max_predictions(ids.shape[1], mask_prob)
  attn = disc.config._attn_implementation  # pylint: disable=protected-access
  if args.compile:
    gen, disc = torch.compile(gen), torch.compile(disc)
  rng = torch.Generator(device=args.device).manual_seed(0)
  losses = []

  def step():
    positions, weights, originals, masked = mask_inputs(ids, mask, max_pred, mask_prob, rng)
    with _autocast(args):
      logits = gen(input_ids=masked, attention_mask=mask, token_type_ids=types).logits        # [B, L, V]
    logits = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1])).float()  # [B, P, V]
    w = weights.float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), originals, reduction="none")
    gen_loss = (nll * w).sum() / w.sum().clamp(min=1.0)
    with torch.no_grad():
      probs = torch.softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
      sampled = torch.multinomial(probs, 1, generator=rng).reshape(logits.shape[:-1])   # torch's own sampler
      corrupted = ids.scatter(1, positions, torch.where(weights, sampled, originals))
      labels = ((corrupted != ids) & mask.bool()).float()
    with _autocast(args):
      d_logits = disc(input_ids=corrupted, attention_mask=mask, token_type_ids=types).logits   # [B, L]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(d_logits.float(), labels, reduction="none")
    disc_loss = (bce * mask).sum() / mask.sum()
    loss = gen_loss + 50.0 * disc_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    losses.append(float(loss.detach()))

  first_s, times = _first_and_timed(step, args)
  return {"impl": "hf_torch_compile" if args.compile else "hf_torch", "task": "pretrain", "n_params": n_params,
          "loss_first": losses[0], "attn_implementation": attn, "compiled": args.compile, "first_step_s": first_s,
          "compile_s": first_s if args.compile else None, "loss_last": losses[-1], **common.summarize(times),
          "times": times}


def finetune(args) -> dict:
  batch = _load(args)
  disc_cfg, _, _ = hf_configs(args.size, args.layers, args.attn, args.attention_dropout)
  disc_cfg.num_labels = 2
  torch.manual_seed(0)
  model = transformers.ElectraForSequenceClassification(disc_cfg).to(args.device)
  params = list(model.parameters())
  opt = torch.optim.AdamW(params, lr=1e-4, eps=1e-6, weight_decay=0.01)
  kw = dict(input_ids=batch["input_ids"], attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"])
  labels = batch["labels"]
  losses = []

  def train_step():
    model.train()
    with _autocast(args):
      loss = model(**kw, labels=labels).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    losses.append(float(loss.detach()))

  def infer_step():
    with torch.inference_mode(), _autocast(args):
      model(**kw).logits.argmax(-1)
    _sync(torch.device(args.device))

  train_times = common.time_steps(train_step, args.warmup, args.steps)
  model.eval()
  infer_times = common.time_steps(infer_step, args.warmup, args.steps)
  return {"impl": "hf_torch", "task": "finetune", "n_params": sum(p.numel() for p in params),
          "attn_implementation": getattr(model.config, "_attn_implementation", None),
          "loss_first": losses[0], "loss_last": losses[-1],
          "train": {**common.summarize(train_times), "times": train_times},
          "infer": {**common.summarize(infer_times), "times": infer_times}}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", choices=("pretrain", "finetune"), required=True)
  p.add_argument("--batch", required=True, help=".npz written by benchmarks/common.save_batch")
  p.add_argument("--size", default="small", choices=sorted(common.SIZES))
  p.add_argument("--layers", type=int, default=None)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--attention_dropout", type=float, default=0.1, help="attention_probs_dropout_prob (ELECTRA's 0.1)")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: the machine's cores)")
  p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="bfloat16: forward passes under torch.autocast")
  p.add_argument("--f32_matmul", default="default", choices=sorted(F32_MATMUL) + ["default"],
                 help="float32 product precision (default: torch's own, full float32)")
  p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"), help="transformers' attention implementation")
  p.add_argument("--compile", action="store_true", help="torch.compile the models (pretrain only)")
  args = p.parse_args(argv)
  if args.compile and args.task != "pretrain":
    p.error("--compile is implemented for --task=pretrain only")
  threads = args.threads or common.cpu_threads()
  torch.set_num_threads(threads)
  if args.f32_matmul != "default":
    torch.set_float32_matmul_precision(F32_MATMUL[args.f32_matmul])
  start = time.perf_counter()
  result = pretrain(args) if args.task == "pretrain" else finetune(args)
  result.update(torch_version=torch.__version__, transformers_version=transformers.__version__, threads=threads,
                device=args.device, dtype=args.dtype, f32_matmul=args.f32_matmul,
                wall_s=time.perf_counter() - start, peak_rss_mib=common.peak_rss_mib())
  if args.device == "cuda":
    result.update(device_kind=torch.cuda.get_device_name(), device_peak_mib=torch.cuda.max_memory_allocated() / 2**20)
  common.emit(result)


if __name__ == "__main__":
  main()
