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

import contextlib
import io
import json
import os
import secrets
import zipfile
from typing import Any, Literal, NamedTuple, TypeVar, overload

import jax
import numpy as np

from pax._src.checkpoint_codec import decode_leaf, encode_leaf, is_key_array
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
    is left untouched. Leaves that are None (e.g. in ``model.parameters()``) are not stored.
    Only arrays are stored; the structure and static attributes come from the ``like`` tree
    given to `pax.load`.

    Args:
      path: where to write; the name is used as given (``.npz`` is a good extension).
      tree: a pytree whose leaves are arrays, e.g. ``model`` or ``(model, optimizer)``.

    Raises:
      CheckpointError: if a leaf is not an array (or is a tracer, inside ``jax.jit``).

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
    _atomic_write(path, {METADATA_KEY: blob, **entries})


def _write_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _atomic_write(path: str, entries: dict[str, np.ndarray]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in entries.items():
                    _write_array(archive, name, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # makes the rename durable; not possible everywhere
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- reading -----------------------------------------------------------------------------------


def _read_members(f: Any) -> dict[str, np.ndarray]:
    raw = {}
    with zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy") or info.filename[:-4] in raw:
                raise ValueError(f"unexpected zip member {info.filename!r}")
            data = archive.read(info)  # verifies the CRC-32 of the member
            array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
            raw[info.filename[: -len(".npy")]] = array
    return raw


def _read(path: str) -> tuple[dict, dict[str, Any]]:
    """Reads and verifies the whole checkpoint: (metadata, {key path: decoded value})."""
    with open(path, "rb") as f:  # missing file, permissions: the usual OSError
        try:
            raw = _read_members(f)
        except MemoryError:
            raise
        except Exception as err:  # anything a damaged zip or .npy header can raise
            raise CheckpointError(
                f"pax.load: {path} is truncated or corrupted ({type(err).__name__}: {err}). "
                f"Nothing was loaded."
            ) from None
    if METADATA_KEY not in raw:
        raise CheckpointError(
            f"pax.load: {path} is not a pax checkpoint: it has no {METADATA_KEY!r} entry. "
            f"pax.load reads files written by pax.save."
        )
    try:
        metadata = json.loads(raw.pop(METADATA_KEY).tobytes().decode("utf-8"))
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
    if not isinstance(records, list) or len(records) != len(raw):
        raise CheckpointError(
            f"pax.load: {path} is corrupted: the metadata lists "
            f"{len(records) if isinstance(records, list) else 'no'} leaves but the file holds "
            f"{len(raw)} arrays. Nothing was loaded."
        )
    values = {}
    for record in records:
        where = record.get("path") if isinstance(record, dict) else None
        if where not in raw or where in values:
            raise CheckpointError(
                f"pax.load: {path} is corrupted: the metadata entry {record!r} does not match "
                f"the stored arrays. Nothing was loaded."
            )
        values[where] = decode_leaf(path, where or "the root", raw[where], record)
    return metadata, values


def _like_spec(leaf: Any) -> tuple[tuple[int, ...], str]:
    if isinstance(leaf, (bool, int, float, complex)):
        array = np.asarray(leaf)
        return array.shape, array.dtype.name
    return tuple(leaf.shape), str(leaf.dtype)


def _place(value: Any, like: Any) -> Any:
    """`value` (numpy or key array) converted to the kind of leaf `like` is."""
    if isinstance(like, (bool, int, float, complex)):
        return type(like)(np.asarray(value).item())
    if isinstance(like, (np.ndarray, np.generic)) and not is_key_array(value):
        return value if isinstance(like, np.ndarray) else value[()]
    sharding = getattr(like, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.device_put(value, sharding)
    return jax.device_put(value)


def _listing(title: str, items: list[str]) -> str:
    return f"{title}:\n" + "\n".join(f"  {item}" for item in listing(items, _MAX_LISTED))


@overload
def load(path: PathLike, like: T, *, strict: Literal[True] = ...) -> T: ...


@overload
def load(path: PathLike, like: T, *, strict: Literal[False]) -> tuple[T, LoadReport]: ...


def load(path: PathLike, like: T, *, strict: bool = True) -> T | tuple[T, LoadReport]:
    """Loads a checkpoint written by `pax.save` into a tree shaped like ``like``.

    The whole file is read and verified (checksums, format, every key path, shape and dtype)
    before anything is built, so a failure never yields a half-loaded model. ``like`` is not
    modified: the result is a new tree with ``like``'s structure and static attributes and the
    checkpoint's arrays (bit-identical), placed like ``like``'s leaves (same sharding for jax
    arrays, numpy for numpy). ``like``'s leaves may be arrays or ``jax.ShapeDtypeStruct``; its
    None leaves (e.g. from ``model.parameters()``) stay None.

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
      CheckpointError: if the file is truncated, corrupted or not a pax checkpoint.
      CheckpointMismatchError: listing every missing key, unexpected key (both only when
        ``strict``), and every shape or dtype mismatch (always).

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
    metadata, values = _read(path)
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
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
    specs = {r["path"]: (tuple(r["shape"]), r["dtype"]) for r in metadata["leaves"]}
    missing = [k for k in expected if k not in values]
    unexpected = [k for k in values if k not in expected]
    mismatched = []
    for where, leaf in expected.items():
        if where in specs and _like_spec(leaf) != specs[where]:
            (shape, dtype), (like_shape, like_dtype) = specs[where], _like_spec(leaf)
            mismatched.append(
                f"{where or '<root>'}: checkpoint {dtype}{list(shape)}, "
                f"like {like_dtype}{list(like_shape)}"
            )
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(
            _mismatch_message(path, metadata, like, missing, unexpected, mismatched, strict)
        )
    leaves = [
        _place(values[where], leaf) if where in values else leaf for where, leaf in expected.items()
    ]
    tree = jax.tree_util.tree_unflatten(treedef, leaves)
    if strict:
        return tree
    return tree, LoadReport(tuple(missing), tuple(unexpected))


def _mismatch_message(
    path: str,
    metadata: dict,
    like: Any,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    strict: bool,
) -> str:
    saved_root, like_root = metadata.get("root"), type(like).__name__
    parts = [
        f"pax.load: {path} does not match `like` (saved: {saved_root}, like: {like_root}). "
        f"Nothing was loaded."
    ]
    if strict and missing:
        parts.append(_listing(f"{len(missing)} missing from the checkpoint", missing))
    if strict and unexpected:
        parts.append(_listing(f"{len(unexpected)} unexpected in the checkpoint", unexpected))
    if mismatched:
        parts.append(_listing(f"{len(mismatched)} with another shape or dtype", mismatched))
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
            "it (e.g. replace a layer, or cast with jax.tree_util.tree_map(lambda x: "
            "x.astype(jnp.bfloat16), model))"
        )
    parts.append("Fix: " + "; or ".join(fixes) + ".")
    return "\n".join(parts)
