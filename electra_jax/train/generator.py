"""The generator's recipe switches beyond the paper's joint generator (configs/pretrain.py `generator.*`):

  temperature    the sampling temperature: a number, or a schedule over the steps "KIND:START->END[@STEPS]"
                 (`temperature_schedule`), e.g. Fast-ELECTRA's descending temperature "linear:2->1".
  source         a frozen external generator (Fast-ELECTRA): an HF ElectraForMaskedLM folder, a Hub model id, or a
                 checkpoint of this project (its generator, or an ElectraForMaskedLM head). It samples the
                 replacements in inference mode (no dropout); it has no MLM loss, shares nothing with the
                 discriminator and has no optimizer state (`optimizer` freezes it); its weights are read once at the
                 start (`load_source`) and then travel in the checkpoints like any parameter.
  learning_rate  the generator's own peak learning rate, as DeBERTa-v3's separate generator optimizer: the parameters
                 under generator/ get an AdamW of their own (config.optimizer's settings and schedule shape, their
                 own Adam state and gradient clipping); shared parameters, stored under discriminator/, follow the
                 discriminator's. 0: one optimizer for everything.

    temperature = generator.temperature_schedule(config.generator.temperature, config.num_train_steps)
    source = generator.load_source(config.generator.source, vocab_size=V, vocab_file=..., runtime={...})
    tx, schedule = generator.optimizer(config, abstract_params, frozen_generator=source is not None)
"""

from __future__ import annotations

import dataclasses
import filecmp
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from electra_jax import checkpointing, convert, errors, modeling
from electra_jax.convert import hub
from electra_jax.train import optim

TEMPERATURE_KINDS = ("linear", "exp", "cosine")
_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_SPEC = re.compile(rf"^(\w+):({_NUMBER})->({_NUMBER})(?:@([0-9]+))?$")
SOURCE_OBJECTIVES = ("electra", "electra_15", "replace_mlm", "all_tokens_mlm")


class GeneratorConfigError(errors.Error, ValueError):
  """A config.generator field that cannot be used (the message names it)."""


# ------------------------------------------------------------------------------------------------ temperature
def temperature_schedule(value: Any, num_train_steps: int) -> float | Callable[[Any], Any]:
  """config.generator.temperature -> a positive float, or step -> temperature (float32) for a schedule spec.

  "KIND:START->END" goes from START at step 0 to END at step STEPS (default num_train_steps, or "@STEPS") and stays
  at END after it; with s = min(step / STEPS, 1): linear START + (END - START) s, exp (geometric) START (END /
  START)^s, cosine END + (START - END) (1 + cos(pi s)) / 2.
  """
  field = "config.generator.temperature"
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    number = float(value)
  else:
    text = "".join(str(value).split())
    if re.fullmatch(_NUMBER, text):
      number = float(text)
    else:
      match = _SPEC.match(text)
      if not match or match.group(1) not in TEMPERATURE_KINDS:
        raise GeneratorConfigError(f"{field}={value!r}: give a number or KIND:START->END[@STEPS] with KIND one of "
                                   f"{TEMPERATURE_KINDS}, e.g. 'linear:2->1'")
      kind, start, end = match.group(1), float(match.group(2)), float(match.group(3))
      steps = int(match.group(4)) if match.group(4) else int(num_train_steps)
      if start <= 0 or end <= 0 or steps <= 0:
        raise GeneratorConfigError(f"{field}={value!r}: temperatures and STEPS must be positive")
      return _schedule(kind, start, end, steps)
  if not number > 0:
    raise GeneratorConfigError(f"{field}={value!r}: must be positive")
  return number


def _schedule(kind: str, start: float, end: float, steps: int) -> Callable[[Any], Any]:
  def temperature(step):
    s = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
    if kind == "linear":
      return start + (end - start) * s
    if kind == "exp":
      return start * (end / start) ** s
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(math.pi * s))

  return temperature


# ------------------------------------------------------------------------------------------------ options
def options(config: Any) -> dict[str, Any]:
  """{"source", "learning_rate"} of config.generator, checked against the objective and the other switches."""
  gen = config.generator
  source = str(gen.get("source", "") or "")
  lr = float(gen.get("learning_rate", 0.0) or 0.0)
  if lr < 0:
    raise GeneratorConfigError(f"config.generator.learning_rate={lr}: must be >= 0 (0: config.learning_rate)")
  if source:
    what = f"config.generator.source={source}"
    if config.objective not in SOURCE_OBJECTIVES:
      raise GeneratorConfigError(f"{what} with objective {config.objective!r}: a frozen masked-LM generator serves "
                                 f"the objectives that sample from one: {SOURCE_OBJECTIVES}")
    if str(gen.get("sampling", "model")) != "model":
      raise GeneratorConfigError(f"{what} with generator.sampling={gen.sampling!r}: the source is the sampler; "
                                 f"set generator.sampling=model")
    if str(gen.get("weight_sharing", "embeddings")) not in ("embeddings", "none"):
      raise GeneratorConfigError(f"{what} with generator.weight_sharing={gen.weight_sharing!r}: a frozen generator "
                                 f"shares nothing (leave weight_sharing at 'embeddings' or 'none')")
    if int(config.get("two_stage", 0)) > 0:
      raise GeneratorConfigError(f"{what} with config.two_stage: two-stage training trains the generator")
    if lr > 0:
      raise GeneratorConfigError(f"{what} with generator.learning_rate={lr}: a frozen generator is not trained")
  if lr > 0 and int(config.get("two_stage", 0)) > 0:
    raise GeneratorConfigError("config.generator.learning_rate with config.two_stage: two-stage training has its "
                               "own schedules; leave generator.learning_rate at 0")
  return {"source": source, "learning_rate": lr}


