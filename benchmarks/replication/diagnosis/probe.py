"""Why micro ELECTRA checkpoints fine-tune below random initialisation (issue 25 §3): the measurements.

    python benchmarks/replication/diagnosis/probe.py pretrain --variant=electra --out=/work/diag-runs/electra
    python benchmarks/replication/diagnosis/probe.py stats --run=/work/diag-runs/electra --out=stats.json
    python benchmarks/replication/diagnosis/probe.py finetune --init=CKPT --lr=1e-3 --out=DIR

`pretrain` runs the replication harness's exact micro pretraining config (configs/replicate.py size=micro, the
variant's overrides from electra_jax/experiments/suites.py) and keeps a checkpoint every --every steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

# pylint: disable=wrong-import-position
from electra_jax import paths  # noqa: E402
from electra_jax.experiments import run_configs, suites  # noqa: E402


def harness_config(size: str = "micro"):
  return run_configs.config_module("replicate").get_config(f"size={size}")


def cmd_pretrain(args) -> None:
  from electra_jax.train import pretrain_lib  # pylint: disable=import-outside-toplevel
  hc = harness_config()
  config = run_configs.pretrain_config(hc, suites.VARIANTS[args.variant], args.data_workdir or args.out)
  config.num_train_steps = args.steps
  config.checkpoint_every_steps = args.every
  config.keep_checkpoints = args.steps // args.every + 1
  pretrain_lib.train_and_evaluate(config, args.out)


# ------------------------------------------------------------------------------------------------ export
def cmd_export(args) -> None:
  """Each kept checkpoint's discriminator as an HF folder OUT/<step>, and a random initialisation as OUT/init (the
  same ElectraConfig, initialised as fine-tuning from scratch initialises it)."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from electra_jax import checkpointing, convert, modeling  # pylint: disable=import-outside-toplevel
  from electra_jax.convert.__main__ import orbax_to_hf  # pylint: disable=import-outside-toplevel
  ckpt_dir = os.path.join(args.run, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  for step in steps:
    out = os.path.join(args.out, str(step))
    if not os.path.isfile(os.path.join(out, "model.safetensors")):
      orbax_to_hf(os.path.join(ckpt_dir, str(step)), out)
  meta = checkpointing.read_model_config(args.run)
  config = modeling.ElectraConfig.from_hf_dict(meta["discriminator"])
  out = os.path.join(args.out, "init")
  if not os.path.isfile(os.path.join(out, "model.safetensors")):
    convert.to_hf(modeling.ElectraForPreTraining(config, rngs=nnx.Rngs(args.seed)), out,
                  vocab_file=meta["tokenizer"]["vocab_file"])
  print("exported", ["init"] + steps, "to", args.out)


# ------------------------------------------------------------------------------------------------ stats
def _sst2(split: str, limit: int = -1):
  path = os.path.join(os.environ.get("ELECTRA_DATA_DIR", "/work/shared/data"), "glue_data", "SST-2", f"{split}.tsv")
  with open(path, encoding="utf-8") as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]
  rows = rows[:limit] if limit > 0 else rows
  return [r[0] for r in rows], [int(r[1]) for r in rows]


def _effective_rank(x) -> float:
  """exp(entropy of the normalised singular values) of the centred rows (Roy & Vetterli 2007): 1 for a single
  direction, the dimension for isotropic features."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  x = x - x.mean(0, keepdims=True)
  s = np.linalg.svd(x, compute_uv=False)
  p = s / max(s.sum(), 1e-30)
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


def _features(folder: str, sentences, max_len: int = 64):
  """Per layer (embeddings, layer 1..L): [CLS] states [N, H], every real token's states [T, H]; the FFN's GELU inputs
  of every real token per layer; the discriminator's logits at [CLS] and at the other real tokens; the last layer's
  mean over real tokens [N, H]."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  tok = transformers.BertTokenizerFast(os.path.join(folder, "vocab.txt"), do_lower_case=True)
  model = transformers.ElectraForPreTraining.from_pretrained(folder).eval()
  gelu_in: list[list] = [[] for _ in model.electra.encoder.layer]
  hooks = [layer.intermediate.dense.register_forward_hook(lambda m, i, o, k=k: gelu_in[k].append(o))
           for k, layer in enumerate(model.electra.encoder.layer)]
  cls, tokens, cls_logit, tok_logit, gelu, mean = None, None, [], [], [[] for _ in gelu_in], []
  with torch.no_grad():
    for start in range(0, len(sentences), 128):
      enc = tok(sentences[start:start + 128], padding="max_length", truncation=True, max_length=max_len,
                return_tensors="pt")
      for g in gelu_in:
        g.clear()
      out = model(**enc, output_hidden_states=True)
      real = enc["attention_mask"].bool()
      hs = [h.numpy() for h in out.hidden_states]
      if cls is None:
        cls, tokens = [[] for _ in hs], [[] for _ in hs]
      for k, h in enumerate(hs):
        cls[k].append(h[:, 0])
        tokens[k].append(h[real.numpy()])
      for k, g in enumerate(gelu_in):
        gelu[k].append(g[0][real].numpy())
      m = real.numpy()[..., None]
      mean.append((hs[-1] * m).sum(1) / m.sum(1))
      logits = out.logits.numpy()
      cls_logit.append(logits[:, 0])
      other = real.clone()
      other[:, 0] = False
      tok_logit.append(logits[other.numpy()])
  for h in hooks:
    h.remove()
  cat = lambda xs: np.concatenate(xs, 0)  # noqa: E731
  return dict(cls=[cat(c) for c in cls], tokens=[cat(t) for t in tokens], gelu=[cat(g) for g in gelu],
              cls_logit=cat(cls_logit), tok_logit=cat(tok_logit), mean=cat(mean), model=model)


