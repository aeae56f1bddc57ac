"""Joining a multi-process run (``python -m pax.launch`` starts one on this machine)."""

from pax._src.distributed import COORDINATOR_ENV as COORDINATOR_ENV
from pax._src.distributed import NUM_PROCESSES_ENV as NUM_PROCESSES_ENV
from pax._src.distributed import PROCESS_ID_ENV as PROCESS_ID_ENV
from pax._src.distributed import cluster_detected as cluster_detected
from pax._src.distributed import initialize as initialize

__all__ = [
    "COORDINATOR_ENV",
    "NUM_PROCESSES_ENV",
    "PROCESS_ID_ENV",
    "cluster_detected",
    "initialize",
]
