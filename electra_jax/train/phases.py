"""Pretraining in phases of sequence length: e.g. 90% of the steps at 128 tokens, then 10% at 512 (NVIDIA's recipe).

    --config.phases=0.9:128:256,0.1:512:64          # STEPS:SEQ_LEN[:BATCH], comma-separated
    --config.phases=9000:128:256,1000:512:64        # the same with step counts

STEPS is a count, or a fraction of config.num_train_steps when it has a decimal point (the last phase then takes what
rounding leaves); the phases' steps add up to num_train_steps. BATCH defaults to config.batch_size. An empty
config.phases is one phase of config.max_seq_length x config.batch_size. One learning-rate schedule (and one step
count for the RNG) runs across the phases; each phase reads its own dataset (one per length, built before training)
from its start, with its own compiled step (the shapes and the masked positions per sequence differ). A checkpoint
records its phase and that phase's data position, so a killed run resumes in the right phase at the right example.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from electra_jax import errors


class PhaseError(errors.Error, ValueError):
  """config.phases that cannot be parsed, or that do not match the checkpoint being resumed."""


@dataclasses.dataclass(frozen=True)
class Phase:
  index: int
  start: int        # steps trained before the phase
  end: int          # steps trained at its end
  seq_len: int
  batch_size: int

  @property
  def steps(self) -> int:
    return self.end - self.start

  def as_list(self) -> list[int]:
    return [self.start, self.end, self.seq_len, self.batch_size]


def parse(spec: str, total_steps: int, seq_len: int, batch_size: int) -> list[Phase]:
  """The phases of `spec` (config.phases) for a run of `total_steps`; PhaseError naming the entry at fault."""
  spec = (spec or "").strip()
  if not spec:
    return [Phase(0, 0, total_steps, int(seq_len), int(batch_size))]
  entries = [e.strip() for e in spec.split(",")]
  parsed = []
  for entry in entries:
    parts = entry.split(":")
    if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
      raise PhaseError(f"config.phases entry {entry!r}: expected STEPS:SEQ_LEN[:BATCH], e.g. 0.9:128:256")
    try:
      steps = float(parts[0]) if "." in parts[0] else int(parts[0])
      seq, batch = int(parts[1]), int(parts[2]) if len(parts) == 3 else int(batch_size)
    except ValueError:
      raise PhaseError(f"config.phases entry {entry!r}: STEPS, SEQ_LEN and BATCH must be numbers") from None
    if steps <= 0 or seq < 5 or batch <= 0 or (isinstance(steps, float) and steps > 1):
      raise PhaseError(f"config.phases entry {entry!r}: needs steps > 0 (a fraction <= 1 or a count), "
                       "seq_len >= 5 and batch > 0")
    parsed.append((steps, seq, batch))
  counts = [round(s * total_steps) if isinstance(s, float) else s for s, _, _ in parsed]
  if isinstance(parsed[-1][0], float):
    counts[-1] = total_steps - sum(counts[:-1])
  if sum(counts) != total_steps or min(counts) <= 0:
    raise PhaseError(f"config.phases={spec!r} gives {counts} steps, which must be positive and add up to "
                     f"config.num_train_steps={total_steps}")
  phases, start = [], 0
  for i, (count, (_, seq, batch)) in enumerate(zip(counts, parsed)):
    phases.append(Phase(i, start, start + count, seq, batch))
    start += count
  return phases


def phase_at(phases: Sequence[Phase], step: int) -> Phase:
  """The phase that trains the step after `step` steps (the last phase once training is done)."""
  for p in phases:
    if step < p.end:
      return p
  return phases[-1]


def phase_config(config: Any, phase: Phase) -> Any:
  """A copy of `config` with the phase's max_seq_length and batch_size."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.max_seq_length, out.batch_size = phase.seq_len, phase.batch_size
  return out


class PhasedData:
  """The batches, the step and the data position of a run in phases; the loop calls `step_fn` and `batch_at`.

  `make_loader(phase, start_step)` opens the phase's loader at a position inside the phase; `steps[(batch, seq_len)]`
  is the compiled step of that shape (picked by the batch's shape); `on_phase(phase)` runs when a phase starts (e.g.
  the throughput meter's tokens per step).
  """

  def __init__(self, phases: Sequence[Phase], make_loader: Callable[[Phase, int], Any],
               steps: Mapping[int, Callable], on_phase: Callable[[Phase], None] | None = None):
    self.phases = list(phases)
    self._make_loader, self._steps, self._on_phase = make_loader, dict(steps), on_phase
    self.phase: Phase | None = None
    self.loader = None

  def open(self, step: int, train_meta: Mapping[str, Any] | None = None) -> None:
    """Positions the data after `step` steps: from the checkpoint's train_meta (its phase and loader state), or the
    phase's start when the checkpoint ended the previous phase (or there is none)."""
    phase = phase_at(self.phases, step)
    saved = None
    if train_meta is not None and "loader" in train_meta:
      saved_phases = train_meta.get("phases")
      if saved_phases is not None and saved_phases != [p.as_list() for p in self.phases]:
        raise PhaseError(f"the checkpoint at step {step} was trained in phases {saved_phases} ([start, end, seq_len, "
                         f"batch]) but config.phases now gives {[p.as_list() for p in self.phases]}; use a new workdir")
      saved_index = int(train_meta.get("phase", 0))
      if saved_index == phase.index:
        saved = train_meta["loader"]
      elif not (saved_index == phase.index - 1 and step == phase.start):
        raise PhaseError(f"the checkpoint at step {step} was saved in phase {saved_index}, but step {step} belongs to "
                         f"phase {phase.index}")
    elif train_meta is not None:   # a converted checkpoint (convert tf_to_orbax) has no data position
      logging.info("checkpoint step %d has no data-loader position; reading the data from its start", step)
    self._switch(phase, step - phase.start)
    if saved is not None:
      self.loader.restore(saved)

  def _switch(self, phase: Phase, position: int) -> None:
    if self.loader is not None:
      self.loader.close()
    self.phase = phase
    self.loader = self._make_loader(phase, position)
    if self._on_phase is not None:
      self._on_phase(phase)
    if len(self.phases) > 1:
      logging.info("phase %d of %d: steps %d..%d at %d tokens x %d", phase.index + 1, len(self.phases),
                   phase.start + 1, phase.end, phase.seq_len, phase.batch_size)

  def batch_at(self, step: int):
    if step >= self.phase.end and self.phase.index + 1 < len(self.phases):
      self._switch(self.phases[self.phase.index + 1], 0)
    return next(self.loader)

  def step_fn(self, state, batch, rng):
    return self._steps[tuple(batch["input_ids"].shape)](state, batch, rng)

  def train_meta(self) -> dict[str, Any]:
    """The data position for a checkpoint."""
    meta = {"loader": self.loader.state()}
    if len(self.phases) > 1:
      meta.update(phase=self.phase.index, phases=[p.as_list() for p in self.phases])
    return meta

  def close(self) -> None:
    if self.loader is not None:
      self.loader.close()


def lengths(phases: Sequence[Phase]) -> list[int]:
  """The distinct sequence lengths, in order of first use."""
  return list(dict.fromkeys(p.seq_len for p in phases))

