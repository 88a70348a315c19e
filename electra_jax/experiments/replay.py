r"""Replays a pretraining trace (docs/trace-format.md) with transformers' PyTorch ELECTRA and the original optimizer.

    pip install -e .[replay]                                   # torch + transformers
    python -m electra_jax.experiments.trace --config=configs/pretrain.py:size=tiny --steps=8 --out=/tmp/t
    python -m electra_jax.experiments.replay /tmp/t            # one line: OK ... (exit 0) or FAIL ... (exit 1)

Written from the format alone: it imports nothing of electra_jax (torch, transformers, numpy, safetensors only).
ElectraForMaskedLM (the generator) and ElectraForPreTraining (the discriminator) are built from each initial folder's
config.json and weights; the trace's shared tensors become ONE torch Parameter used by both models (so their gradients
sum), and a tied generator output head is the word-embedding Parameter. Every step feeds the recorded inputs, computes
the losses of the format, clips by the global norm, and applies AdamWeightDecay as google-research/electra's
model/optimization.py defines it (no bias correction unless the trace says so; decay skipped for names containing a
no_decay entry). Compared: each step's generator, discriminator and total loss (1e-4 relative) and gradient norm
(1e-3 relative) with the recorded ones, and after the last step every tensor of final/ (2e-4 absolute).
Exit status: 0 agreement, 1 a difference (the first step / tensor that differed is named), 2 an unreadable trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

FORMAT = "electra-pretraining-trace/1"
LOSS_RTOL = 1e-4
NORM_RTOL = 1e-3
WEIGHT_ATOL = 2e-4
_LOSSES = ("generator_loss", "discriminator_loss", "total_loss")
_ARRAYS = ("original_ids", "attention_mask", "token_type_ids", "generator_input_ids", "generator_targets",
           "discriminator_input_ids", "discriminator_labels", "discriminator_weights", "learning_rate", *_LOSSES,
           "grad_global_norm")


class TraceFormatError(ValueError):
  """A trace folder that does not follow the format."""


# ------------------------------------------------------------------------------------------------ reading
def _read_tensors(folder: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
  if os.path.isfile(single):
    return dict(load_file(single))
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
    out: dict[str, np.ndarray] = {}
    for name in files:
      out.update(load_file(os.path.join(folder, name)))
    return out
  raise TraceFormatError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _set_param(model, name: str, param) -> None:
  *path, leaf = name.split(".")
  module = model.get_submodule(".".join(path))
  setattr(module, leaf, param)


def _get_param(model, name: str):
  *path, leaf = name.split(".")
  return getattr(model.get_submodule(".".join(path)), leaf)


def _build(folder: str, kind: str, tied_output: bool):
  """An HF model from folder's config.json and weights; every parameter must come from the file (a tied output head
  may be absent)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(os.path.join(folder, "config.json")):
    raise TraceFormatError(f"{folder}: no config.json")
  config = transformers.ElectraConfig.from_json_file(os.path.join(folder, "config.json"))
  config.tie_word_embeddings = bool(tied_output) if kind == "generator" else config.tie_word_embeddings
  config._attn_implementation = "eager"   # pylint: disable=protected-access  (the plain softmax attention)
  cls = transformers.ElectraForMaskedLM if kind == "generator" else transformers.ElectraForPreTraining
  torch.manual_seed(0)
  model = cls(config).float()
  tensors = _read_tensors(folder)
  params = dict(model.named_parameters(remove_duplicate=False))
  missing = [n for n in params if n not in tensors and not (tied_output and n == "generator_lm_head.weight")]
  unknown = [n for n in tensors if n not in params]
  if missing or unknown:
    raise TraceFormatError(f"{folder}: {'missing ' + missing[0] if missing else 'unexpected ' + unknown[0]} for "
                           f"{cls.__name__} built from its config.json")
  with torch.no_grad():
    for name, value in tensors.items():
      if tuple(params[name].shape) != tuple(value.shape):
        raise TraceFormatError(f"{folder}: {name} has shape {value.shape}, {cls.__name__} expects "
                               f"{tuple(params[name].shape)}")
      params[name].copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
  for p in config.to_dict():
    if p.endswith("dropout_prob") and float(getattr(config, p) or 0.0) != 0.0:
      raise TraceFormatError(f"{folder}/config.json: {p}={getattr(config, p)}; a trace's steps run without dropout")
  model.train()
  return model, tensors


