"""Checks of a checkpoint's metadata, and of the metadata against the ``like`` tree of a load.

Every check here runs before any array of the checkpoint is read, so a failure never yields a
half-loaded tree. The key paths of the checkpoint and of ``like`` are paired by `matching`, the
routine every loader shares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from pax._src.checkpoint.io import Reader
from pax._src.checkpoint.matching import match_names, settle, spec
from pax._src.errors import CheckpointError

FORMAT = "pax-checkpoint"
VERSION = 1
METADATA_KEY = "__pax_checkpoint__"
_METADATA_BYTES = 1 << 24
# A part file of a multi-process checkpoint is named `{checkpoint}.{save id}.part{i}-of-{n}`.
PART_NAME = re.compile(r"(?P<base>.+)\.(?P<save>[0-9a-f]{12})\.part(?P<index>[0-9]+)-of-[0-9]+")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def metadata_limit(leaves: int) -> Callable[[tuple[int, ...], np.dtype], str | None]:
    """The check `Reader.read` applies to a metadata member before reading it."""
    limit = _METADATA_BYTES + 4096 * leaves

    def check(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > limit:
            return f"but the metadata is a uint8 vector of at most {limit} bytes"
        return None

    return check


def read_json(reader: Reader, leaves: int) -> Any:
    """The JSON document in the metadata member of an open checkpoint or part file."""
    blob = reader.read(METADATA_KEY, metadata_limit(leaves))
    try:
        return json.loads(blob.tobytes().decode("utf-8"))
    except ValueError as err:
        raise CheckpointError(
            f"pax.load: {reader.path} is corrupted: its metadata is not valid JSON ({err}). "
            f"Nothing was loaded."
        ) from None


def read_metadata(reader: Reader, like_leaves: int) -> dict:
    """The checked metadata of an open checkpoint; array members are not read.

    A multi-process checkpoint's main file holds no arrays but a ``parts`` list (its part
    files, checked when they are opened) and a ``stored_shape`` per leaf.
    """
    path = reader.path
    if METADATA_KEY not in reader.members:
        raise CheckpointError(
            f"pax.load: {path} is not a pax checkpoint: it has no {METADATA_KEY!r} entry. "
            f"pax.load reads files written by pax.save."
        )
    metadata = read_json(reader, like_leaves)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CheckpointError(f"pax.load: {path} is not a pax checkpoint (no format marker).")
    version = metadata.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"pax.load: {path} has checkpoint format version {version!r}, but this pax reads "
            f"versions up to {VERSION}. Fix: upgrade pax."
        )
    records = metadata.get("leaves")
    sharded = "parts" in metadata
    arrays = len(reader.members) - 1
    if not isinstance(records, list) or (arrays if sharded else len(records) - arrays):
        raise CheckpointError(
            f"pax.load: {path} is corrupted: the metadata lists "
            f"{len(records) if isinstance(records, list) else 'no'} leaves but the file holds "
            f"{arrays} arrays. Nothing was loaded."
        )
    seen: set[str] = set()
    for record in records:
        where: Any = record.get("path") if isinstance(record, dict) else None
        stored = (where in reader.members) if not sharded else _valid_stored_shape(record)
        if not valid_record(record) or not stored or where in seen:
            raise CheckpointError(
                f"pax.load: {path} is corrupted: the metadata entry {record!r} does not match "
                f"the stored arrays. Nothing was loaded."
            )
        seen.add(where)
    if sharded and not _valid_parts(metadata):
        raise CheckpointError(
            f"pax.load: {path} is corrupted: its list of part files is malformed. Nothing was "
            f"loaded."
        )
    return metadata


def _shape(value: Any) -> bool:
    return isinstance(value, list) and all(type(n) is int and n >= 0 for n in value)


def valid_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("path"), str)
        and isinstance(record.get("dtype"), str)
        and _shape(record.get("shape"))
    )


def _valid_stored_shape(record: Any) -> bool:
    """A leaf's stored shape is its shape (plus a key's trailing data axes)."""
    stored: Any = record.get("stored_shape") if isinstance(record, dict) else None
    if not valid_record(record) or not _shape(stored):
        return False
    shape = record["shape"]
    if record.get("encoding") == "key":
        return stored[: len(shape)] == shape and len(stored) == len(shape) + 1
    return stored == shape


def _valid_parts(metadata: dict) -> bool:
    parts, save = metadata.get("parts"), metadata.get("save")
    if not isinstance(parts, list) or not isinstance(save, str):
        return False
    names = set()
    for part in parts:
        if not isinstance(part, dict):
            return False
        name: Any = part.get("file")
        match = PART_NAME.fullmatch(name) if isinstance(name, str) else None
        if match is None or "/" in name or "\\" in name or match["save"] != save:
            return False
        if type(part.get("bytes")) is not int or not isinstance(part.get("sha256"), str):
            return False
        if not _HEX64.fullmatch(part["sha256"]) or name in names:
            return False
        names.add(name)
    return True


# --- the metadata against `like` --------------------------------------------------------------


def expected_leaves(like_leaves: list) -> dict[str, Any]:
    """``like``'s leaves by key path, after refusing tracers and leaves that are not arrays."""
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


def _like_spec(leaf: Any) -> str:
    return spec(np.asarray(leaf) if isinstance(leaf, (bool, int, float, complex)) else leaf)


def compare(
    path: str, metadata: dict, like: Any, expected: dict[str, Any], strict: bool
) -> tuple[list[str], list[str]]:
    """The key paths missing from and unexpected in the checkpoint; raises on a mismatch."""
    records = {r["path"]: r for r in metadata["leaves"]}
    matched = match_names(expected, records, fn="pax.load")
    mismatched = {}
    for where in matched.pairs:
        saved = f"{records[where]['dtype']}{list(records[where]['shape'])}"
        if _like_spec(expected[where]) != saved:
            mismatched[where] = (
                f"{where or '<root>'}: checkpoint {saved}, like {_like_spec(expected[where])}"
            )
    saved_root, like_root = metadata.get("root", "unknown"), type(like).__name__
    fixes = []
    if saved_root != like_root:
        fixes.append(
            f"pass a `like` with the structure of the saved {saved_root}, e.g. "
            f"pax.load(path, (model, optimizer)) for pax.save(path, (model, optimizer))"
        )
    if mismatched:
        fixes.append(
            "build `like` with the same sizes and dtypes as the saved model, load, then change "
            "it (e.g. replace a layer, or cast it with model.astype(jnp.bfloat16), which "
            "casts the floating-point leaves and keeps integer counters and RNG keys)"
        )
    if not fixes and not strict:
        fixes.append("pass a `like` built like the saved tree")
    report = settle(
        matched,
        mismatched,
        strict=strict,
        fn="pax.load",
        source="the checkpoint",
        subject=path,
        target="`like`",
        context=f" (saved: {saved_root}, like: {like_root})",
        fixes=fixes,
        non_strict="pax.load(path, like, strict=False)",
    )
    return list(report.missing), list(report.unexpected)