def representation_stats(folder: str, sentences) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  f = _features(folder, sentences)
  cls, tokens, gelu, cls_logit, tok_logit, model = (f[k] for k in ("cls", "tokens", "gelu", "cls_logit", "tok_logit",
                                                                    "model"))
  rng = np.random.default_rng(0)
  out = {"layers": []}
  for k, (c, t) in enumerate(zip(cls, tokens)):
    sample = t[rng.choice(len(t), size=min(4000, len(t)), replace=False)]
    mean_c = c.mean(0)
    unit = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = unit @ unit.T
    layer = {
        "layer": k,                                                     # 0 = embeddings
        "token_norm": float(np.linalg.norm(t, axis=1).mean()),
        "cls_norm": float(np.linalg.norm(c, axis=1).mean()),
        # how much [CLS] differs between sentences, relative to its size
        "cls_spread": float(np.sqrt(((c - mean_c) ** 2).sum(1).mean()) / np.linalg.norm(mean_c)),
        "cls_mean_cosine": float((cos.sum() - len(c)) / (len(c) * (len(c) - 1))),
        "cls_distinct": int(len(np.unique(np.round(unit, 3), axis=0))),  # distinct directions at 1e-3
        "cls_effective_rank": _effective_rank(c),
        "token_effective_rank": _effective_rank(sample),
    }
    if k > 0:
      g = gelu[k - 1]
      layer["ffn_gelu_input_below_-3"] = float((g < -3).mean())     # GELU's output ~0 and gradient ~0 there
      layer["ffn_gelu_input_std"] = float(g.std())
    out["layers"].append(layer)
  sd = model.state_dict()
  gains = {}
  for name, value in sd.items():
    if "LayerNorm.weight" in name:
      short = name.replace("electra.", "").replace(".LayerNorm.weight", "")
      gains[short] = {"mean_abs": float(value.abs().mean()), "max_abs": float(value.abs().max())}
  out["layernorm_gain"] = gains
  sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
  out["disc_p_replaced_cls"] = float(sig(cls_logit).mean())
  out["disc_logit_cls"] = [float(cls_logit.mean()), float(cls_logit.std())]
  out["disc_p_replaced_tokens"] = float(sig(tok_logit).mean())
  out["disc_logit_tokens"] = [float(tok_logit.mean()), float(tok_logit.std())]
  return out


def linear_probe(folder: str, train, dev) -> dict:
  """Logistic regression on frozen last-layer features: [CLS] (what the fine-tuning head reads) and the mean over real
  tokens. Dev accuracy: does the representation hold the label, and where?"""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  result = {}
  feats = {}
  for name, (sentences, _) in (("train", train), ("dev", dev)):
    f = _features(folder, sentences)
    feats[name] = {"cls": f["cls"][-1], "mean": f["mean"]}
  for kind in ("cls", "mean"):
    scaler = StandardScaler().fit(feats["train"][kind])
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(feats["train"][kind]), train[1])
    result[kind] = float(clf.score(scaler.transform(feats["dev"][kind]), dev[1]))
  return result


def cmd_stats(args) -> None:
  dev = _sst2("dev")
  train = _sst2("train", args.probe_train)
  names = sorted(os.listdir(args.hf), key=lambda n: -1 if n == "init" else int(n))
  results = {}
  if os.path.isfile(args.out):
    with open(args.out, encoding="utf-8") as f:
      results = json.load(f)
  for name in names:
    if name in results:
      continue
    folder = os.path.join(args.hf, name)
    r = representation_stats(folder, dev[0])
    r["probe_dev_accuracy"] = linear_probe(folder, train, dev)
    results[name] = r
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
    last = r["layers"][-1]
    print(f"{name}: last layer token norm {last['token_norm']:.2f}, [CLS] spread {last['cls_spread']:.3f}, "
          f"[CLS] cos {last['cls_mean_cosine']:.3f}, [CLS] eff. rank {last['cls_effective_rank']:.1f}, token eff. "
          f"rank {last['token_effective_rank']:.1f}, probe {r['probe_dev_accuracy']}", flush=True)


