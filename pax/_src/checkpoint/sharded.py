"""Checkpoints written by several processes: each writes the pieces it owns into a part file.

When ``jax.process_count() > 1``, `pax.save` writes, next to ``path``:

* one part file per process, ``{path}.{save id}.part{i}-of-{n}``: a ``.npz`` (as a one-process
  checkpoint) whose members are pieces of leaves, with a metadata entry giving, for each piece,
  its leaf's key path and its place in the leaf (``start``/``stop`` per axis). A process writes
  the shards of its addressable devices whose ``replica_id`` is 0, so data replicated over
  devices or processes is written once; leaves that do not span processes (numpy arrays,
  Python scalars, arrays on one process's devices) are written by process 0 only.
* then, after every process wrote its part, the main file ``path`` (by process 0): a ``.npz``
  holding only the metadata entry, as a one-process checkpoint's but with ``stored_shape`` per
  leaf, the save id and the list of part files with their sizes and SHA-256 digests.

Every file is written atomically (`io.atomic_write`), the main file last: the
checkpoint exists once the main file does. A save killed midway leaves the previous main file,
whose parts have another save id and are untouched; parts not listed by the main file are
removed after it is in place. All processes must see the same directory (a shared file system).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from pax._src.checkpoint.check import METADATA_KEY, PART_NAME
from pax._src.checkpoint.codec import encode_leaf, record_of
from pax._src.checkpoint.io import atomic_write, remove_stale_temporaries
from pax._src.errors import CheckpointError

PART_FORMAT = "pax-checkpoint-part"
_DIGEST = 32  # bytes of a SHA-256 digest


class Group(NamedTuple):
    """The processes taking part in a save, and the two collectives it needs.

    Attributes:
      process: this process's index.
      processes: the number of processes.
      broadcast: returns process 0's value of a uint8 vector, on every process.
      allgather: returns every process's uint8 vector, stacked in process order.
    """

    process: int
    processes: int
    broadcast: Callable[[np.ndarray], np.ndarray]
    allgather: Callable[[np.ndarray], np.ndarray]


def jax_processes() -> Group:
    """The processes of ``jax.distributed``, with `multihost_utils` as collectives."""
    return Group(
        jax.process_index(),
        jax.process_count(),
        lambda x: np.asarray(multihost_utils.broadcast_one_to_all(x)),
        lambda x: np.asarray(multihost_utils.process_allgather(x)),
    )


def part_name(path: str, save_id: str, index: int, count: int) -> str:
    return f"{os.path.basename(path)}.{save_id}.part{index}-of-{count}"


def bounds(index: Any, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """A shard's index (a tuple of slices, as JAX gives them) as (start, stop) per axis.

    Axes of ``shape`` beyond the index (a key array's data axes) are whole.
    """
    found = []
    for axis in range(min(len(index), len(shape))):
        start, stop, _ = index[axis].indices(shape[axis])  # JAX's slices have no step
        found.append((start, max(start, stop)))
    return tuple(found) + tuple((0, n) for n in shape[len(found) :])


def pieces(
    where: str, leaf: Any, index: int
) -> tuple[dict, list[tuple[list[int], list[int], np.ndarray]]]:
    """The metadata record of a leaf and the pieces of it this process writes."""
    name = where or "the root"
    if isinstance(leaf, jax.Array):
        record = record_of(name, leaf)
        stored = tuple(record["stored_shape"])
        if leaf.is_fully_addressable and index != 0:
            return record, []  # on this process's devices only: process 0 writes its own
        owned = []
        for shard in leaf.addressable_shards:
            if shard.replica_id == 0:
                starts, stops = zip(*bounds(shard.index, stored)) if stored else ((), ())
                owned.append((list(starts), list(stops), encode_leaf(name, shard.data)[0]))
        return record, owned
    array, record = encode_leaf(name, leaf)
    record["stored_shape"] = list(array.shape)
    whole = [([0] * array.ndim, list(array.shape), array)]
    return record, whole if index == 0 else []


def _write_part(path: str, entries: dict[str, np.ndarray]) -> tuple[int, bytes]:
    """Writes one part file atomically; returns its size and SHA-256 digest."""
    atomic_write(path, entries)
    return file_digest(path)


def file_digest(path: str) -> tuple[int, bytes]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.digest()


def save_parts(path: str, head: dict, named: dict[str, Any], group: Group | None = None) -> None:
    """`pax.save` across processes (see the module doc); every process calls it."""
    group = group or jax_processes()
    records: list[dict] = []
    entries: dict[str, np.ndarray] = {}
    listed: list[dict] = []
    for where, leaf in named.items():  # every check before any file is written
        record, owned = pieces(where, leaf, group.process)
        records.append({"path": where, **record})
        for starts, stops, array in owned:
            member = str(len(listed))
            entries[member] = array
            listed.append({"path": where, "member": member, "start": starts, "stop": stops})
    token = np.frombuffer(secrets.token_bytes(6), dtype=np.uint8)
    save_id = bytes(group.broadcast(token).astype(np.uint8)).hex()
    part = {"format": PART_FORMAT, "save": save_id, "process": group.process, "pieces": listed}
    entries = {METADATA_KEY: _json_blob(part), **entries}
    directory = os.path.dirname(os.path.abspath(path))
    mine = os.path.join(directory, part_name(path, save_id, group.process, group.processes))
    status = np.zeros(1 + _DIGEST + 8, dtype=np.uint8)
    failure: BaseException | None = None
    try:
        size, digest = _write_part(mine, entries)
        status[0], status[1 : 1 + _DIGEST] = 1, np.frombuffer(digest, dtype=np.uint8)
        status[1 + _DIGEST :] = np.frombuffer(size.to_bytes(8, "little"), dtype=np.uint8)
    except Exception as err:
        failure = err
    statuses = group.allgather(status).reshape(group.processes, -1).astype(np.uint8)
    if failure is not None:
        raise failure
    failed = [i for i in range(group.processes) if statuses[i, 0] != 1]
    if failed:
        raise CheckpointError(
            f"pax.save: process(es) {failed} could not write their part of {path} (their own "
            f"errors say why); the checkpoint was not written and the previous one, if any, is "
            f"unchanged."
        )
    done = np.zeros(1, dtype=np.uint8)
    if group.process == 0:
        try:
            parts = []
            for i in range(group.processes):
                name = part_name(path, save_id, i, group.processes)
                size = int.from_bytes(bytes(statuses[i, 1 + _DIGEST :]), "little")
                _check_visible(path, os.path.join(directory, name), i, size)
                sha = bytes(statuses[i, 1 : 1 + _DIGEST]).hex()
                parts.append({"file": name, "bytes": size, "sha256": sha})
            metadata = {**head, "leaves": records, "save": save_id, "parts": parts}
            atomic_write(path, {METADATA_KEY: _json_blob(metadata)})
            done[0] = 1
        except Exception as err:
            failure = err
    done = group.broadcast(done)  # no process returns before the checkpoint is in place
    if failure is not None:
        raise failure
    if done[0] != 1:
        raise CheckpointError(
            f"pax.save: process 0 could not write the main file {path} (its own error says "
            f"why); the previous checkpoint, if any, is unchanged."
        )
    if group.process == 0:
        remove_old_parts(path, keep=save_id)


def _check_visible(path: str, part: str, index: int, size: int) -> None:
    try:
        seen = os.stat(part).st_size
    except FileNotFoundError:
        seen = None
    if seen != size:
        found = "does not see it" if seen is None else f"sees {seen} bytes"
        raise CheckpointError(
            f"pax.save: process {index} wrote {part} ({size} bytes) but process 0 {found}: "
            f"all processes must save to the same directory, on a file system they share (NFS, "
            f"a cloud bucket mounted with FUSE, ...). Nothing was written to {path}; the "
            f"previous checkpoint, if any, is unchanged. Fix: pass a path on a shared file "
            f"system, the same on every process."
        )


def _json_blob(document: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(document).encode("utf-8"), dtype=np.uint8)


def remove_old_parts(path: str, keep: str | None) -> None:
    """Removes the part files of ``path`` not written by the save ``keep`` (None: all).

    Also removes the temporaries of part files left by killed writers (unlocked ones).
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            match = PART_NAME.fullmatch(name)
            if match is not None and match["base"] == base and match["save"] != keep:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
        temporary = re.compile(rf"\.({re.escape(base)}\.[0-9a-f]{{12}}\.part[0-9]+-of-[0-9]+)\.")
        for name in {m[1] for m in map(temporary.match, os.listdir(directory)) if m}:
            remove_stale_temporaries(os.path.join(directory, name))
