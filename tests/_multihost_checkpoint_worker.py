"""One process of a 2-process checkpoint test (started by tests/test_checkpoint_multihost.py).

Usage: python _multihost_checkpoint_worker.py PORT PROCESS_ID MODE PATH SEED [PATH ...]

MODE is ``save`` (save the tree of ``SEED``, sharded over a (2, 4) mesh of both processes'
devices), ``load`` (load it into a (4, 2) mesh with the axes swapped, and check every local
shard bit for bit; further paths, e.g. of one-process checkpoints, are loaded and checked the
same way) or ``die`` (as ``save``, but process 1 exits right after writing its part
file, before the main file is written). Prints ``OK`` on success.
"""

from __future__ import annotations

import os
import sys

# The test starts this script with XLA_FLAGS=--xla_force_host_platform_device_count=4 and
# JAX_PLATFORMS=cpu (set nothing here: pytest imports this file when collecting doctests, and
# the whole test session would get 4 devices).
import jax
import numpy as np
from jax.sharding import Mesh

import pax
from pax._src.checkpoint import sharded as checkpoint_sharded

DIED = 17


def main() -> None:
    port, process, mode, path, seed, *others = sys.argv[1:]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=int(process)
    )
    from _multihost_checkpoint_model import build, check_loaded, shard

    expected = build(int(seed))
    if mode in ("save", "die"):
        mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        if mode == "die" and jax.process_index() == 1:
            write = checkpoint_sharded._write_part

            def write_then_die(*args):
                write(*args)
                os._exit(DIED)  # killed after its part is on disk, before the main file

            checkpoint_sharded._write_part = write_then_die
        pax.save(path, shard(expected, mesh))
    elif mode == "load":
        mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
        like = shard(build(int(seed) + 1000), mesh, transpose=True)  # other values: from the file
        for one in [path, *others]:
            checked = check_loaded(pax.load(one, like), expected, like)
            print(f"checked {checked} leaves of {one} on process {jax.process_index()}")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    jax.distributed.shutdown()
    print("OK", flush=True)


if __name__ == "__main__":
    main()