def cmd_cls_directions(args) -> None:
  """What the [CLS] state's main directions of variation across SST-2 dev sentences follow: the share of variance in
  the top 3 principal components of the last layer's [CLS], and each one's correlation with the sentence's length in
  WordPieces and with its label."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  sentences, labels = _sst2("dev")
  out = {}
  for name in args.names.split(","):
    folder = os.path.join(args.hf, name)
    tok = transformers.BertTokenizerFast(os.path.join(folder, "vocab.txt"), do_lower_case=True)
    lengths = np.array([min(len(tok(s)["input_ids"]), 64) for s in sentences], np.float64)
    c = _features(folder, sentences)["cls"][-1].astype(np.float64)
    c = c - c.mean(0)
    u, sv, _ = np.linalg.svd(c, full_matrices=False)
    share = sv ** 2 / (sv ** 2).sum()
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    out[name] = [{"variance_share": float(share[k]), "corr_length": corr(u[:, k], lengths),
                  "corr_label": corr(u[:, k], np.array(labels, np.float64))} for k in range(3)]
    print(name, " ".join(f"PC{k + 1}: {d['variance_share']:.2f} of variance, r(length) {d['corr_length']:+.2f}, "
                         f"r(label) {d['corr_label']:+.2f};" for k, d in enumerate(out[name])), flush=True)
  paths.write_json_atomically(args.out, out)


# ------------------------------------------------------------------------------------------------ fine-tuning
def cmd_finetune(args) -> None:
  """SST-2 as the harness fine-tunes it (configs/glue.py size=tiny via run_configs.finetune_config: 200 steps of 32 x
  64, layer-wise decay 0.8, the original head), one seed, at each --lrs, from each --inits ("scratch" or a
  checkpoint step of --run). Records the dev accuracy and the logged train losses (OUT/finetune.json)."""
  import jax  # pylint: disable=import-outside-toplevel
  from electra_jax.train import finetune_lib, metrics  # pylint: disable=import-outside-toplevel
  hc = harness_config()
  hc.finetune.seeds = 1
  hc.log_every_steps = 20
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.out, "jax_cache"))
  arch = run_configs.pretrain_config(hc, suites.VARIANTS["electra"], args.out)
  results = {}
  path = os.path.join(args.out, "finetune.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      results = json.load(f)
  for lr in (float(x) for x in args.lrs.split(",")):   # every init at one lr before the next lr
    for init in args.inits.split(","):
      key = f"{init}@{lr:g}"
      if key in results:
        continue
      ckpt = "" if init == "scratch" else os.path.join(args.run, "checkpoints", init)
      config = run_configs.finetune_config(hc, "sst2", ckpt, architecture=arch if not ckpt else None)
      config.learning_rate = lr
      workdir = os.path.join(args.out, "sst2", key)
      out = finetune_lib.train_and_evaluate(config, workdir)
      trial = out["trials"][0]
      losses = [r["loss"] for r in metrics.read_metrics(trial["workdir"]) if "loss" in r]
      results[key] = {"init": init, "lr": lr, "dev_accuracy": trial["metrics"]["dev"]["accuracy"],
                      "train_loss": losses}
      paths.write_json_atomically(path, results)
      print(f"{key}: dev accuracy {results[key]['dev_accuracy']:.4f}, train loss {losses[0]:.3f} -> {losses[-1]:.3f}",
            flush=True)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  a = sub.add_parser("pretrain")
  a.add_argument("--variant", default="electra")
  a.add_argument("--steps", type=int, default=1200, help="the harness's ELECTRA budget (other variants: its FLOPs)")
  a.add_argument("--every", type=int, default=150)
  a.add_argument("--out", required=True)
  a.add_argument("--data_workdir", default="", help="where the pretraining shards are built/cached (default OUT)")
  a = sub.add_parser("export")
  a.add_argument("--run", required=True, help="a pretraining workdir (from `pretrain`)")
  a.add_argument("--out", required=True)
  a.add_argument("--seed", type=int, default=0, help="of the random initialisation exported as OUT/init")
  a = sub.add_parser("stats")
  a.add_argument("--hf", required=True, help="the folders `export` wrote")
  a.add_argument("--probe_train", type=int, default=4000, help="SST-2 train sentences for the linear probe")
  a.add_argument("--out", required=True, help="a JSON file (resumed: folders already in it are skipped)")
  a = sub.add_parser("finetune")
  a.add_argument("--run", required=True, help="the pretraining workdir whose checkpoints are fine-tuned")
  a.add_argument("--inits", default="scratch,600,900", help="'scratch' or checkpoint steps, comma-separated")
  a.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3")
  a.add_argument("--out", required=True)
  a = sub.add_parser("cls_directions")
  a.add_argument("--hf", required=True, help="the folders `export` wrote")
  a.add_argument("--names", default="init,300,600,900")
  a.add_argument("--out", required=True)
  args = p.parse_args()
  {"pretrain": cmd_pretrain, "export": cmd_export, "stats": cmd_stats, "finetune": cmd_finetune,
   "cls_directions": cmd_cls_directions}[args.cmd](args)


if __name__ == "__main__":
  main()
