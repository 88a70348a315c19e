"""Experiments on top of the training libraries: the paper-replication harness (replicate.py, harness.py) and the
replayable pretraining trace (trace.py) with its independent PyTorch replay (replay.py, which imports none of this
package)."""