# ------------------------------------------------------------------------------------------------ the replay
class Replay:
  """The two models with their shared tensors tied, and AdamWeightDecay's state."""

  def __init__(self, trace_dir: str):
    import torch  # pylint: disable=import-outside-toplevel
    self.dir = trace_dir
    with open(os.path.join(trace_dir, "trace.json"), encoding="utf-8") as f:
      self.meta = json.load(f)
    if self.meta.get("format") != FORMAT:
      raise TraceFormatError(f"{trace_dir}/trace.json: format {self.meta.get('format')!r}, expected {FORMAT!r}")
    with np.load(os.path.join(trace_dir, "steps.npz")) as z:
      absent = [k for k in _ARRAYS if k not in z.files]
      if absent:
        raise TraceFormatError(f"{trace_dir}/steps.npz: no array {absent[0]}")
      self.steps = {k: z[k] for k in z.files}
    tied = bool(self.meta.get("tied_generator_output", True))
    self.models: dict[str, Any] = {}
    self.initial: dict[str, dict[str, np.ndarray]] = {}
    for kind in ("generator", "discriminator"):
      folder = os.path.join(trace_dir, "initial", kind)
      if os.path.isdir(folder):
        self.models[kind], self.initial[kind] = _build(folder, kind, tied)
    if "generator" not in self.models and "discriminator" not in self.models:
      raise TraceFormatError(f"{trace_dir}/initial: neither generator/ nor discriminator/")
    self.shared = list(self.meta.get("shared", []))
    for name in self.shared:   # one Parameter in both models
      gen, disc = self.initial.get("generator", {}), self.initial.get("discriminator", {})
      if name not in gen or name not in disc:
        raise TraceFormatError(f"{trace_dir}: shared tensor {name} is not in both initial folders")
      if gen[name].tobytes() != disc[name].tobytes():
        raise TraceFormatError(f"{trace_dir}: shared tensor {name} differs between the two initial folders")
      _set_param(self.models["generator"], name, _get_param(self.models["discriminator"], name))
    if tied and "generator" in self.models:
      g = self.models["generator"]
      g.generator_lm_head.weight = g.electra.embeddings.word_embeddings.weight
    # distinct parameters, each under its first name (discriminator first; a tied head under the embeddings' name)
    self.params: list[tuple[str, Any]] = []
    seen = set()
    for kind in ("discriminator", "generator"):
      if kind in self.models:
        for name, p in self.models[kind].named_parameters(remove_duplicate=False):
          if id(p) not in seen:
            seen.add(id(p))
            self.params.append((name, p))
    o = self.meta["optimizer"]
    if o.get("name", "adamw") != "adamw":
      raise TraceFormatError(f"{trace_dir}/trace.json: optimizer {o.get('name')!r}; this replay knows adamw")
    self.opt = o
    self.m = [torch.zeros_like(p) for _, p in self.params]
    self.v = [torch.zeros_like(p) for _, p in self.params]

  def losses(self, s: int):
    import torch  # pylint: disable=import-outside-toplevel
    import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
    a = {k: torch.from_numpy(np.asarray(self.steps[k][s])) for k in _ARRAYS if self.steps[k].ndim > 1}
    mask, types = a["attention_mask"].long(), a["token_type_ids"].long()
    zero = torch.zeros((), dtype=torch.float32)
    gen_loss = disc_loss = zero
    if "generator" in self.models:
      logits = self.models["generator"](input_ids=a["generator_input_ids"].long(), attention_mask=mask,
                                        token_type_ids=types).logits
      targets = a["generator_targets"].bool()
      ce = F.cross_entropy(logits[targets], a["original_ids"].long()[targets], reduction="sum")
      gen_loss = ce / targets.sum().clamp(min=1)
    if "discriminator" in self.models:
      logits = self.models["discriminator"](input_ids=a["discriminator_input_ids"].long(), attention_mask=mask,
                                            token_type_ids=types).logits
      w = a["discriminator_weights"].float()
      bce = F.binary_cross_entropy_with_logits(logits, a["discriminator_labels"].float(), reduction="none")
      disc_loss = (bce * w).sum() / w.sum().clamp(min=1e-6)
    weights = self.meta["loss"]
    total = float(weights["generator_weight"]) * gen_loss + float(weights["discriminator_weight"]) * disc_loss
    return gen_loss, disc_loss, total

  def update(self, s: int) -> float:
    """AdamWeightDecay on the gradients now in .grad; returns the global norm before clipping."""
    import torch  # pylint: disable=import-outside-toplevel
    o = self.opt
    b1, b2, eps, wd = float(o["b1"]), float(o["b2"]), float(o["eps"]), float(o["weight_decay"])
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.params]
    norm = torch.sqrt(sum(torch.sum(g * g) for g in grads))
    clip = o.get("clip_global_norm")
    if clip:
      grads = [g * (float(clip) / torch.maximum(norm, torch.tensor(float(clip)))) for g in grads]
    lr = float(self.steps["learning_rate"][s])
    t = s + 1
    with torch.no_grad():
      for i, ((name, p), g) in enumerate(zip(self.params, grads)):
        self.m[i] = b1 * self.m[i] + (1.0 - b1) * g
        self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g
        m, v = self.m[i], self.v[i]
        if o.get("bias_correction", False):
          m, v = m / (1.0 - b1 ** t), v / (1.0 - b2 ** t)
        u = m / (torch.sqrt(v) + eps)
        if wd and not any(x in name for x in o.get("no_decay", [])):
          u = u + wd * p
        p.sub_(lr * u)
        p.grad = None
    return float(norm)

  def parameter(self, kind: str, name: str):
    model = self.models[kind]
    if name == "generator_lm_head.weight" and self.meta.get("tied_generator_output", True):
      name = "electra.embeddings.word_embeddings.weight"
    return _get_param(model, name)


