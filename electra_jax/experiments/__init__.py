"""Experiments on top of the training libraries: the paper-replication harness (replicate.py, harness.py) and the
replayable pretraining trace (trace.py) with its independent PyTorch replay (replay.py, which imports none of this
package)."""

from electra_jax import errors


class ExperimentError(errors.Error, ValueError):
  """A harness config, override, suite name or workdir that the harness cannot run."""
