r"""Does the micro ELECTRA discriminator's collapse depend on the learning rate? One short pretraining run per lr.

    python benchmarks/replication/diagnostics/lr_sweep.py --harness_dir=DIR --lr=1e-3 --steps=500 --out=/tmp/lr1e-3
    python benchmarks/replication/diagnostics/lr_sweep.py --harness_dir=DIR --lr=3e-4 --steps=500 --out=/tmp/lr3e-4
    python benchmarks/replication/diagnostics/lr_sweep.py --harness_dir=DIR --lr=3e-4 --steps=500 --out=/tmp/uniform \
        --set=generator.sampling=uniform

DIR is a replication workdir (its harness_config.json and data/ cache are reused, so the runs see the suite's exact
pretraining config, corpus and seed); only the peak learning rate and the number of steps (warm-up stays 10% of them)
change (and any --set field). Prints the discriminator's RTD loss and AUC every 50 steps.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))

import ml_collections  # noqa: E402  pylint: disable=wrong-import-position

from electra_jax.experiments import run_configs, suites  # noqa: E402  pylint: disable=wrong-import-position
from electra_jax.train import pretrain_lib  # noqa: E402  pylint: disable=wrong-import-position


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--harness_dir", required=True, help="a replication workdir (with harness_config.json)")
  p.add_argument("--lr", type=float, required=True)
  p.add_argument("--steps", type=int, default=500)
  p.add_argument("--out", required=True, help="the pretraining workdir of this run")
  p.add_argument("--set", action="append", default=[], help="FIELD=VALUE of the pretraining config, e.g. "
                 "generator.sampling=uniform (repeatable)")
  args = p.parse_args()
  with open(os.path.join(args.harness_dir, "harness_config.json"), encoding="utf-8") as f:
    hc = ml_collections.ConfigDict(json.load(f))
  hc.log_every_steps = 50
  hc.pretrain.overrides.learning_rate = args.lr
  config = run_configs.pretrain_config(hc, suites.VARIANTS["electra"], args.harness_dir)
  for text in args.set:
    key, value = text.split("=", 1)
    run_configs.set_field(config, key, type(run_configs.flatten(config.to_dict())[key])(value))
  config.num_train_steps = args.steps
  config.checkpoint_every_steps = args.steps
  pretrain_lib.train_and_evaluate(config, args.out)
  with open(os.path.join(args.out, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      print(f"lr {args.lr:g} step {r['step']}: rtd loss {r['rtd_loss']:.4f}, disc AUC {r['disc_auc']:.3f}, "
            f"generator accuracy {r.get('mlm_accuracy', float('nan')):.3f}, replaced {r['replaced_fraction']:.3f}")


if __name__ == "__main__":
  main()