def _rel(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-6)


def replay(trace_dir: str) -> tuple[bool, str]:
  """(agreement, one summary line)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(max(1, torch.get_num_threads()))
  torch.backends.cuda.matmul.allow_tf32 = False
  r = Replay(trace_dir)
  n = int(r.meta["steps"])
  if any(r.steps[k].shape[0] != n for k in _ARRAYS):
    raise TraceFormatError(f"{trace_dir}/steps.npz: arrays without the leading {n} steps of trace.json")
  failures: list[str] = []
  worst_loss = worst_norm = 0.0
  for s in range(n):
    got = r.losses(s)
    got[2].backward()
    norm = r.update(s)
    for name, value in zip(_LOSSES, got):
      want, value = float(r.steps[name][s]), float(value.detach())
      err = _rel(value, want)
      worst_loss = max(worst_loss, err)
      if err > LOSS_RTOL and len(failures) < 3:
        failures.append(f"step {s + 1} {name} {value:.7g}, recorded {want:.7g} (relative {err:.1e})")
    err = _rel(norm, float(r.steps["grad_global_norm"][s]))
    worst_norm = max(worst_norm, err)
    if err > NORM_RTOL and len(failures) < 3:
      failures.append(f"step {s + 1} grad_global_norm {norm:.7g}, recorded {float(r.steps['grad_global_norm'][s]):.7g}"
                      f" (relative {err:.1e})")
  worst_weight, bad, count = 0.0, [], 0
  for kind in r.models:
    final = _read_tensors(os.path.join(trace_dir, "final", kind))
    for name, want in final.items():
      got = r.parameter(kind, name).detach().numpy()
      if got.shape != want.shape:
        raise TraceFormatError(f"{trace_dir}/final/{kind}: {name} has shape {want.shape}, initial {got.shape}")
      diff = float(np.max(np.abs(got - want.astype(np.float32)))) if want.size else 0.0
      count += 1
      worst_weight = max(worst_weight, diff)
      if not diff <= WEIGHT_ATOL:
        bad.append((diff, f"{kind} {name}"))
  if bad:
    bad.sort(reverse=True)
    failures.append(f"final weights: {len(bad)} of {count} tensors differ by more than {WEIGHT_ATOL:g}, the most "
                    f"{bad[0][1]} (max |diff| {bad[0][0]:.2e})")
  what = (f"{n} steps of {r.meta.get('objective')} (weight sharing {r.meta.get('weight_sharing')}, "
          f"{'+'.join(r.models)}) with transformers {transformers.__version__}")
  if failures:
    return False, f"FAIL: {what}: " + "; ".join(failures)
  return True, (f"OK: {what}: losses within {worst_loss:.1e} relative (tolerance {LOSS_RTOL:g}), gradient norms within "
                f"{worst_norm:.1e}, final weights within {worst_weight:.1e} absolute over {count} tensors "
                f"(tolerance {WEIGHT_ATOL:g})")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="replay", description=__doc__.split("\n", 1)[0])
  parser.add_argument("trace_dir", help="a folder written by python -m electra_jax.experiments.trace")
  args = parser.parse_args(argv)
  try:
    ok, line = replay(args.trace_dir)
  except (TraceFormatError, OSError, KeyError, ValueError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    print(f"replay: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2
  except ImportError as e:
    print(f"replay: error: {e}; install the replay extra: pip install -e .[replay]", file=sys.stderr)
    return 2
  print(line)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
