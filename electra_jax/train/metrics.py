"""Training metrics: TensorBoard event files + WORKDIR/metrics.jsonl, a throughput/ETA meter and console lines.

    writer = MetricWriter(workdir, resume_step=restored_step)     # drops records after resume_step (a killed run's)
    meter = Throughput(tokens_per_step=B * L, flops_per_step=f, num_devices=8, peak_flops_per_device=p,
                       total_steps=T)
    meter.start(step)
    ...
    scalars = {"loss": 3.2, **meter.update(step)}                  # tokens_per_sec, mfu, eta_seconds, ...
    writer.write_scalars(step, scalars)                            # one JSON object {"step": .., "loss": .., ...}
    logging.info(format_step_line(step, T, scalars))               # step 120/1000 | loss 3.2000 | 1.2e+04 tok/s | ...
    writer.close()

Only process 0 writes (others get a writer that does nothing). Non-finite values are written as null in JSON.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from electra_jax import errors

METRICS_FILE = "metrics.jsonl"


def _number(value: Any) -> float | int | None:
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, int):
    return value
  value = float(value)
  return value if math.isfinite(value) else None


def _import_summary_writer():
  """tensorboardX.SummaryWriter without importing torch (tensorboardX imports it only to accept torch tensors, which
  we never pass; the import costs seconds when torch is installed)."""
  import sys  # pylint: disable=import-outside-toplevel
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None   # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


class MetricsFileError(errors.Error, ValueError):
  """A metrics.jsonl that this project did not write as it stands (bytes that are not UTF-8, a line that is not an
  object); the message names the file and line."""


def _records(path: str) -> list[dict[str, Any]]:
  """The JSON objects of a metrics.jsonl, in file order. A line that does not parse is skipped (a kill can cut the
  last line short); one that is not UTF-8 or not an object is an error naming file and line (nothing here wrote it)."""
  out = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise MetricsFileError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                               f"move the file aside to start a new one") from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if not isinstance(record, dict):
        raise MetricsFileError(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object "
                               f"{{\"step\": ...}}; move the file aside to start a new one")
      out.append(record)
  return out


def read_metrics(workdir: str | os.PathLike, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
  """All records of WORKDIR/metrics.jsonl, in file order (see `_records`)."""
  path = os.path.join(os.fspath(workdir), filename)
  if not os.path.exists(path):
    return []
  return _records(path)


def archive(workdir: str | os.PathLike, reason: str, filename: str = METRICS_FILE) -> str | None:
  """Renames WORKDIR/metrics.jsonl to metrics.jsonl.<reason>-<time> (a run starting over keeps the old records);
  returns the new path, or None if there was nothing to keep. Process 0 only."""
  import jax  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.fspath(workdir), filename)
  if jax.process_index() != 0 or not os.path.exists(path) or os.path.getsize(path) == 0:
    return None
  target = f"{path}.{reason}-{time.strftime('%Y%m%d-%H%M%S')}"
  os.replace(path, target)
  return target


class MetricWriter:
  """Writes scalars to TensorBoard (tensorboardX) under `workdir` and appends them to `workdir`/metrics.jsonl.

  resume_step: the step training restarts after; records of later steps (written by a run that was killed before its
  next checkpoint) are dropped from metrics.jsonl and purged from TensorBoard, so every step appears once.
  """

  def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None, enabled: bool | None = None,
               tensorboard: bool = True, filename: str = METRICS_FILE):
    if enabled is None:
      import jax  # pylint: disable=import-outside-toplevel
      enabled = jax.process_index() == 0
    self.enabled = enabled
    self.path = os.path.join(os.fspath(workdir), filename)
    self._tb = None
    self._file = None
    if not enabled:
      return
    os.makedirs(os.fspath(workdir), exist_ok=True)
    if resume_step is not None and os.path.exists(self.path):
      self._truncate_after(resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      SummaryWriter = _import_summary_writer()  # pylint: disable=invalid-name
      purge = resume_step + 1 if resume_step is not None else None
      self._tb = SummaryWriter(logdir=os.fspath(workdir), purge_step=purge, flush_secs=30)

  def _truncate_after(self, step: int) -> None:
    kept = [json.dumps(r) + "\n" for r in _records(self.path) if int(r.get("step", -1)) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    for key, value in scalars.items():
      if value is None:
        continue
      record[key] = _number(value)
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and value is not None:
          self._tb.add_scalar(key, value, global_step=int(step))

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, global_step=step)

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class Throughput:
  """Steps/s, tokens/s, achieved FLOP/s per device, MFU and ETA between two calls (wall clock)."""

  def __init__(self, *, tokens_per_step: int, flops_per_step: float, num_devices: int,
               peak_flops_per_device: float | None, total_steps: int):
    self.tokens_per_step = tokens_per_step
    self.flops_per_step = flops_per_step
    self.num_devices = num_devices
    self.peak = peak_flops_per_device
    self.total_steps = total_steps
    self._step = None
    self._time = None

  def start(self, step: int) -> None:
    """Starts (or restarts, e.g. after the first step's compilation) the clock at `step`."""
    self._step, self._time = step, time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    """Rates since the previous call; call after the step's results are on the host (so the time is real)."""
    now = time.perf_counter()
    if self._step is None or step <= self._step:
      self.start(step)
      return {}
    steps, seconds = step - self._step, now - self._time
    self._step, self._time = step, now
    sec_per_step = seconds / steps
    out = {
        "steps_per_sec": 1.0 / sec_per_step,
        "tokens_per_sec": self.tokens_per_step / sec_per_step,
        "model_flops_per_step": self.flops_per_step,
        "tflops_per_sec_per_device": self.flops_per_step / sec_per_step / self.num_devices / 1e12,
        "eta_seconds": max(self.total_steps - step, 0) * sec_per_step,
    }
    if self.peak:
      out["mfu"] = self.flops_per_step / sec_per_step / (self.num_devices * self.peak)
    return out


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f"{days}d{hours:02d}h"
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s"


# The discriminator's recall on replaced tokens below which it "collapsed": it calls (almost) every token original,
# so its accuracy is the "always original" rate however it scores otherwise.
RECALL_COLLAPSE = 0.05


def discriminator_summary(scalars: Mapping[str, Any]) -> tuple[str, str | None]:
  """(one line: the discriminator's accuracy beside the "always original" accuracy at the measured replacement rate,
  its AUC and recall; a warning when its recall collapsed, else None). ("", None) without discriminator metrics."""
  if scalars.get("disc_accuracy") is None:
    return "", None
  acc, rate = float(scalars["disc_accuracy"]), scalars.get("disc_replaced_fraction")
  line = f"discriminator accuracy {acc:.3f}"
  if rate is not None:
    line += f" (\"always original\" scores {1.0 - float(rate):.3f} at the {100 * float(rate):.1f}% replacement rate)"
  for key, name in (("disc_auc", "AUC"), ("disc_recall", "recall"), ("disc_precision", "precision")):
    if scalars.get(key) is not None and math.isfinite(float(scalars[key])):
      line += f", {name} {float(scalars[key]):.3f}"
  recall = scalars.get("disc_recall")
  warning = None
  if recall is not None and rate and float(rate) > 0 and float(recall) < RECALL_COLLAPSE:
    warning = (f"the discriminator's recall collapsed ({float(recall):.3f} of the replaced tokens found): it calls "
               f"almost every token original, so its accuracy is the base rate; it has learned little (more steps, "
               f"a lower learning rate, or a smaller generator)")
  return line, warning


def format_step_line(step: int, total_steps: int, scalars: Mapping[str, Any]) -> str:
  """`step 120/1000 | loss 12.3456 (mlm 5.43 rtd 0.138) | disc acc 0.912 auc 0.801 | lr 1.2e-04 | 3.1e+04 tok/s |
  MFU 31.2% | ETA 1h02m`, leaving out what `scalars` lacks."""
  parts = [f"step {step}/{total_steps}"]
  if "loss" in scalars:
    loss = f"loss {scalars['loss']:.4f}"
    sub = [f"{name} {scalars[key]:.4g}" for key, name in (("mlm_loss", "mlm"), ("rtd_loss", "rtd"))
           if key in scalars]
    parts.append(loss + (f" ({' '.join(sub)})" if sub else ""))
  disc = [f"{name} {scalars[key]:.3f}" for key, name in (("disc_accuracy", "acc"), ("disc_auc", "auc"))
          if key in scalars]
  if "disc_accuracy" in scalars and scalars.get("disc_replaced_fraction") is not None:
    disc.insert(1, f"(base {1.0 - float(scalars['disc_replaced_fraction']):.3f})")   # "always original"
  if disc:
    parts.append("disc " + " ".join(disc))
  if "mlm_accuracy" in scalars:
    parts.append(f"mlm acc {scalars['mlm_accuracy']:.3f}")
  if "learning_rate" in scalars:
    parts.append(f"lr {scalars['learning_rate']:.2e}")
  if "tokens_per_sec" in scalars:
    parts.append(f"{scalars['tokens_per_sec']:.3g} tok/s")
  if scalars.get("mfu") is not None:
    parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
  if "eta_seconds" in scalars:
    parts.append(f"ETA {format_duration(scalars['eta_seconds'])}")
  return " | ".join(parts)
