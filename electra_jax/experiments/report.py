"""The replication report, read back from a harness WORKDIR: results.json, results.md and the PNG plots.

Scores are the paper's metrics x 100 (CoLA: Matthews correlation; STS-B: Spearman; the others: accuracy) on the full
dev sets. Per variant and checkpoint: every task's score per fine-tuning seed; the GLUE-subset average per seed (the
tasks' scores of seed s averaged), and over seeds its mean, sample standard deviation, min and max; and
`average_of_task_medians` (each task's median over seeds, then averaged: the paper's way, with its 10 seeds).
Only complete rows (every task, every seed) get an average.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from electra_jax import paths
from electra_jax.experiments import suites
from electra_jax.experiments.run_configs import finetune_dir

PRETRAIN_METRICS = ("loss", "mlm_accuracy", "sampled_equals_original", "replaced_fraction", "disc_auc",
                    "disc_accuracy", "main_mlm_accuracy", "copy_probability")
TASK_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "rte": "RTE", "qnli": "QNLI",
              "mnli": "MNLI", "qqp": "QQP"}


def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  try:
    with open(path, encoding="utf-8") as f:
      return [json.loads(line) for line in f if line.strip()]
  except FileNotFoundError:
    return []


def _stats(values: Sequence[float]) -> dict[str, Any]:
  v = [float(x) for x in values]
  return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v),
          "max": max(v), "median": statistics.median(v), "n": len(v), "values": v}


def _last_pretrain_metrics(workdir: str) -> dict[str, float]:
  last: dict[str, float] = {}
  for record in _read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    for k in PRETRAIN_METRICS:
      if k in record and record[k] is not None:
        last[k] = record[k]
  return last


def collect(workdir: str, hc: Any, variants: Mapping[str, Any]) -> dict[str, Any]:
  """Per variant: pretraining steps/FLOPs/time/metrics and the fine-tuning scores of each scored checkpoint."""
  seeds = int(hc.finetune.seeds)
  out: dict[str, Any] = {}
  for key, pv in variants.items():
    done = _read_json(os.path.join(pv.workdir, "done.json"))
    entry: dict[str, Any] = {
        "label": pv.variant.label, "overrides": dict(pv.variant.overrides),
        "objective": pv.config.objective if pv.variant.pretrain else None,
        "pretrain": {"steps": pv.steps, "flops_per_step": pv.flops_per_step, "flops": pv.flops_per_step * pv.steps,
                     "finished": done is not None, "seconds": None if done is None else done["seconds"],
                     "metrics_at_end": _last_pretrain_metrics(pv.workdir)},
        "checkpoints": []}
    for step in pv.eval_steps:
      point: dict[str, Any] = {"step": step, "flops": pv.flops_per_step * step,
                               "fraction": step / pv.steps if pv.steps else 1.0,
                               "tasks": {}}
      for task in hc.finetune.tasks:
        res = _read_json(os.path.join(finetune_dir(pv, step, task), "results.json"))
        if not res:
          continue
        metric = res["main_metric"]
        scores = [100.0 * t["metrics"]["dev"][metric] for t in res["trials"] if "metrics" in t]
        point["tasks"][task] = {"metric": metric, "seeds": [t["seed"] for t in res["trials"] if "metrics" in t],
                                "scores": scores, **({k: v for k, v in _stats(scores).items() if k != "values"}
                                                     if scores else {}),
                                "seconds": res.get("seconds")}
      complete = (len(point["tasks"]) == len(hc.finetune.tasks) and
                  all(len(t["scores"]) == seeds for t in point["tasks"].values()))
      if complete:
        per_seed = [statistics.fmean(point["tasks"][t]["scores"][s] for t in hc.finetune.tasks) for s in range(seeds)]
        point["average"] = _stats(per_seed)
        point["average_of_task_medians"] = statistics.fmean(point["tasks"][t]["median"] for t in hc.finetune.tasks)
      entry["checkpoints"].append(point)
    out[key] = entry
  return out


def write(workdir: str, suite_list: Sequence[str], hc: Any, variants: Mapping[str, Any], budget: Mapping[str, Any],
          command: str = "") -> dict[str, Any]:
  """Writes WORKDIR/results.json, results.md and the plots; returns the results."""
  stages = _read_jsonl(os.path.join(workdir, "stages.jsonl"))
  results = {
      "command": command, "size": hc.size, "suites": {}, "budget": dict(budget),
      "finetune": {"tasks": list(hc.finetune.tasks), "seeds": int(hc.finetune.seeds),
                   "num_train_steps": int(hc.finetune.num_train_steps),
                   "max_seq_length": int(hc.finetune.max_seq_length),
                   "batch_size": int(hc.finetune.batch_size)},
      "pretrain_seed": int(hc.pretrain.seed), "corpus": hc.corpus,
      "seconds": {"total": sum(s["seconds"] for s in stages),
                  "pretrain": sum(s["seconds"] for s in stages if s["kind"] == "pretrain"),
                  "finetune": sum(s["seconds"] for s in stages if s["kind"] == "finetune"),
                  "stages": {s["stage"]: s["seconds"] for s in stages}},
      "variants": collect(workdir, hc, variants),
      "harness_config": json.loads(hc.to_json_best_effort()),
  }
  for name in suite_list:
    s = suites.SUITES[name]
    results["suites"][name] = {"title": s.title, "source": s.source, "finding": s.finding,
                               "variants": list(s.variants), "paper": dict(s.paper),
                               "labels": {k: suites.label(s, k) for k in s.variants}}
  paths.write_json_atomically(os.path.join(workdir, "results.json"), results,
                              default=lambda x: None if isinstance(x, float) else str(x))
  plots = write_plots(workdir, results)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(markdown(results, plots))
  return results


# ------------------------------------------------------------------------------------------------ markdown
def _fmt(x: float | None, digits: int = 1) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _avg_cell(point: Mapping[str, Any]) -> str:
  a = point.get("average")
  return "–" if not a else f"{a['mean']:.1f} ± {a['std']:.1f}"


def markdown(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
  tasks = results["finetune"]["tasks"]
  ft = results["finetune"]
  lines = [f"# Replication results (size {results['size']})", ""]
  if results.get("command"):
    lines += [f"Command: `{results['command']}`", ""]
  b = results["budget"]
  lines += [f"Budget: {b['flops']:.3g} pretraining FLOPs per variant ({b['match']}-matched; ELECTRA trains "
            f"{b['electra_steps']} steps). Fine-tuning: {', '.join(TASK_NAMES.get(t, t) for t in tasks)} x "
            f"{ft['seeds']} seeds, {ft['num_train_steps'] if ft['num_train_steps'] > 0 else 'paper epochs'} steps "
            f"of {ft['batch_size']} x {ft['max_seq_length']}; pretraining seed {results['pretrain_seed']}. "
            f"Time: {results['seconds']['total'] / 60:.1f} min ({results['seconds']['pretrain'] / 60:.1f} pretraining, "
            f"{results['seconds']['finetune'] / 60:.1f} fine-tuning).", "",
            "Scores x 100 on the full dev sets (CoLA MCC, STS-B Spearman, others accuracy): per task the mean over "
            "seeds; Avg = the GLUE-subset average per seed, mean ± sample std over seeds; Med = the average of the "
            "per-task medians.", ""]
  header = ("| Variant | Steps | Pretrain FLOPs | " + " | ".join(TASK_NAMES.get(t, t) for t in tasks) +
            " | Avg (± std) | Med | Paper |")
  rule = "|" + "---|" * (header.count("|") - 1)
  for name, s in results["suites"].items():
    lines += [f"## {name}: {s['title']}", "", f"Paper ({s['source']}): {s['finding']}.", "", header, rule]
    for key in s["variants"]:
      v = results["variants"].get(key)
      if v is None:
        continue
      for point in v["checkpoints"]:
        label = s["labels"].get(key, v["label"])
        if len(v["checkpoints"]) > 1:
          label += f" @{100 * point['fraction']:.0f}%"
        cells = [_fmt(point["tasks"][t]["mean"]) if t in point["tasks"] and "mean" in point["tasks"][t] else "–"
                 for t in tasks]
        paper = s["paper"].get(key) if point["fraction"] == 1.0 else None
        lines.append(f"| {label} | {point['step']} | {point['flops']:.3g} | " + " | ".join(cells) +
                     f" | {_avg_cell(point)} | {_fmt(point.get('average_of_task_medians'))} | {_fmt(paper)} |")
    lines.append("")
  lines += ["## Pretraining metrics at the end of each run", "",
            "| Variant | Objective | Steps | Minutes | " + " | ".join(PRETRAIN_METRICS) + " |",
            "|" + "---|" * (4 + len(PRETRAIN_METRICS))]
  for key, v in results["variants"].items():
    if v["objective"] is None:
      continue
    m = v["pretrain"]["metrics_at_end"]
    secs = v["pretrain"]["seconds"]
    lines.append(f"| {v['label']} | {v['objective']} | {v['pretrain']['steps']} | "
                 f"{_fmt(None if secs is None else secs / 60)} | " +
                 " | ".join(_fmt(m.get(k), 3) for k in PRETRAIN_METRICS) + " |")
  lines.append("")
  if plots:
    lines += ["## Plots", ""] + [f"![{os.path.splitext(p)[0]}]({p})" for p in plots] + [""]
  else:
    lines += ["(no plots: matplotlib is not installed; `pip install matplotlib`)", ""]
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ plots
def write_plots(workdir: str, results: Mapping[str, Any]) -> list[str]:
  """<suite>_glue_vs_flops.png per suite, generator_size.png; file names (relative to workdir)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    logging.warning("matplotlib is not installed: no plots (pip install matplotlib)")
    return []
  written = []
  for name, s in results["suites"].items():
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drew = False
    for key in s["variants"]:
      v = results["variants"].get(key)
      points = [p for p in (v or {}).get("checkpoints", []) if p.get("average")]
      if not points:
        continue
      if v["objective"] is None:   # the no-pretraining control: a line, not a point at 0 FLOPs
        a = points[0]["average"]
        ax.axhline(a["mean"], color="gray", linestyle="--", label=f"{s['labels'].get(key, v['label'])}")
        ax.axhspan(a["mean"] - a["std"], a["mean"] + a["std"], color="gray", alpha=0.12)
        continue
      xs = [p["flops"] for p in points]
      ys = [p["average"]["mean"] for p in points]
      es = [p["average"]["std"] for p in points]
      ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=s["labels"].get(key, v["label"]))
      drew = True
    if not drew:
      plt.close(fig)
      continue
    ax.set_xlabel("pretraining FLOPs (train_flops_per_step x steps)")
    ax.set_ylabel("GLUE-subset dev average (mean ± std over seeds)")
    ax.set_title(f"{name} ({results['size']})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = f"{name}_glue_vs_flops.png"
    fig.savefig(os.path.join(workdir, path), dpi=110)
    plt.close(fig)
    written.append(path)
  s = results["suites"].get("generator_size")
  if s is not None:
    gs = suites.SUITES["generator_size"]
    xs, ys, es, labels = [], [], [], []
    for key in s["variants"]:
      v = results["variants"].get(key)
      points = [p for p in (v or {}).get("checkpoints", []) if p.get("average") and p["fraction"] == 1.0]
      if points:
        xs.append(gs.x_axis[key])
        ys.append(points[-1]["average"]["mean"])
        es.append(points[-1]["average"]["std"])
        labels.append(s["labels"].get(key, key))
    if xs:
      fig, ax = plt.subplots(figsize=(6.4, 4.2))
      ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
      for x, y, text in zip(xs, ys, labels):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7)
      ax.set_xlabel("generator hidden size / discriminator's (0 = uniform generator)")
      ax.set_ylabel("GLUE-subset dev average (mean ± std over seeds)")
      ax.set_title(f"generator size ({results['size']}, equal pretraining FLOPs)")
      ax.grid(alpha=0.3)
      fig.tight_layout()
      fig.savefig(os.path.join(workdir, "generator_size.png"), dpi=110)
      plt.close(fig)
      written.append("generator_size.png")
  return written
