r"""The whole pipeline on one CPU in minutes: pretrain a tiny ELECTRA, fine-tune it on SST-2, evaluate, export, predict.

    bash scripts/quickstart.sh                       # installs from the pins, then runs this module
    python -m electra_jax.quickstart --workdir=runs/quickstart [--task=sst2] [--pretrain_steps=300]

Each stage runs the project's real command (printed before it runs), so what you see here is what you would type:
  1. python -m electra_jax.train.pretrain   (replaced-token detection on the raw WikiText-2 corpus)
  2. python -m electra_jax.train.finetune   (a GLUE task, initialised from the pretrained discriminator)
  3. python -m electra_jax.eval.evaluate    (dev scores of the fine-tuned checkpoint, prediction files)
  4. python -m electra_jax.convert orbax_to_hf  (a Hugging Face folder with tokenizer files and the task's label names)
  5. python -m electra_jax.eval.predict     (an example prediction from that folder)
At the end it prints the dev score beside the majority-class baseline (always predicting the most frequent training
label), so a model that learned nothing is plain to see, and writes WORKDIR/summary.json with task, metric, dev_score
and baseline. The defaults (SST-2, 300 + 300 steps) learn visibly: the dev accuracy ends well above the baseline (MRPC's small
training set does not get there at this size); a few minutes on a CPU.
Data comes from $ELECTRA_DATA_DIR (default ../shared/data): vocab/, corpus/ and glue_data/.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

from absl import flags

from electra_jax import paths
from electra_jax.runtime import cli
from electra_jax.train import metrics as metrics_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "Where every stage writes.")
flags.DEFINE_string("task", "sst2", "GLUE classification task to fine-tune on (sst2, mrpc, rte, cola, qnli, wnli).")
flags.DEFINE_integer("pretrain_steps", 300, "Pretraining steps of the tiny model.")
flags.DEFINE_integer("finetune_steps", 300, "Fine-tuning steps (batch 32, sequences of 64 tokens).")
flags.DEFINE_integer("max_train_examples", -1, "Fine-tune on the first N training examples only (-1: all).")
flags.DEFINE_integer("max_eval_examples", -1, "Score the first N dev examples only (-1: all).")

EXAMPLES = {
    "mrpc": "The company said profits rose sharply.\tProfits at the company increased strongly, it said.",
    "rte": "A man is playing a guitar on stage.\tA person is performing music.",
    "sst2": "a gripping , funny and moving film",
    "cola": "The book was written by the author.",
    "stsb": "A man is playing a guitar.\tA man plays the guitar.",
    "qnli": "Where is the Eiffel Tower?\tThe Eiffel Tower stands in Paris.",
    "wnli": "The trophy did not fit in the suitcase because it was too big.\tThe trophy was too big.",
}
# What `transformers.pipeline` needs, as this checkout pins it (the CPU build of torch: PyPI's default is CUDA's).
HF_INSTALL = ("python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && "
              "python -m pip install -c third_party/constraints.txt transformers")


def _run(stage: str, args: list[str], stdin: str | None = None) -> str:
  cmd = [sys.executable, "-m", *args]
  print(f"\n=== {stage}\n$ {' '.join(shlex.quote(a) for a in ['python', '-m', *args])}", flush=True)
  start = time.time()
  proc = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=None, text=True)
  sys.stdout.write(proc.stdout)
  if proc.returncode != 0:
    print(f"quickstart: stage '{stage}' failed with exit status {proc.returncode}", file=sys.stderr)
    sys.exit(proc.returncode)
  print(f"--- {stage}: done in {time.time() - start:.0f}s", flush=True)
  return proc.stdout


def _check_data() -> tuple[str, str, str]:
  vocab, corpus, glue = paths.default_vocab(), paths.default_corpus(), paths.data_dir() / "glue_data"
  missing = [str(p) for p in (vocab, corpus, glue) if not p.exists()]
  if missing:
    print("quickstart: error: the benchmark data is missing: " + ", ".join(missing) + ". "
          f"Set {paths.ENV_VAR} to a folder with vocab/bert-base-uncased-vocab.txt (a BERT uncased vocab), "
          "corpus/wikitext-2-raw/ (raw text) and glue_data/<TASK>/{train,dev}.tsv (the GLUE download).",
          file=sys.stderr)
    sys.exit(1)
  return str(vocab), str(corpus), str(glue)


def _last_metrics(path: str) -> dict:
  last = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        last = json.loads(line)
  return last


def majority_baseline(task: str, glue_dir: str, max_train: int, max_eval: int) -> tuple[str, float | None, str]:
  """(metric, its value when always predicting the most frequent training label, that label's name) on the dev
  examples the run scores; (metric, None, "") for a regression task."""
  from electra_jax.data import glue  # pylint: disable=import-outside-toplevel
  from electra_jax.eval import glue as glue_eval  # pylint: disable=import-outside-toplevel
  t = glue.get_task(task)
  if t.is_regression:
    return t.main_metric, None, ""
  train = glue.read_split(task, glue_dir, "train")
  dev = glue.read_split(task, glue_dir, "dev")
  train = train[:max_train] if max_train > 0 else train
  dev = dev[:max_eval] if max_eval > 0 else dev
  label = collections.Counter(ex.label for ex in train).most_common(1)[0][0]
  scores = glue_eval.score(task, dev, {ex.idx: label for ex in dev})
  return t.main_metric, float(scores[t.main_metric]), t.label_names[label]


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
  vocab, corpus, glue_dir = _check_data()
  task = FLAGS.task.lower().replace("-", "")
  work = os.path.abspath(FLAGS.workdir)
  pre, fin, ev, export = (os.path.join(work, d) for d in ("pretrain", task, f"{task}_eval", f"export/{task}"))
  task_cfg = f"configs/glue.py:task={task},size=tiny,head=hf"
  short = ["--config.max_seq_length=64", "--config.batch_size=32", "--config.eval_batch_size=64"]
  os.chdir(paths.REPO_ROOT)   # configs/ paths are relative to the repository
  t0 = time.time()

  _run("1/5 pretrain a tiny ELECTRA", [
      "electra_jax.train.pretrain", "--config=configs/pretrain.py:size=tiny", f"--workdir={pre}",
      f"--config.num_train_steps={FLAGS.pretrain_steps}", f"--config.data.corpus={corpus}",
      f"--config.data.vocab_file={vocab}", f"--config.log_every_steps={max(1, FLAGS.pretrain_steps // 6)}",
      f"--config.checkpoint_every_steps={FLAGS.pretrain_steps}"])
  _run(f"2/5 fine-tune on {task.upper()}", [
      "electra_jax.train.finetune", f"--config={task_cfg}", f"--workdir={fin}",
      f"--config.init_checkpoint={pre}", f"--config.vocab_file={vocab}", *short,
      f"--config.num_train_steps={FLAGS.finetune_steps}", f"--config.max_train_examples={FLAGS.max_train_examples}",
      f"--config.max_eval_examples={FLAGS.max_eval_examples}",
      f"--config.log_every_steps={max(1, FLAGS.finetune_steps // 5)}", "--config.checkpoint_every_steps=0"])
  _run("3/5 evaluate the fine-tuned checkpoint on dev", [
      "electra_jax.eval.evaluate", f"--config={task_cfg}", f"--checkpoint={os.path.join(fin, 'seed_0')}",
      f"--workdir={ev}", *short, f"--config.max_eval_examples={FLAGS.max_eval_examples}"])
  _run("4/5 export to a Hugging Face folder (tokenizer and label names included)", [
      "electra_jax.convert", "orbax_to_hf", f"--checkpoint={os.path.join(fin, 'seed_0')}", f"--out={export}",
      "--overwrite"])   # its own folder: a rerun replaces it
  example = EXAMPLES.get(task, "ELECTRA learns from replaced tokens.")
  preds = _run("5/5 predict from the exported folder", [
      "electra_jax.eval.predict", f"--model={export}", "--task=text-classification"], stdin=example + "\n")

  pm = _last_metrics(os.path.join(pre, "metrics.jsonl"))
  with open(os.path.join(ev, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  dev = {k: v["median"] for k, v in results["summary"].items() if isinstance(v, dict) and "median" in v}
  metric, baseline, majority = majority_baseline(task, glue_dir, FLAGS.max_train_examples, FLAGS.max_eval_examples)
  key = next(k for k in sorted(dev) if k.endswith(f"/{metric}"))
  score = dev[key]
  summary = {"task": task, "metric": key, "dev_score": score, "baseline": baseline,
             "baseline_is": f"always '{majority}' (the most frequent training label)" if majority else None,
             "above_baseline": None if baseline is None else score > baseline, "export": export}
  with open(os.path.join(work, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")

  print("\n" + "=" * 78)
  print(f"quickstart finished in {time.time() - t0:.0f}s")
  disc_line, disc_warning = metrics_lib.discriminator_summary(pm)
  print(f"  pretraining   step {pm.get('step')}: loss {pm.get('loss', float('nan')):.3f}, {disc_line}   -> {pre}")
  if disc_warning:
    print(f"  warning: {disc_warning}")
  if baseline is None:
    print(f"  {key:30s} {score:.4f}")
  else:
    verdict = ("above the baseline: the model learned" if score > baseline else
               "NOT above the baseline: the model learned nothing; try more --finetune_steps / --pretrain_steps")
    print(f"  {key:30s} {score:.4f}   majority-class baseline {baseline:.4f} (always '{majority}'): {verdict}")
  print(f"  dev predictions and scores     -> {ev}")
  print(f"  Hugging Face folder            -> {export}")
  print(f"  summary                        -> {os.path.join(work, 'summary.json')}")
  print(f"  example: {example!r} -> {preds.strip()}")
  if not all(importlib.util.find_spec(m) for m in ("transformers", "torch")):
    print(f"  to use the folder from transformers, install it first:\n    {HF_INSTALL}")
  sample = example.split("\t")[0].replace("'", "")
  print(f"  try: python -c \"import transformers; print(transformers.pipeline('text-classification', "
        f"model='{export}')('{sample}'))\"")


if __name__ == "__main__":
  cli.run(main)
