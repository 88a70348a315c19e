"""Checkpoint I/O, below everything that reads or writes a checkpoint (train/, eval/, convert/).

    from electra_jax import checkpointing
    ckpt = checkpointing.Checkpointer(workdir + "/checkpoints", keep=5, model_meta=meta)   # a training run's store
    meta, params = checkpointing.load_params("workdir")        # params as numpy, latest readable step
    model = checkpointing.load_model("workdir")                # the nnx module its model_config describes

`store` wraps Orbax for training runs, `tools` for params-only reads and writes (the only importers of Orbax); `integrity` fingerprints what is saved so every restore can verify
it; `models` turns a checkpoint's model_config into a module; `lock` keeps two runs out of one workdir; `quiet`
keeps Orbax's log lines out of the way.
"""

from electra_jax.checkpointing.lock import WorkdirBusyError, WorkdirLock
from electra_jax.checkpointing.models import (ModelSpec, build_model, electra_config_from_meta, head_meta, load_model,
                                              pretraining_meta, read_model_config)
from electra_jax.checkpointing.quiet import quiet_orbax_logging
from electra_jax.checkpointing.store import (CHECKPOINTS_SUBDIR, MODEL_CONFIG_FILE, Checkpointer, CheckpointError,
                                             CorruptCheckpointError, NonFiniteParamsError, Restored, SaveError,
                                             state_fingerprints)
from electra_jax.checkpointing.tools import load_params, resolve_checkpoint_dir, save_params

__all__ = ["CHECKPOINTS_SUBDIR", "MODEL_CONFIG_FILE", "CheckpointError", "Checkpointer", "CorruptCheckpointError", "NonFiniteParamsError", "SaveError",
           "ModelSpec", "Restored", "build_model", "electra_config_from_meta", "head_meta", "load_model", "load_params",
           "pretraining_meta", "quiet_orbax_logging", "read_model_config", "resolve_checkpoint_dir", "save_params",
           "state_fingerprints", "WorkdirBusyError", "WorkdirLock"]
