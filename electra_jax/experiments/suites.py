"""The replication suites: the pretraining variants each one compares, and what the ELECTRA paper reports for them.

A variant is a set of pretraining-config overrides (dotted field names of configs/pretrain.py); variants with the same
key are one pretraining run, however many suites use them. Paper numbers are GLUE dev averages of the paper's own
(Base-size or Small) runs, given for reference: the micro scale cannot reproduce their magnitude, only (perhaps) their
direction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from electra_jax.experiments import ExperimentError


@dataclasses.dataclass(frozen=True)
class Variant:
  key: str                         # directory and results name
  label: str                       # how the paper names it
  overrides: Mapping[str, Any]     # configs/pretrain.py fields, dotted
  pretrain: bool = True            # False: the control, fine-tuned from a random initialisation (ELECTRA's encoder)


@dataclasses.dataclass(frozen=True)
class Suite:
  name: str
  title: str
  source: str                                  # where in the paper
  variants: tuple[str, ...]                    # variant keys, in table order
  finding: str                                 # the paper's claim the suite tests
  paper: Mapping[str, float] = dataclasses.field(default_factory=dict)   # key -> the paper's GLUE dev score
  labels: Mapping[str, str] = dataclasses.field(default_factory=dict)    # key -> label in this suite's table
  curve: bool = False                          # also score the earlier checkpoints (config.curve_fractions)
  x_axis: Mapping[str, float] = dataclasses.field(default_factory=dict)  # key -> x of the suite's own plot


def _same_size(**extra) -> dict[str, Any]:
  return {"generator.hidden_fraction": 1.0, **extra}


VARIANTS: dict[str, Variant] = {v.key: v for v in (
    Variant("electra", "ELECTRA", {}),
    Variant("no_pretraining", "No pretraining (control)", {}, pretrain=False),
    Variant("mlm", "BERT (MLM)", {"objective": "mlm"}),
    Variant("electra_15", "ELECTRA 15%", {"objective": "electra_15"}),
    Variant("replace_mlm", "Replace MLM", {"objective": "replace_mlm"}),
    Variant("all_tokens_mlm", "All-Tokens MLM", {"objective": "all_tokens_mlm"}),
    Variant("electric", "Electric", {"objective": "electric"}),
    Variant("share_none", "No weight tying", _same_size(**{"generator.weight_sharing": "none"})),
    Variant("share_embeddings", "Tied token embeddings", _same_size()),
    Variant("share_all", "Tied all weights", _same_size(**{"generator.weight_sharing": "all"})),
    Variant("share_gdes", "Gradient-disentangled embedding sharing (DeBERTa-v3)",
            _same_size(**{"generator.weight_sharing": "gdes"})),
    Variant("gen_0.125", "Generator 1/8", {"generator.hidden_fraction": 0.125}),
    Variant("gen_0.5", "Generator 1/2", {"generator.hidden_fraction": 0.5}),
    Variant("gen_0.75", "Generator 3/4", {"generator.hidden_fraction": 0.75}),
    Variant("uniform", "Uniform generator", {"generator.sampling": "uniform"}),
    Variant("no_attention_dropout", "ELECTRA, attention dropout 0", {"model.attention_probs_dropout_prob": 0.0}),
)}

SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("efficiency", "Compute efficiency: where ELECTRA's gain comes from", "Table 5 (Base size, GLUE dev)",
          ("electra", "all_tokens_mlm", "replace_mlm", "electra_15", "mlm", "no_pretraining"),
          "ELECTRA 85.0 > All-Tokens MLM 84.3 > Replace MLM 82.4 = ELECTRA 15% 82.4 > BERT 82.2: learning from all "
          "tokens is most of the gain (ELECTRA vs ELECTRA 15%, -2.6), the [MASK] mismatch a small part (Replace MLM "
          "vs BERT, +0.2)",
          paper={"electra": 85.0, "all_tokens_mlm": 84.3, "replace_mlm": 82.4, "electra_15": 82.4, "mlm": 82.2}),
    Suite("sharing", "Weight sharing between generator and discriminator (same-size generator)",
          "Section 3.2 (Base size, 500k steps, GLUE dev)",
          ("share_none", "share_embeddings", "share_all", "share_gdes"),
          "tying all weights 84.4 >= tying token embeddings 84.3 > no tying 83.6; the paper keeps embedding tying "
          "(all-weight tying needs a same-size generator). GDES (DeBERTa-v3, not in the ELECTRA paper) shares the "
          "same embeddings with the discriminator's gradient kept out of the generator's: DeBERTa-v3 reports it "
          "above plain embedding sharing",
          paper={"share_none": 83.6, "share_embeddings": 84.3, "share_all": 84.4}),
    Suite("generator_size", "Generator size (discriminator fixed)", "Section 3.2, Figure 3 left",
          ("uniform", "gen_0.125", "electra", "gen_0.5", "gen_0.75", "share_embeddings"),
          "generators 1/4 to 1/2 the discriminator's size work best; a same-size generator is worse",
          labels={"electra": "Generator 1/4 (ELECTRA)", "share_embeddings": "Generator 1/1"},
          x_axis={"uniform": 0.0, "gen_0.125": 0.125, "electra": 0.25, "gen_0.5": 0.5, "gen_0.75": 0.75,
                  "share_embeddings": 1.0}),
    Suite("mlm_vs_electra", "ELECTRA against BERT at equal compute, over training", "Table 1, Figure 4",
          ("electra", "mlm"),
          "ELECTRA beats BERT at the same compute, and at every point of training (Small: 79.9 vs 75.1; 25% of "
          "ELECTRA-Small's training already 77.7)",
          paper={"electra": 79.9, "mlm": 75.1}, curve=True),
    Suite("attention_dropout", "Cost of removing attention-probability dropout (fused attention kernels)",
          "not in the paper (this project's question)",
          ("electra", "no_attention_dropout"),
          "no paper claim; fused attention kernels need attention_probs_dropout_prob=0 in pretraining and "
          "fine-tuning"),
)}


def suite_names(arg: str) -> list[str]:
  """'efficiency' / 'efficiency,sharing' / 'all' -> suite names, validated."""
  names = list(SUITES) if arg == "all" else [s.strip() for s in arg.split(",") if s.strip()]
  unknown = [n for n in names if n not in SUITES]
  if unknown or not names:
    raise ExperimentError(f"--suite={arg!r}: unknown suite(s) {unknown}; known: {sorted(SUITES)} or 'all'")
  return names


def label(suite: Suite, key: str) -> str:
  return suite.labels.get(key, VARIANTS[key].label)
