"""Process set-up below every binary: multi-host initialisation, host-memory policy, steps compiled ahead of time."""
