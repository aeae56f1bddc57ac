"""Joining a multi-process run: the coordinator address, process count and id, from arguments,
from pax's environment variables, or from the cluster JAX detects.

``jax.distributed.initialize()`` with no arguments reads only the coordinator address from the
environment (``JAX_COORDINATOR_ADDRESS``); the process count and id it takes from a cluster it
recognizes (SLURM, Open MPI, Cloud TPU, Kubernetes). A plain local launch has none of those, so
pax defines three variables of its own, which ``python -m pax.launch`` sets in every process it
starts: ``PAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``PAX_NUM_PROCESSES`` and
``PAX_PROCESS_ID``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

import jax

COORDINATOR_ENV = "PAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "PAX_NUM_PROCESSES"
PROCESS_ID_ENV = "PAX_PROCESS_ID"

# Environment variables that announce a cluster `jax.distributed.initialize()` configures itself
# from: SLURM (srun), Open MPI (mpirun), Cloud TPU on GKE, Megascale, or an explicit JAX address.
CLUSTER_MARKERS = (
    ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
    ("OMPI_MCA_orte_hnp_uri",),
    ("TPU_WORKER_HOSTNAMES",),
    ("TPU_PROCESS_ADDRESSES",),
    ("MEGASCALE_COORDINATOR_ADDRESS",),
    ("JAX_COORDINATOR_ADDRESS",),
)

_EXAMPLE_FIX = (
    "Fix: give all three, e.g. initialize(coordinator_address='10.0.0.1:1234', num_processes=2, "
    f"process_id=0), or set {COORDINATOR_ENV}=10.0.0.1:1234 {NUM_PROCESSES_ENV}=2 "
    f"{PROCESS_ID_ENV}=0 (python -m pax.launch sets them for local runs)."
)


def _int_setting(name: str, value: int | str | None, env: Mapping[str, str]) -> int | None:
    """`value`, else the environment variable `name`, as an int (None when neither is set)."""
    source = f"{name.lower()}={value!r}"
    if value is None:
        env_name = {"num_processes": NUM_PROCESSES_ENV, "process_id": PROCESS_ID_ENV}[name]
        value = env.get(env_name) or None
        source = f"{env_name}={value!r}"
        if value is None:
            return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if isinstance(value, bool) or number < 0 or str(number) != str(value).strip():
        raise ValueError(
            f"pax.distributed.initialize: {source} is not a non-negative integer. "
            f"Fix: e.g. {source.split('=')[0]}=2."
        )
    return number


def cluster_detected(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment announces a cluster JAX can configure itself from.

    True when every variable of one of `CLUSTER_MARKERS` is set (SLURM, Open MPI, Cloud TPU on
    GKE, Megascale, ``JAX_COORDINATOR_ADDRESS``) or when ``libtpu`` is installed (a Cloud TPU VM,
    whose workers JAX finds through the metadata server).

    Args:
      env: the environment to look at (default: ``os.environ``).

    Returns:
      True if `initialize` would hand over to ``jax.distributed.initialize()``.

    Example:
      >>> import pax
      >>> pax.distributed.cluster_detected({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:4"})
      True
      >>> pax.distributed.cluster_detected({"SLURM_JOB_ID": "7"})  # not a full SLURM step
      False
    """
    env = os.environ if env is None else env
    if any(all(name in env for name in names) for names in CLUSTER_MARKERS):
        return True
    return env is os.environ and importlib.util.find_spec("libtpu") is not None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    """Joins a multi-process JAX run, or stays single-process; returns the process count.

    Each setting comes from its argument, else from its environment variable
    (``PAX_COORDINATOR_ADDRESS``, ``PAX_NUM_PROCESSES``, ``PAX_PROCESS_ID``). Then:

    * all three known, more than one process: selects the ``gloo`` CPU collectives (unless
      another implementation was chosen; they are used only on the CPU platform) and calls
      ``jax.distributed.initialize(coordinator_address, num_processes, process_id)``;
    * one process (``num_processes=1``): nothing to join;
    * nothing given and `cluster_detected`: ``jax.distributed.initialize()`` with no arguments,
      which finds the settings on SLURM, Open MPI or a Cloud TPU pod;
    * nothing given and no cluster: a single-process run, nothing is called.

    Call it first, before any other JAX call (JAX refuses to join once it has started its
    devices). A second call after a successful join returns ``jax.process_count()``.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: the number of processes of the run.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      env: where the environment variables are read (default: ``os.environ``).

    Returns:
      The number of processes: 1 for a single-process run.

    Raises:
      ValueError: only some of the settings are given, a number is not a non-negative integer,
        `process_id` is out of range or the address has no port.

    Example:
      >>> import pax
      >>> pax.distributed.initialize(env={})  # nothing set, no cluster: one process
      1
      >>> pax.distributed.initialize(num_processes=1, process_id=0)
      1
    """
    if jax.distributed.is_initialized():
        return jax.process_count()
    env = os.environ if env is None else env
    address = coordinator_address or env.get(COORDINATOR_ENV) or None
    count = _int_setting("num_processes", num_processes, env)
    index = _int_setting("process_id", process_id, env)
    if address is None and count is None and index is None:
        if not cluster_detected(env):
            return 1
        jax.distributed.initialize()
        return jax.process_count()
    if count == 0:
        raise ValueError(
            f"pax.distributed.initialize: num_processes=0; it must be >= 1. {_EXAMPLE_FIX}"
        )
    if count is not None and index is not None and index >= count:
        raise ValueError(
            f"pax.distributed.initialize: process_id={index} is out of range for "
            f"num_processes={count}; ids run from 0 to {count - 1}. Fix: process_id={count - 1}."
        )
    if count == 1:
        return 1
    if address is None or count is None or index is None:
        missing = [
            name
            for name, value in (
                (f"coordinator_address (or {COORDINATOR_ENV})", address),
                (f"num_processes (or {NUM_PROCESSES_ENV})", count),
                (f"process_id (or {PROCESS_ID_ENV})", index),
            )
            if value is None
        ]
        raise ValueError(
            f"pax.distributed.initialize: a multi-process run needs the coordinator address, the "
            f"process count and the process id, but {' and '.join(missing)} is not set. "
            f"{_EXAMPLE_FIX}"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"pax.distributed.initialize: coordinator address {address!r} is not 'host:port'. "
            f"Fix: e.g. coordinator_address='{host or address}:1234'."
        )
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=count, process_id=index)
    return count
