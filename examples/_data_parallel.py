"""Data parallelism with `jax.sharding`, shared by the examples.

One `Mesh` with a single axis, ``"data"``, spans the devices. Each batch is split along its
leading axis (``NamedSharding(mesh, P("data"))``); the model and the optimizer are replicated
(``NamedSharding(mesh, P())``). The training step is an ordinary `jax.jit` function: the
compiler inserts the cross-device reductions (the mean of the loss, the sum of the gradients,
BatchNorm's batch statistics), so the update is the same as on a single device with the same
global batch. The same code runs on one CPU, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU or on a TPU pod slice (each
process feeds its share of the global batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Returns a one-axis mesh (``"data"``) over `devices` (default: every visible device)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: `devices` is empty; pass at least one device.")
    return Mesh(np.array(devices), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = "--batch-size") -> None:
    """Raises ValueError unless the global batch splits evenly over the mesh's devices."""
    n = mesh.size
    if batch_size <= 0 or batch_size % n:
        lower = max(n, batch_size // n * n)
        raise ValueError(
            f"{flag} {batch_size} cannot be split evenly over {n} devices: the global batch "
            f"must be a positive multiple of the device count. Fix: {flag} {lower} "
            f"(or {lower + n})."
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

    With several processes (a pod slice) every process builds the same global batch (same data,
    same seed) and hands over only its own rows, those that its devices hold.
    """
    sharding = batch_sharded(mesh)
    count, index = jax.process_count(), jax.process_index()

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        rows = x.shape[0] // count
        local = x[index * rows : (index + 1) * rows]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree_util.tree_map(put, batch)


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
