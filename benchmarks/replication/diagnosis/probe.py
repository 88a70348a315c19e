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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  a = sub.add_parser("pretrain")
  a.add_argument("--variant", default="electra")
  a.add_argument("--steps", type=int, default=1200, help="the harness's ELECTRA budget (other variants: its FLOPs)")
  a.add_argument("--every", type=int, default=150)
  a.add_argument("--out", required=True)
  a.add_argument("--data_workdir", default="", help="where the pretraining shards are built/cached (default OUT)")
  args = p.parse_args()
  {"pretrain": cmd_pretrain}[args.cmd](args)


if __name__ == "__main__":
  main()
