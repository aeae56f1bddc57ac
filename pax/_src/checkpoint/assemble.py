"""Loading a checkpoint written by several processes: its part files, checked, then assembled.

Before any array is read, every part file listed by the main file is checked: present, of the
recorded size and SHA-256 digest, written by the same save, and its pieces must tile each leaf
exactly (inside the leaf, no overlap, nothing uncovered). Then, for each leaf ``like`` asks
for, this process reads only what its devices need: for a ``like`` leaf with a sharding (a
committed ``jax.Array`` or a ``jax.ShapeDtypeStruct`` with one), the slice of each of its
addressable devices, built with ``jax.make_array_from_callback``; otherwise the whole array,
placed as a one-process checkpoint's leaf is (`codec.place`). The layout of the
saving processes does not matter: a checkpoint saved by 2 processes loads on 1 or 8.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

import jax
import numpy as np

from pax._src.checkpoint.check import PART_NAME, read_json
from pax._src.checkpoint.codec import (
    decode_leaf,
    from_stored,
    is_key_array,
    place,
    stored_dtype,
    weak,
)
from pax._src.checkpoint.io import Reader
from pax._src.checkpoint.sharded import PART_FORMAT, bounds, file_digest
from pax._src.errors import CheckpointError

Bounds = tuple[tuple[int, int], ...]
_Piece = tuple[Reader, str, np.ndarray, np.ndarray]  # reader, member, start, stop


def load_parts(path: str, metadata: dict, expected: dict[str, Any]) -> list[Any]:
    """The leaves of ``like`` (by key path in ``expected``), with the checkpoint's values."""
    records = {r["path"]: r for r in metadata["leaves"]}
    wanted = [where for where in expected if where in records]
    readers: list[Reader] = []
    try:
        pieces: dict[str, list[_Piece]] = {where: [] for where in records}
        for part in metadata["parts"]:
            readers.append(_open_part(path, metadata, part))
            for where, member, start, stop in _part_pieces(path, readers[-1], metadata, records):
                pieces[where].append((readers[-1], member, start, stop))
        for where, record in records.items():
            _check_tiling(path, where, record, pieces[where])
        plans = {where: _plan(records[where], expected[where]) for where in wanted}
        for where in wanted:  # every check passed: read what this process needs
            plans[where]["regions"] = _read(path, where, records[where], pieces[where], plans)
    finally:
        for reader in readers:
            reader.close()
    return [
        _build(path, where, records[where], plans[where], leaf) if where in plans else leaf
        for where, leaf in expected.items()
    ]


def _missing_part(path: str, part_path: str, what: str) -> CheckpointError:
    match = PART_NAME.fullmatch(os.path.basename(part_path))
    process = f" (written by process {match['index']})" if match else ""
    return CheckpointError(
        f"pax.load: {path} was written by several processes and lists the part file "
        f"{part_path}{process}, which {what}. Every process must see the checkpoint's directory "
        f"with all its part files (a file system shared by all processes). Nothing was loaded. "
        f"Fix: copy the part files ({os.path.basename(path)}.*.part*) along with the "
        f"checkpoint, or load it from the shared directory it was saved to."
    )


def _open_part(path: str, metadata: dict, part: dict) -> Reader:
    part_path = os.path.join(os.path.dirname(os.path.abspath(path)), part["file"])
    try:
        size, digest = file_digest(part_path)
    except FileNotFoundError:
        raise _missing_part(path, part_path, "is missing") from None
    except IsADirectoryError:
        raise _missing_part(path, part_path, "is a directory") from None
    if size != part["bytes"] or not hmac.compare_digest(digest.hex(), part["sha256"]):
        raise CheckpointError(
            f"pax.load: the part file {part_path} of {path} is corrupted or was replaced: it "
            f"holds {size} bytes with SHA-256 {digest.hex()[:16]}..., but the checkpoint "
            f"records {part['bytes']} bytes with SHA-256 {part['sha256'][:16]}.... Nothing was "
            f"loaded. Fix: restore the part file from where the checkpoint was saved, or load "
            f"an earlier checkpoint."
        )
    return Reader(part_path)


