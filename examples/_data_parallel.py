"""Data parallelism with `jax.sharding`, shared by the examples; also multi-process runs.

One `Mesh` with a single axis, ``"data"``, spans the devices (char_rnn's ``--sharding tensor``
adds a second axis, ``"model"``). Each batch is split along its leading axis
(``NamedSharding(mesh, P("data"))``); the model and the optimizer are replicated
(``NamedSharding(mesh, P())``) or placed by `pax.sharding` rules. The training step is an
ordinary `jax.jit` function: the compiler inserts the cross-device reductions (the mean of the
loss, the sum of the gradients, BatchNorm's batch statistics), so the update is the same as on
a single device with the same global batch. The same code runs on one CPU, on simulated CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU, on a TPU pod slice,
or as several processes (``python -m pax.launch -n 2 examples/char_rnn.py``): every process
builds the same global batch and hands over only the rows its own devices hold; only process 0
prints and plots, and every process takes part in `pax.save` (each writes the pieces it owns).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import pax

DATA_AXIS = "data"
MODEL_AXIS = "model"


# --- processes ---------------------------------------------------------------------------------


def add_process_flags(parser: argparse.ArgumentParser) -> None:
    """Adds ``--coordinator``, ``--num-processes`` and ``--process-id`` (multi-process runs)."""
    group = parser.add_argument_group(
        "multi-process runs",
        "Each flag falls back to its environment variable (PAX_COORDINATOR_ADDRESS, "
        "PAX_NUM_PROCESSES, PAX_PROCESS_ID; `python -m pax.launch` sets them). With none set, "
        "jax.distributed.initialize() configures itself on SLURM, Open MPI or a Cloud TPU pod; "
        "elsewhere the run is a single process.",
    )
    group.add_argument("--coordinator", default=None, help="host:port of process 0")
    group.add_argument("--num-processes", type=int, default=None, help="processes of the run")
    group.add_argument("--process-id", type=int, default=None, help="this process's index")


def initialize(args: argparse.Namespace) -> int:
    """Joins the multi-process run the flags (or the environment) describe; returns the
    number of processes. Call it before any other JAX call."""
    return pax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def is_main_process() -> bool:
    """Whether this process prints and plots (process 0)."""
    return jax.process_index() == 0


# --- meshes and placement ----------------------------------------------------------------------


def make_mesh(
    devices: Sequence[jax.Device] | None = None, model_parallel: int | None = None
) -> Mesh:
    """Returns a one-axis mesh (``"data"``) over `devices` (default: every visible device), or
    with `model_parallel` a 2-D mesh ``("data", "model")`` whose "model" axis has that size."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: `devices` is empty; pass at least one device.")
    if model_parallel is None:
        return Mesh(np.array(devices), (DATA_AXIS,))
    n = len(devices)
    if model_parallel <= 0 or n % model_parallel:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"--model-parallel {model_parallel} does not divide the {n} devices into a "
            f"(data, model) mesh. Fix: --model-parallel {max(d for d in divisors if d <= 2)} "
            f"(any of {divisors})."
        )
    grid = np.array(devices).reshape(n // model_parallel, model_parallel)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = "--batch-size") -> None:
    """Raises ValueError unless the global batch splits evenly over the mesh's "data" axis."""
    n = int(mesh.shape[DATA_AXIS])
    where = f"{n} devices" if mesh.size == n else f"the {n} rows of the (data, model) mesh"
    if batch_size <= 0 or batch_size % n:
        lower = max(n, batch_size // n * n)
        raise ValueError(
            f"{flag} {batch_size} cannot be split evenly over {where}: the global batch "
            f"must be a positive multiple of {n}. Fix: {flag} {lower} (or {lower + n})."
        )


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device (model, optimizer, scalars)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding that splits the leading (batch) axis over the devices."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Copies every array of `tree` (e.g. a model, an optimizer) to every device of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Turns a global batch (numpy arrays) into global jax arrays split along axis 0.

    With several processes every process builds the same global batch (same data, same seed)
    and hands over only the rows its own devices hold (`jax.make_array_from_callback` asks for
    each local device's block; the other processes' rows are never copied).
    """
    sharding = batch_sharded(mesh)

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, batch)


def host_local(tree: Any, mesh: Mesh) -> Any:
    """A copy of `tree` on this process's first device, for sampling and saving.

    Arrays split over the mesh are first gathered (a jitted copy to the replicated sharding:
    every process must call this at the same point); a replicated array is read from the local
    device that already holds it.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if any(isinstance(x, jax.Array) and not x.is_fully_replicated for x in leaves):
        tree = jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
    local = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x
    return jax.tree_util.tree_map(local, tree)


def jit_step(
    step: Callable[..., Any], mesh: Mesh, n_replicated: int, donate: bool = False
) -> Callable[..., Any]:
    """Compiles ``step(*replicated_args, batch)``: the first `n_replicated` arguments and every
    output are replicated, the last argument is sharded on its leading axis."""
    rep, data = replicated(mesh), batch_sharded(mesh)
    return jax.jit(
        step,
        in_shardings=(rep,) * n_replicated + (data,),
        out_shardings=rep,
        donate_argnums=tuple(range(n_replicated)) if donate else (),
    )
