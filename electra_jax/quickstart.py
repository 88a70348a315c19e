r"""The whole pipeline on one CPU in minutes: pretrain a tiny ELECTRA, fine-tune it on a GLUE task, evaluate, export.

    bash scripts/quickstart.sh                       # installs from the pins, then runs this module
    python -m electra_jax.quickstart --workdir=runs/quickstart [--task=mrpc] [--pretrain_steps=300]

Each stage runs the project's real command (printed before it runs), so what you see here is what you would type:
  1. python -m electra_jax.train.pretrain   (replaced-token detection on the raw WikiText-2 corpus)
  2. python -m electra_jax.train.finetune   (GLUE task, initialised from the pretrained discriminator)
  3. python -m electra_jax.eval.evaluate    (dev scores of the fine-tuned checkpoint, prediction files)
  4. python -m electra_jax.convert orbax_to_hf  (a Hugging Face folder with tokenizer files)
  5. python -m electra_jax.eval.predict     (two example predictions from that folder)
Data comes from $ELECTRA_DATA_DIR (default ../shared/data): vocab/, corpus/ and glue_data/.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

from electra_jax import paths

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/quickstart", "Where every stage writes.")
flags.DEFINE_string("task", "mrpc", "GLUE task to fine-tune on.")
flags.DEFINE_integer("pretrain_steps", 300, "Pretraining steps of the tiny model.")
flags.DEFINE_integer("finetune_steps", 150, "Fine-tuning steps.")
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
    print("quickstart: the benchmark data is missing: " + ", ".join(missing) + "\n"
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


def main(argv):
  del argv
  vocab, corpus, _ = _check_data()
  work = os.path.abspath(FLAGS.workdir)
  pre, fin, ev, export = (os.path.join(work, d) for d in ("pretrain", FLAGS.task, f"{FLAGS.task}_eval",
                                                          f"export/{FLAGS.task}"))
  task_cfg = f"configs/glue.py:task={FLAGS.task},size=tiny,head=hf"
  os.chdir(paths.REPO_ROOT)   # configs/ paths are relative to the repository
  t0 = time.time()

  _run("1/5 pretrain a tiny ELECTRA", [
      "electra_jax.train.pretrain", "--config=configs/pretrain.py:size=tiny", f"--workdir={pre}",
      f"--config.num_train_steps={FLAGS.pretrain_steps}", f"--config.data.corpus={corpus}",
      f"--config.data.vocab_file={vocab}", f"--config.log_every_steps={max(1, FLAGS.pretrain_steps // 6)}",
      f"--config.checkpoint_every_steps={FLAGS.pretrain_steps}", "--alsologtostderr"])
  _run(f"2/5 fine-tune on {FLAGS.task.upper()}", [
      "electra_jax.train.finetune", f"--config={task_cfg}", f"--workdir={fin}",
      f"--config.init_checkpoint={pre}", f"--config.vocab_file={vocab}",
      f"--config.num_train_steps={FLAGS.finetune_steps}", f"--config.max_train_examples={FLAGS.max_train_examples}",
      f"--config.max_eval_examples={FLAGS.max_eval_examples}",
      f"--config.log_every_steps={max(1, FLAGS.finetune_steps // 5)}", "--config.checkpoint_every_steps=0"])
  _run("3/5 evaluate the fine-tuned checkpoint on dev", [
      "electra_jax.eval.evaluate", f"--config={task_cfg}", f"--checkpoint={os.path.join(fin, 'seed_0')}",
      f"--workdir={ev}", f"--config.vocab_file={vocab}", f"--config.max_eval_examples={FLAGS.max_eval_examples}"])
  _run("4/5 export to a Hugging Face folder", [
      "electra_jax.convert", "orbax_to_hf", f"--checkpoint={os.path.join(fin, 'seed_0')}", f"--out={export}",
      f"--vocab_file={vocab}"])
  example = EXAMPLES.get(FLAGS.task, "ELECTRA learns from replaced tokens.")
  preds = _run("5/5 predict from the exported folder", [
      "electra_jax.eval.predict", f"--model={export}", "--task=text-classification"], stdin=example + "\n")

  pm = _last_metrics(os.path.join(pre, "metrics.jsonl"))
  with open(os.path.join(ev, "results.json"), encoding="utf-8") as f:
    results = json.load(f)
  dev = {k: v["median"] for k, v in results["summary"].items() if isinstance(v, dict) and "median" in v}
  print("\n" + "=" * 78)
  print(f"quickstart finished in {time.time() - t0:.0f}s")
  print(f"  pretraining   step {pm.get('step')}: loss {pm.get('loss', float('nan')):.3f}, discriminator accuracy "
        f"{pm.get('disc_accuracy', float('nan')):.3f}, AUC {pm.get('disc_auc', float('nan')):.3f}   -> {pre}")
  for key in sorted(dev):
    print(f"  {key:30s} {dev[key]:.4f}")
  print(f"  dev predictions and scores     -> {ev}")
  print(f"  Hugging Face folder            -> {export}")
  print(f"  example: {example!r} -> {preds.strip()}")
  print(f"  try: transformers.pipeline('text-classification', model='{export}')")


if __name__ == "__main__":
  app.run(main)