def _part_pieces(
    path: str, reader: Reader, metadata: dict, records: dict[str, dict]
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """The checked list of pieces in an open part file."""
    document = read_json(reader, len(records))
    listed = document.get("pieces") if isinstance(document, dict) else None
    if (
        not isinstance(listed, list)
        or document.get("format") != PART_FORMAT
        or document.get("save") != metadata["save"]
        or len(listed) != len(reader.members) - 1
    ):
        raise CheckpointError(
            f"pax.load: the part file {reader.path} of {path} is corrupted: its metadata does "
            f"not describe its pieces of the save {metadata['save']}. Nothing was loaded."
        )
    found: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    members: set[str] = set()
    for piece in listed:
        where: Any = piece.get("path") if isinstance(piece, dict) else None
        record = records.get(where) if isinstance(where, str) else None
        member: Any = piece.get("member") if record is not None else None
        ok = member in reader.members and member not in members
        if ok and record is not None:
            shape = record["stored_shape"]
            start, stop = piece.get("start"), piece.get("stop")
            ok = all(
                isinstance(bound, list)
                and len(bound) == len(shape)
                and all(type(n) is int for n in bound)
                for bound in (start, stop)
            )
            ok = ok and all(0 <= a <= b <= n for a, b, n in zip(start, stop, shape))
        if not ok:
            raise CheckpointError(
                f"pax.load: the part file {reader.path} of {path} is corrupted: the piece "
                f"{piece!r} does not match the checkpoint's leaves. Nothing was loaded."
            )
        members.add(member)
        found.append((where, member, np.array(start, dtype=np.int64), np.array(stop, np.int64)))
    return found


def _check_tiling(path: str, where: str, record: dict, pieces: list[_Piece]) -> None:
    """The pieces of a leaf cover it exactly once."""
    shape = record["stored_shape"]
    total = sum(int(np.prod(stop - start, dtype=object)) for _, _, start, stop in pieces)
    overlap = False
    if len(pieces) > 1:
        starts = np.stack([start for _, _, start, _ in pieces])
        stops = np.stack([stop for _, _, _, stop in pieces])
        low = np.maximum(starts[:, None], starts[None, :])
        high = np.minimum(stops[:, None], stops[None, :])
        meets = (low < high).all(axis=-1)
        np.fill_diagonal(meets, False)
        overlap = bool(meets.any())
    if overlap or total != int(np.prod(shape, dtype=object)):
        raise CheckpointError(
            f"pax.load: {path} is corrupted: the pieces of {where or 'the root'} in its part "
            f"files {'overlap' if overlap else 'do not cover it'} (stored shape {shape}). "
            f"Nothing was loaded."
        )


def _target(like: Any) -> jax.sharding.Sharding | None:
    """The sharding a loaded leaf gets, or None to build the whole array and `place` it."""
    sharding = getattr(like, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding) or isinstance(like, np.ndarray):
        return None
    if isinstance(like, jax.Array) and not like.committed and sharding.is_fully_addressable:
        return None  # uncommitted: placed on the default device, as `place` does
    return sharding


def _plan(record: dict, like: Any) -> dict[str, Any]:
    """The regions of the stored array this process reads for a leaf, by device."""
    sharding = _target(like)
    stored = tuple(record["stored_shape"])
    if sharding is None:
        return {"sharding": None, "needed": {tuple((0, n) for n in stored)}}
    if record["encoding"] == "key" and not isinstance(
        sharding, (jax.sharding.NamedSharding, jax.sharding.SingleDeviceSharding)
    ):  # a key's data has one more axis, which only these shardings extend to: `place` it
        return {"sharding": None, "needed": {tuple((0, n) for n in stored)}}
    indices = sharding.addressable_devices_indices_map(tuple(record["shape"]))
    needed = {bounds(index, stored) for index in indices.values()}  # a key's data axes: whole
    return {"sharding": sharding, "needed": needed}


def _read(
    path: str, where: str, record: dict, pieces: list[_Piece], plans: dict[str, dict]
) -> dict[Bounds, np.ndarray]:
    """Each region this process needs of a leaf, copied from the pieces that overlap it."""
    dtype = stored_dtype(record)
    if dtype is None:
        raise CheckpointError(
            f"pax.load: {path} is corrupted: the leaf {where or 'the root'} has an unknown "
            f"encoding or dtype ({record.get('encoding')!r}, {record['dtype']!r}). Nothing was "
            f"loaded."
        )
    cache: dict[tuple[int, str], np.ndarray] = {}
    regions = {}
    for region in plans[where]["needed"]:
        low = np.array([a for a, _ in region], dtype=np.int64)
        high = np.array([b for _, b in region], dtype=np.int64)
        out = np.empty(tuple(high - low), dtype=dtype)
        for reader, member, start, stop in pieces:
            top, bottom = np.maximum(low, start), np.minimum(high, stop)
            if not (top < bottom).all():
                continue
            key = (id(reader), member)
            if key not in cache:
                cache[key] = _read_piece(reader, member, tuple(stop - start), dtype)
            source = tuple(slice(a, b) for a, b in zip(top - start, bottom - start))
            target = tuple(slice(a, b) for a, b in zip(top - low, bottom - low))
            out[target] = cache[key][source]
        regions[region] = out
    return regions


def _read_piece(reader: Reader, member: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    def limit(found: tuple[int, ...], found_dtype: np.dtype) -> str | None:
        if found != shape or found_dtype.newbyteorder("=") != dtype:
            return f"but its metadata says {dtype.name}{list(shape)}"
        return None

    return reader.read(member, limit)


def _build(path: str, where: str, record: dict, plan: dict, like: Any) -> Any:
    regions, sharding = plan["regions"], plan["sharding"]
    weak_type = record.get("weak_type") is True
    if sharding is None:
        (whole,) = regions.values()
        value = decode_leaf(path, where or "the root", whole, record)
        return place(value, like, weak_type)
    stored = tuple(record["stored_shape"])
    value = jax.make_array_from_callback(
        stored, sharding, lambda index: from_stored(regions[bounds(index, stored)], record)
    )
    if record["encoding"] == "key":
        value = jax.random.wrap_key_data(value, impl=record["impl"])
    return weak(value) if weak_type and not is_key_array(value) else value