# ------------------------------------------------------------------------------------------------ a frozen generator
@dataclasses.dataclass
class Source:
  path: str                        # the local folder or checkpoint it was read from
  config: modeling.ElectraConfig   # its ElectraForMaskedLM config, with the run's runtime fields
  params: dict[str, Any]           # its parameters (host arrays, a pure dict of ElectraForMaskedLM)


def load_source(name: str, *, vocab_size: int, vocab_file: str | None = None,
                runtime: Mapping[str, Any] | None = None) -> Source:
  """The frozen generator `name` names (folder, Hub id, or checkpoint of this project), checked against the run's
  vocabulary (its size, and its vocab.txt where it has one)."""
  runtime = dict(runtime or {})
  where = f"config.generator.source={name}"
  path = hub.resolve(name)
  if not os.path.exists(path):
    raise GeneratorConfigError(f"{where}: no such folder, and not a Hub model id")
  if convert.is_hf_folder(path):
    model = convert.from_hf(path, "ElectraForMaskedLM", **runtime)
    vocab = os.path.join(path, "vocab.txt")
  else:
    model = checkpointing.load_model(path, **runtime)
    if isinstance(model, modeling.ElectraPretrainingModel):
      model = model.hf_parts().get("generator")
    if not isinstance(model, modeling.ElectraForMaskedLM):
      raise GeneratorConfigError(f"{where}: the checkpoint holds no ElectraForMaskedLM generator")
    vocab = (checkpointing.read_model_config(path).get("tokenizer") or {}).get("vocab_file") or ""
  if model.config.vocab_size != vocab_size:
    raise GeneratorConfigError(f"{where}: its vocabulary has {model.config.vocab_size} tokens, the run's "
                               f"{vocab_size}; the generator must use the discriminator's vocabulary")
  if vocab_file and vocab and os.path.isfile(vocab) and os.path.isfile(vocab_file) and not filecmp.cmp(
      vocab, vocab_file, shallow=False):
    raise GeneratorConfigError(f"{where}: its vocab {vocab} differs from config.data.vocab_file={vocab_file}")
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  config = model.config.replace(architectures=("ElectraForMaskedLM",))
  return Source(path=path, config=config, params={k: v for k, v in _to_numpy(params).items()})


def _to_numpy(tree):
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


# ------------------------------------------------------------------------------------------------ optimizer
def owner(names: tuple[str, ...]) -> str:
  """The optimizer group of a parameter path: "generator" under generator/, else "discriminator"."""
  return "generator" if names and names[0] == "generator" else "discriminator"


def optimizer(config: Any, params: Any, *, frozen_generator: bool = False, two_stage: int = 0
              ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The pretraining optimizer: optim.create's (AdamW or LAMB), or, with generator.learning_rate > 0 or a frozen
  generator, one per group (optim.create_groups), the generator's at its own rate or frozen. Returns (tx, the
  discriminator's schedule). With two_stage N (Section 3.2) the warmup-and-decay schedule restarts for each stage,
  each a training run of its own: N generator steps, then num_train_steps - N discriminator steps."""
  lr, total = float(config.learning_rate), int(config.num_train_steps)
  if two_stage > 0:
    schedule = optax.join_schedules([optim.schedule_from_config(config.optimizer, lr, two_stage),
                                     optim.schedule_from_config(config.optimizer, lr, total - two_stage)], [two_stage])
    return optim.create(config.optimizer, params, schedule), schedule
  gen_lr = float(config.generator.get("learning_rate", 0.0) or 0.0)
  if not frozen_generator and gen_lr <= 0:
    return optim.create(config.optimizer, params, learning_rate=lr, num_train_steps=total)
  if "generator" not in params:
    raise GeneratorConfigError("config.generator.learning_rate: this model has no generator network")
  tx, schedules = optim.create_groups(
      config.optimizer, params, learning_rates={"discriminator": lr, "generator": None if frozen_generator else gen_lr},
      label_of=owner, num_train_steps=total)
  return tx, schedules["discriminator"]


def frozen_source(config: Any, disc: Any, vocab_size: int) -> Source | None:
  """The frozen external generator config.generator.source names, loaded with the discriminator's runtime fields
  (disc: its ElectraConfig), or None."""
  name = options(config)["source"]
  if not name:
    return None
  runtime = {f: getattr(disc, f) for f in ("dtype", "param_dtype", "scan_layers", "remat_policy", "kernels")}
  source = load_source(name, vocab_size=vocab_size, vocab_file=config.data.get("vocab_file"), runtime=runtime)
  if source.config.max_position_embeddings < int(config.max_seq_length):
    raise GeneratorConfigError(f"config.generator.source={name}: max_position_embeddings="
                               f"{source.config.max_position_embeddings} < max_seq_length={config.max_seq_length}")
  return source
