"""Joining a multi-host run: `jax.distributed.initialize` from the config or the environment.

Every process of a multi-host job must call it before touching a device, so that `jax.devices()`
lists the devices of all hosts and the mesh spans them. On Cloud TPU pods and SLURM / Open MPI
clusters JAX finds the coordinator itself; elsewhere it comes from `config.distributed` or the
environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
"""

import logging
import os

import jax
import ml_collections

# Variables by which a cluster manager announces a multi-process job that JAX can auto-detect.
_CLUSTER_HINTS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def default_config() -> ml_collections.ConfigDict:
    """`coordinator_address` empty and `num_processes` 0 mean: read the environment, else single host."""
    return ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1))


def _cluster_size_from_environment() -> int:
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len(hosts.split(",")) if hosts else 1


def initialize(distributed_cfg=None) -> bool:
    """Joins the multi-host run the config or environment describes; returns whether it did.

    A single-host run (nothing configured, no cluster announced) is left alone, so scripts call
    this unconditionally first thing.
    """
    if jax.distributed.is_initialized():
        return True
    cfg = distributed_cfg or default_config()
    address = cfg.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = cfg.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    process_id = cfg.process_id if cfg.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
    if address:
        if num_processes < 1 or process_id < 0:
            raise ValueError(f"distributed.coordinator_address={address!r} needs distributed.num_processes "
                             f"(got {num_processes}) and distributed.process_id (got {process_id}), or "
                             "JAX_NUM_PROCESSES / JAX_PROCESS_ID")
        jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                                   process_id=process_id)
    elif any(name in os.environ for name in _CLUSTER_HINTS) and _cluster_size_from_environment() > 1:
        jax.distributed.initialize()
    else:
        return False
    logging.info("joined a %d-process run as process %d: %d devices in all", jax.process_count(),
                 jax.process_index(), jax.device_count())
    return True
