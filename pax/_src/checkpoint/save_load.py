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
(`sharded`); `pax.load` reassembles them into ``like``'s shardings
(`assemble`), on any number of processes and devices.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, TypeVar, overload

import jax
import numpy as np

from pax._src.checkpoint import sharded
from pax._src.checkpoint.assemble import load_parts
from pax._src.checkpoint.check import (
    FORMAT,
    METADATA_KEY,
    VERSION,
    compare,
    expected_leaves,
    read_metadata,
)
from pax._src.checkpoint.codec import decode_leaf, encode_leaf, place, stored_spec
from pax._src.checkpoint.io import Reader, atomic_write, resolve_link
from pax._src.checkpoint.matching import LoadReport
from pax._src.core import tracing
from pax._src.core.pytree import read_layout
from pax._src.core.registry import LEAF_KINDS, MODULE_KINDS, is_module
from pax._src.core.sharing import _find
from pax._src.describe import listing
from pax._src.errors import CheckpointError

T = TypeVar("T")
PathLike = str | os.PathLike
_MAX_LISTED = 20


# --- writing -----------------------------------------------------------------------------------


def save(path: PathLike, tree: Any) -> None:
    """Saves the arrays of a module, an optimizer, or any pytree of them to ``path``.

    The file is written atomically: to a temporary file in the same directory, flushed and
    fsynced, then renamed over ``path``. If anything fails midway, the previous file at ``path``
    is left untouched; an existing file keeps its permission bits, a read-only one is not
    replaced. A symbolic link at ``path`` is written through: its target gets the new file and
    the link stays. Temporaries left by killed saves in that directory are removed (only
    pax's own, and only those of processes that are gone; see `io`). Only arrays
    (and their weak types) are stored; the structure and static attributes come from ``like``.
    A view such as ``model.parameters()``, whose other arrays are None, is refused: save the
    model itself.

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
      TypeError: if ``path`` is not a str or os.PathLike (e.g. the arguments are swapped), or
        ``tree`` is None.
      CheckpointError: if a leaf is not an array of a storable dtype (or is a tracer, inside
        ``jax.jit``), a module is reachable twice in ``tree`` (both key paths are named), or
        ``tree`` holds None where a module registered an array (a ``model.parameters()`` or
        ``model.states()`` view; the key paths are named); across processes, if process 0
        does not see another process's part file (the directory is not shared) or another
        process failed to write its part.
      IsADirectoryError: if ``path`` is a directory (a `CheckpointError` too).
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
    path = _path_argument("pax.save", path, "pax.save(path, model)")
    if tree is None:
        raise TypeError(
            "pax.save: tree is None, so there is nothing to save. Fix: pass the module, "
            "optimizer or pytree of arrays to save: pax.save(path, model) or "
            "pax.save(path, (model, optimizer))."
        )
    tracing.check_pending()  # a module changed in a transformation and not returned: refuse
    _refuse_shared_modules(tree)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    _refuse_views(tree, len(leaves))
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
    if jax.process_count() > 1:  # each process writes the pieces it owns; see sharded.py
        sharded.save_parts(resolve_link(path), head, named)  # parts by the target
        return
    entries: dict[str, np.ndarray] = {}
    records: list[dict] = []
    for where, leaf in named.items():
        entries[where], record = encode_leaf(where or "the root", leaf)
        records.append({"path": where, **record})
    metadata = {**head, "leaves": records}
    blob = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, {METADATA_KEY: blob, **entries})
    sharded.remove_old_parts(resolve_link(path), keep=None)  # of a multi-process save


def _path_argument(fn: str, path: Any, example: str) -> str:
    """`path` as a str; a TypeError naming the call for anything else (e.g. swapped arguments)."""
    if isinstance(path, bytes):
        return os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{fn}: path must be a str or os.PathLike (the checkpoint file), got "
            f"{type(path).__name__}. Fix: the path comes first: {example}."
        )
    return os.fsdecode(os.fspath(path))


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


def _emptied(tree: Any, arrays: int) -> list[str]:
    """Key paths where a module of `tree` registered arrays but holds None (a view).

    A parameter, state or frozen parameter holding None is one: registering it required an
    array. A subtree's leaves may be None by design, so a subtree is one only if all its leaves
    are None (or exactly those frozen one by one, or exactly the others) and something else
    shows that `tree` is a view: a parameter, state or frozen parameter holding None, or no
    array left at all (`arrays`).
    """
    leaves: list[str] = []
    subtrees: list[str] = []

    def visit(module: Any, prefix: str) -> None:
        layout = read_layout(module)
        for name, kind in zip(layout.children, layout.kinds):
            value, where = module.__dict__.get(name), f"{prefix}.{name}"
            if kind in MODULE_KINDS:
                walk(value, where)
            elif kind in LEAF_KINDS:
                if value is None:
                    leaves.append(where)
            else:
                pairs = jax.tree_util.tree_flatten_with_path(value, is_leaf=_is_none)[0]
                nones = {jax.tree_util.keystr(p) for p, leaf in pairs if leaf is None}
                every = {jax.tree_util.keystr(p) for p, _ in pairs}
                frozen = layout.frozen_in.get(name, frozenset())
                if nones and frozen and nones in (frozen, every - frozen):
                    leaves.extend(where + n for n in sorted(nones))  # a view's partial freeze
                elif nones and nones == every:
                    subtrees.extend(where + n for n in sorted(nones))

    def walk(node: Any, prefix: str) -> None:
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(node, is_leaf=is_module)[0]:
            if is_module(leaf):
                visit(leaf, prefix + jax.tree_util.keystr(key_path))

    walk(tree, "")
    if leaves or (subtrees and not arrays):
        return leaves + subtrees
    return []


def _is_none(x: Any) -> bool:
    return x is None


def _refuse_views(tree: Any, arrays: int) -> None:
    found = _emptied(tree, arrays)
    if found:
        root = type(tree).__name__ if is_module(tree) else "tree"
        lines = "\n".join(f"  {root}{where}" for where in listing(found, _MAX_LISTED))
        raise CheckpointError(
            f"pax.save: the saved {root} holds None where its modules registered arrays, at "
            f"{len(found)} key path(s):\n{lines}\nIt is a view such as model.parameters() or "
            f"model.states(): those arrays (e.g. BatchNorm statistics, frozen weights) would "
            f"be missing from the checkpoint. Fix: save the module itself: pax.save(path, "
            f"model), and load it with pax.load(path, model)."
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

    The file is opened once and read from that one descriptor, so a load concurrent with a
    save to the same path (which replaces the file atomically) reads the complete old file or
    the complete new one. A symbolic link is followed (a multi-process checkpoint's part files
    are looked up next to its target).

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
      TypeError: if ``path`` is not a str or os.PathLike (e.g. the arguments are swapped),
        ``like`` is None, or ``strict`` is not a bool.
      FileNotFoundError: if ``path`` does not exist.
      IsADirectoryError: if ``path`` is a directory (a `CheckpointError` too).
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
    path = _path_argument("pax.load", path, "pax.load(path, like)")
    if like is None:
        raise TypeError(
            "pax.load: like is None; it must be the tree to load into, built like the saved "
            "one. Fix: pax.load(path, pax.nn.Linear(2, 3)) for a saved Linear(2, 3), or "
            "pax.load(path, (model, optimizer)) for pax.save(path, (model, optimizer))."
        )
    if not isinstance(strict, (bool, np.bool_)):
        raise TypeError(
            f"pax.load: strict must be True or False, got {strict!r}. Fix: "
            f"pax.load(path, like) or pax.load(path, like, strict=False)."
        )
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected = expected_leaves(like_leaves)
    target = resolve_link(path)  # once: a link retargeted meanwhile changes nothing
    with Reader(target, shown=path) as reader:
        metadata = read_metadata(reader, len(expected))
        missing, unexpected = compare(path, metadata, like, expected, strict)
        records = {r["path"]: r for r in metadata["leaves"]}
        if "parts" in metadata:  # written by several processes: the arrays are in part files
            leaves = load_parts(target, metadata, expected)
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
