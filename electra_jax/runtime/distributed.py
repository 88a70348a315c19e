"""Multi-host set-up behind one function, called first in every binary (before any other JAX call).

    from electra_jax.runtime import distributed
    distributed.define_flags()                        # --coordinator_address, --num_processes, --process_id, ...
    def main(argv):
      distributed.initialize_from_flags()             # maybe_initialize(FLAGS...), then the host allocator

`maybe_initialize` calls `jax.distributed.initialize` when, in this order:
  1. a coordinator address is given (flags or arguments): e.g. CPU multi-process runs, `localhost:12345`;
  2. ELECTRA_JAX_DISTRIBUTED=1 (set by launch/ scripts): JAX detects the cluster itself (Cloud TPU pods, SLURM,
     Open MPI, GKE); JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID fill in what is not detected;
  3. SLURM ran several tasks of this job step (`srun`, SLURM_NTASKS > 1): coordinator, process count and id come from
     the SLURM environment;
  4. JAX_COORDINATOR_ADDRESS is set, with JAX_NUM_PROCESSES and JAX_PROCESS_ID;
  5. a multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES lists several hosts).
Otherwise it does nothing (one host: a laptop CPU, one GPU machine, a single-host TPU VM) and returns False.
"""

from __future__ import annotations

import logging
import os

import jax
from absl import flags
from jax.experimental import multihost_utils

from electra_jax import errors
from electra_jax.runtime import host_memory

ENV_FLAG = "ELECTRA_JAX_DISTRIBUTED"
_TRUE = ("1", "true", "yes", "on")



class DistributedError(errors.Error, ValueError):
  """Multi-process flags or environment that do not describe a run."""


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def _reason_to_initialize(coordinator: str | None) -> str | None:
  if coordinator:
    return "coordinator address given"
  if os.environ.get(ENV_FLAG, "").lower() in _TRUE:
    return f"{ENV_FLAG} is set"
  if (_env_int("SLURM_NTASKS") or 1) > 1 and os.environ.get("SLURM_STEP_ID") is not None:
    return "SLURM job step with several tasks"
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS is set"
  hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if len(hosts) > 1:
    return "multi-host Cloud TPU slice"
  return None


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, local_device_ids: list[int] | None = None) -> bool:
  """Initialises jax.distributed when flags or the environment ask for it; returns whether it is initialised.

  Idempotent: a second call returns True without initialising again.
  """
  if jax.distributed.is_initialized():
    return True
  reason = _reason_to_initialize(coordinator)
  if reason is None:
    return False
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID")
  if coordinator and (num_processes is None or process_id is None) and reason == "coordinator address given":
    raise DistributedError(f"coordinator address {coordinator} given without num_processes and process_id "
                           f"(flags --num_processes/--process_id or env JAX_NUM_PROCESSES/JAX_PROCESS_ID)")
  logging.info("initialising jax.distributed (%s): coordinator=%s num_processes=%s process_id=%s", reason,
               coordinator or "auto", num_processes if num_processes is not None else "auto",
               process_id if process_id is not None else "auto")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)
  logging.info("jax.distributed ready: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


# ------------------------------------------------------------------------------------------------ absl flags
def define_flags() -> None:
  """Defines --coordinator_address, --num_processes, --process_id, --reuse_host_memory (call once, at import of a
  binary)."""
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string("coordinator_address", None,
                      "host:port of process 0 for jax.distributed (multi-process CPU/GPU runs without a cluster "
                      "manager). TPU pods and SLURM are detected without it.")
  flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
  flags.DEFINE_bool("reuse_host_memory", True,
                    "On a single-device CPU run, each step reuses the host memory of the previous step's XLA buffers "
                    "instead of faulting in a fresh block (electra_jax/runtime/host_memory.py; figures in "
                    "benchmarks/README.md). No effect on accelerators or with several devices.")


def initialize_from_flags() -> bool:
  """Process set-up, first thing in a binary's main: `maybe_initialize` from the flags, then (--reuse_host_memory)
  the host allocator, before the first JAX computation."""
  f = flags.FLAGS
  initialized = maybe_initialize(f.coordinator_address, f.num_processes, f.process_id)
  if f.reuse_host_memory and host_memory.keep_host_buffers_mapped():
    logging.info("host memory: steps run inline and reuse their host buffers (--reuse_host_memory)")
  return initialized


def is_primary() -> bool:
  """True on the process that writes logs, metrics and exports (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches this point (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
