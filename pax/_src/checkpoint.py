"""Checkpoints: `pax.save` / `pax.load`, atomic, pickle-free and checked before loading.

A checkpoint is a ``.npz`` file (a zip of ``.npy`` arrays, readable with
``numpy.load(path, allow_pickle=False)``) holding one array per leaf, named by the leaf's key
path (``jax.tree_util.keystr``, e.g. ``.layers[0].weight``), plus one metadata entry: a JSON
document (stored as a uint8 array) with a format marker and version, the treedef of the saved
tree, and the shape and dtype of every leaf. Dtypes numpy cannot store (bfloat16, float8, int4,
...) are stored as their raw bits (an unsigned integer view) and restored bit for bit; typed PRNG
keys (``jax.random.key``) are stored as their key data plus the name of their implementation.

When several processes share the arrays (``jax.process_count() > 1``), each process writes the
pieces it owns into a part file next to the checkpoint and process 0 writes the main file last
(`checkpoint_sharded`); `pax.load` reassembles them into ``like``'s shardings
(`checkpoint_assemble`), on any number of processes and devices.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, NamedTuple, TypeVar, overload

import jax
import numpy as np

from pax._src import checkpoint_sharded
from pax._src.checkpoint_assemble import load_parts
from pax._src.checkpoint_check import (
    FORMAT,
    METADATA_KEY,
    VERSION,
    compare,
    expected_leaves,
    read_metadata,
)
from pax._src.checkpoint_codec import decode_leaf, encode_leaf, place, stored_spec
from pax._src.checkpoint_io import Reader, atomic_write
from pax._src.core import tracing
from pax._src.core.registry import is_module
from pax._src.core.sharing import _find
from pax._src.errors import CheckpointError

T = TypeVar("T")
PathLike = str | os.PathLike


class LoadReport(NamedTuple):
    """What ``pax.load(..., strict=False)`` left out.

    Attributes:
      missing: key paths of ``like`` absent from the checkpoint (they keep ``like``'s value).
      unexpected: key paths of the checkpoint absent from ``like`` (they are ignored).
    """

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


# --- writing -----------------------------------------------------------------------------------


def save(path: PathLike, tree: Any) -> None:
    """Saves the arrays of a module, an optimizer, or any pytree of them to ``path``.

    The file is written atomically: to a temporary file in the same directory, flushed and
    fsynced, then renamed over ``path``. If anything fails midway, the previous file at ``path``
    is left untouched; an existing file keeps its permission bits, a read-only one is not
    replaced. Temporaries left by a killed save to the same path are removed (see README).
    Leaves that are None (e.g. in ``model.parameters()``) are not stored. Only arrays (and
    their weak types) are stored; the structure and static attributes come from ``like``.

    Across processes (``jax.process_count() > 1``, e.g. parameters sharded over the devices of
    several hosts), every process must call ``pax.save`` with the same tree and a path in a
    directory all processes share. Each process writes the shards it owns (those with
    ``replica_id == 0``, so replicated data is written once) to its own part file,
    ``{path}.{save id}.part{i}-of-{n}``; leaves that do not span processes (numpy arrays,
    scalars, arrays on one process's devices) are taken from process 0. Process 0 then writes
    ``path`` atomically, listing the parts with their sizes and SHA-256 digests: the checkpoint
    is complete once ``path`` is replaced, and a save killed before that leaves the previous
    checkpoint and its parts as they were. Parts of older saves are removed afterwards.

    Args:
      path: where to write; the name is used as given (``.npz`` is a good extension).
      tree: a pytree whose leaves are arrays, e.g. ``model`` or ``(model, optimizer)``.

    Raises:
      CheckpointError: if a leaf is not an array of a storable dtype (or is a tracer, inside
        ``jax.jit``), or a module is reachable twice in ``tree`` (both key paths are named);
        across processes, if process 0 does not see another process's part file (the
        directory is not shared) or another process failed to write its part.
      PermissionError: if ``path`` is an existing read-only file.
      OSError: any other error of the file system, naming ``path``.

    Example:
      >>> import os, tempfile, pax
      >>> net = pax.nn.Linear(2, 3)
      >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
      >>> pax.save(path, net)
      >>> restored = pax.load(path, pax.nn.Linear(2, 3))
      >>> bool((restored.weight == net.weight).all())
      True
    """
    path = os.fspath(path)
    tracing.check_pending()  # a module changed in a transformation and not returned: refuse
    _refuse_shared_modules(tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named: dict[str, Any] = {}
    for key_path, leaf in leaves:
        where = jax.tree_util.keystr(key_path)
        if where in named or where == METADATA_KEY:
            raise CheckpointError(
                f"pax.save: two leaves have the same key path {where!r}; the checkpoint could "
                f"not tell them apart. Fix: give the containers distinct keys."
            )
        named[where] = leaf
    head = {"format": FORMAT, "version": VERSION, "root": type(tree).__name__}
    head["treedef"] = str(treedef)
    if jax.process_count() > 1:  # each process writes the pieces it owns; see checkpoint_sharded
        checkpoint_sharded.save_parts(path, head, named)
        return
    entries: dict[str, np.ndarray] = {}
    records: list[dict] = []
    for where, leaf in named.items():
        entries[where], record = encode_leaf(where or "the root", leaf)
        records.append({"path": where, **record})
    metadata = {**head, "leaves": records}
    blob = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, {METADATA_KEY: blob, **entries})
    checkpoint_sharded.remove_old_parts(path, keep=None)  # of an earlier multi-process save


def _refuse_shared_modules(tree: Any) -> None:
    shared = [(first, second, obj) for first, second, obj in _find(tree) if is_module(obj)]
    if shared:
        root = type(tree).__name__ if is_module(tree) else "tree"
        lines = "\n".join(
            f"  {root}{second} is the same {type(obj).__name__} module as {root}{first}"
            for first, second, obj in shared
        )
        raise CheckpointError(
            f"pax.save: {len(shared)} module(s) reachable twice in the saved {root}:\n{lines}\n"
            f"The checkpoint would store two copies and load them as two independent modules. "
            f"Fix: keep one reference to each module (pax.check(tree) finds them), or save "
            f"explicitly tied weights once."
        )


# --- reading -----------------------------------------------------------------------------------


def _read_leaf(reader: Reader, record: dict) -> Any:
    """Reads and decodes one leaf, refusing a member whose header is not what `record` says."""
    where = record["path"]
    expected = stored_spec(record)

    def leaf_limit(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        if expected is None or not expected(shape, dtype):
            return f"but the metadata says {record['dtype']}{record['shape']}"
        return None

    return decode_leaf(reader.path, where or "the root", reader.read(where, leaf_limit), record)


@overload
def load(path: PathLike, like: T, *, strict: Literal[True] = ...) -> T: ...


@overload
def load(path: PathLike, like: T, *, strict: Literal[False]) -> tuple[T, LoadReport]: ...


def load(path: PathLike, like: T, *, strict: bool = True) -> T | tuple[T, LoadReport]:
    """Loads a checkpoint written by `pax.save` into a tree shaped like ``like``.

    The metadata (format, every key path, shape and dtype) is checked against ``like``, then
    every leaf to load is read with its checksum verified, each after its declared size was
    checked, before anything is built: a failure never yields a half-loaded model. ``like`` is
    not modified: the result is a new tree with ``like``'s structure and static attributes and
    the checkpoint's arrays (bit-identical, with their saved weak types), placed like ``like``'s
    leaves (same sharding and commitment for jax arrays, numpy with ``like``'s byte order for
    numpy). ``like``'s leaves may be arrays or ``jax.ShapeDtypeStruct``; its None leaves (e.g.
    from ``model.parameters()``) stay None.

    A checkpoint saved by several processes loads on any number of processes and devices:
    every part file is checked first (present, of the recorded size and SHA-256, its pieces
    tiling each leaf exactly), then each process reads only the slices its devices hold in
    ``like``'s sharding (``like``'s arrays may span processes). Every process must see the
    checkpoint's directory with its part files.

    Args:
      path: a file written by `pax.save`.
      like: a tree with the structure to load into, e.g. a freshly built model.
      strict: if True (default), the key paths of the checkpoint and of ``like`` must be the
        same. If False, only their intersection is loaded (the fine-tuning case: leaves missing
        from the file keep ``like``'s value, extra leaves in the file are ignored).

    Returns:
      The loaded tree if ``strict`` is True; ``(tree, LoadReport(missing, unexpected))`` if
      ``strict`` is False.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      CheckpointError: if the file is truncated, corrupted, declares sizes it does not hold,
        is not a regular file or not a pax checkpoint; or if a part file of a multi-process
        checkpoint is missing (the file and the fix are named), corrupted or from another save.
      CheckpointMismatchError: for missing or unexpected keys (only when ``strict``), shape
        or dtype mismatches (always), or no common key at all (even if not ``strict``); its
        ``missing``, ``unexpected`` and ``mismatched`` attributes hold every key path.

    Example:
      >>> import os, tempfile, jax.numpy as jnp, pax
      >>> path = os.path.join(tempfile.mkdtemp(), "net.npz")
      >>> pax.save(path, pax.nn.Sequential(pax.nn.Linear(2, 3)))
      >>> bigger = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
      >>> net, report = pax.load(path, bigger, strict=False)
      >>> report.missing
      ('.modules[1].weight', '.modules[1].bias')
    """
    path = os.fspath(path)
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = expected_leaves(like_leaves)
    with Reader(path) as reader:
        metadata = read_metadata(reader, len(expected))
        missing, unexpected = compare(path, metadata, like, expected, strict)
        records = {r["path"]: r for r in metadata["leaves"]}
        if "parts" in metadata:  # written by several processes: the arrays are in part files
            leaves = load_parts(path, metadata, expected)
        else:
            # Only the leaves `like` asks for are read, each after its header was checked.
            values = {
                where: _read_leaf(reader, records[where]) for where in expected if where in records
            }
    if "parts" not in metadata:
        leaves = [
            place(values[where], leaf, records[where].get("weak_type") is True)
            if where in values
            else leaf
            for where, leaf in expected.items()
        ]
    tree = jax.tree_util.tree_unflatten(treedef, leaves)
    if strict:
        return tree
    return tree, LoadReport(tuple(missing), tuple(unexpected))
