"""Experiments on top of the training libraries: the paper-replication harness (replicate.py, harness.py)."""
