"""Checkpoints: `pax.save` / `pax.load`, atomic, pickle-free and checked before loading.

A checkpoint is a ``.npz`` file (a zip of ``.npy`` arrays, readable with
``numpy.load(path, allow_pickle=False)``) holding one array per leaf, named by the leaf's key
path (``jax.tree_util.keystr``, e.g. ``.layers[0].weight``), plus one metadata entry: a JSON
document (stored as a uint8 array) with a format marker and version, the treedef of the saved
tree, and the shape and dtype of every leaf. Dtypes numpy cannot store (bfloat16, float8, int4,
...) are stored as their raw bits (an unsigned integer view) and restored bit for bit; typed PRNG
keys (``jax.random.key``) are stored as their key data plus the name of their implementation.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, NamedTuple, TypeVar, overload

import jax
import numpy as np

from pax._src.checkpoint_codec import decode_leaf, encode_leaf, place, stored_spec
from pax._src.checkpoint_io import Reader, atomic_write
from pax._src.core import tracing
from pax._src.core.registry import is_module
from pax._src.core.sharing import _find
from pax._src.describe import listing
from pax._src.errors import CheckpointError, CheckpointMismatchError

T = TypeVar("T")
PathLike = str | os.PathLike

FORMAT = "pax-checkpoint"
VERSION = 1
METADATA_KEY = "__pax_checkpoint__"
_MAX_LISTED = 20


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

    Args:
      path: where to write; the name is used as given (``.npz`` is a good extension).
      tree: a pytree whose leaves are arrays, e.g. ``model`` or ``(model, optimizer)``.

    Raises:
      CheckpointError: if a leaf is not an array of a storable dtype (or is a tracer, inside
        ``jax.jit``), or a module is reachable twice in ``tree`` (both key paths are named).
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
    entries: dict[str, np.ndarray] = {}
    records: list[dict] = []
    for key_path, leaf in leaves:
        where = jax.tree_util.keystr(key_path)
        if where in entries or where == METADATA_KEY:
            raise CheckpointError(
                f"pax.save: two leaves have the same key path {where!r}; the checkpoint could "
                f"not tell them apart. Fix: give the containers distinct keys."
            )
        entries[where], record = encode_leaf(where or "the root", leaf)
        records.append({"path": where, **record})
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "root": type(tree).__name__,
        "treedef": str(treedef),
        "leaves": records,
    }
    blob = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, {METADATA_KEY: blob, **entries})


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


def _read_metadata(reader: Reader, like_leaves: int) -> dict:
    """The checked metadata of an open checkpoint; array members are not read."""
    path = reader.path
    if METADATA_KEY not in reader.members:
        raise CheckpointError(
            f"pax.load: {path} is not a pax checkpoint: it has no {METADATA_KEY!r} entry. "
            f"pax.load reads files written by pax.save."
        )
    limit = _METADATA_BYTES + 4096 * like_leaves

    def metadata_limit(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > limit:
            return f"but the metadata is a uint8 vector of at most {limit} bytes"
        return None

    blob = reader.read(METADATA_KEY, metadata_limit)
    try:
        metadata = json.loads(blob.tobytes().decode("utf-8"))
    except ValueError as err:
        raise CheckpointError(
            f"pax.load: {path} is corrupted: its metadata is not valid JSON ({err}). Nothing "
            f"was loaded."
        ) from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"pax.load: {path} is not a pax checkpoint (no format marker).")
    version = metadata.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"pax.load: {path} has checkpoint format version {version!r}, but this pax reads "
            f"versions up to {VERSION}. Fix: upgrade pax."
        )
    records = metadata.get("leaves")
    arrays = len(reader.members) - 1
    if not isinstance(records, list) or len(records) != arrays:
        raise CheckpointError(
            f"pax.load: {path} is corrupted: the metadata lists "
            f"{len(records) if isinstance(records, list) else 'no'} leaves but the file holds "
            f"{arrays} arrays. Nothing was loaded."
        )
    seen: set[str] = set()
    for record in records:
        where = record.get("path") if isinstance(record, dict) else None
        if not _valid_record(record) or where not in reader.members or where in seen:
            raise CheckpointError(
                f"pax.load: {path} is corrupted: the metadata entry {record!r} does not match "
                f"the stored arrays. Nothing was loaded."
            )
        seen.add(where)
    return metadata


_METADATA_BYTES = 1 << 24


def _valid_record(record: Any) -> bool:
    shape = record.get("shape") if isinstance(record, dict) else None
    return (
        isinstance(record, dict)
        and isinstance(record.get("path"), str)
        and isinstance(record.get("dtype"), str)
        and isinstance(shape, list)
        and all(type(n) is int and n >= 0 for n in shape)
    )


def _read_leaf(reader: Reader, record: dict) -> Any:
    """Reads and decodes one leaf, refusing a member whose header is not what `record` says."""
    where = record["path"]
    expected = stored_spec(record)

    def leaf_limit(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        if expected is None or not expected(shape, dtype):
            return f"but the metadata says {record['dtype']}{record['shape']}"
        return None

    return decode_leaf(reader.path, where or "the root", reader.read(where, leaf_limit), record)


def _dtype_name(dtype: Any) -> str:
    return dtype.name if isinstance(dtype, np.dtype) else str(dtype)  # '>f4' is float32


def _like_spec(leaf: Any) -> tuple[tuple[int, ...], str]:
    if isinstance(leaf, (bool, int, float, complex)):
        array = np.asarray(leaf)
        return array.shape, array.dtype.name
    return tuple(leaf.shape), _dtype_name(leaf.dtype)


def _listing(title: str, items: list[str]) -> str:
    return f"{title}:\n" + "\n".join(f"  {item}" for item in listing(items, _MAX_LISTED))


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
        is not a regular file or not a pax checkpoint.
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
    expected = _expected_leaves(like_leaves)
    with Reader(path) as reader:
        metadata = _read_metadata(reader, len(expected))
        records = {r["path"]: r for r in metadata["leaves"]}
        missing = [k for k in expected if k not in records]
        unexpected = [k for k in records if k not in expected]
        mismatched, details = [], []
        for where, leaf in expected.items():
            saved = (
                (tuple(records[where]["shape"]), records[where]["dtype"])
                if where in records
                else None
            )
            if saved is not None and _like_spec(leaf) != saved:
                (shape, dtype), (like_shape, like_dtype) = saved, _like_spec(leaf)
                mismatched.append(where)
                details.append(
                    f"{where or '<root>'}: checkpoint {dtype}{list(shape)}, "
                    f"like {like_dtype}{list(like_shape)}"
                )
        nothing = bool(expected or records) and len(missing) == len(expected)
        if mismatched or nothing or (strict and (missing or unexpected)):
            message = _mismatch_message(
                path, metadata, like, (missing, unexpected, details), strict, nothing
            )
            raise CheckpointMismatchError(
                message,
                missing=tuple(missing),
                unexpected=tuple(unexpected),
                mismatched=tuple(mismatched),
            )
        # Only the leaves `like` asks for are read, each after its header was checked.
        values = {
            where: _read_leaf(reader, records[where]) for where in expected if where in records
        }
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


def _expected_leaves(like_leaves: list) -> dict[str, Any]:
    expected: dict[str, Any] = {}
    for key_path, leaf in like_leaves:
        if isinstance(leaf, jax.core.Tracer):
            raise CheckpointError(
                "pax.load: `like` holds JAX tracers: load was called inside a transformed "
                "function (jax.jit, jax.grad, ...). Fix: load outside it and pass the loaded "
                "model in as an argument."
            )
        where = jax.tree_util.keystr(key_path)
        if not isinstance(leaf, (bool, int, float, complex)) and not (
            hasattr(leaf, "shape") and hasattr(leaf, "dtype")
        ):
            raise CheckpointError(
                f"pax.load: the leaf of `like` at {where or 'the root'} is a "
                f"{type(leaf).__name__}, not an array; `like` must have the structure of the "
                f"saved tree, with arrays (or jax.ShapeDtypeStruct) as leaves."
            )
        expected[where] = leaf
    return expected


def _mismatch_message(
    path: str,
    metadata: dict,
    like: Any,
    lists: tuple[list[str], list[str], list[str]],
    strict: bool,
    nothing: bool,
) -> str:
    missing, unexpected, mismatched = lists
    saved_root, like_root = metadata.get("root", "unknown"), type(like).__name__
    roots = f"(saved: {saved_root}, like: {like_root})"
    if nothing and not strict:
        head = f"pax.load: no key path of the checkpoint is in `like` {roots}, so nothing "
        head += f"would be loaded; {path} was not loaded."
    else:
        head = f"pax.load: {path} does not match `like` {roots}. Nothing was loaded."
    parts = [head]
    if strict or nothing:
        if missing:
            parts.append(_listing(f"{len(missing)} missing from the checkpoint", missing))
        if unexpected:
            parts.append(_listing(f"{len(unexpected)} unexpected in the checkpoint", unexpected))
    if mismatched:
        parts.append(_listing(f"{len(mismatched)} with another shape or dtype", mismatched))
    if max(len(missing), len(unexpected), len(mismatched)) > _MAX_LISTED:
        parts.append(
            "Every key path is in the error's attributes: error.missing, error.unexpected, "
            "error.mismatched."
        )
    fixes = []
    if saved_root != like_root:
        fixes.append(
            f"pass a `like` with the structure of the saved {saved_root}, e.g. "
            f"pax.load(path, (model, optimizer)) for pax.save(path, (model, optimizer))"
        )
    if strict and (missing or unexpected):
        fixes.append(
            "to load only the common leaves (fine-tuning), call "
            "pax.load(path, like, strict=False), which also returns the missing/unexpected keys"
        )
    if mismatched:
        fixes.append(
            "build `like` with the same sizes and dtypes as the saved model, load, then change "
            "it (e.g. replace a layer, or cast it with model.astype(jnp.bfloat16), which "
            "casts the floating-point leaves and keeps integer counters and RNG keys)"
        )
    if not fixes:
        fixes.append("pass a `like` built like the saved tree")
    parts.append("Fix: " + "; or ".join(fixes) + ".")
    return "\n".join(parts)
