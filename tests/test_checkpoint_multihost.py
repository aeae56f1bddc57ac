"""Checkpoints of arrays that span processes: part files, their checks, and loads anywhere.

The slow tests start 2 processes of 4 CPU devices each (``jax.distributed`` with gloo
collectives, see tests/_multihost_checkpoint_worker.py); the others run the same format in this
process (8 devices), through a one-process `checkpoint_sharded.Group`.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _multihost_checkpoint_model import build, check_loaded, shard, spec_of
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import pax
from pax._src.checkpoint import check as checkpoint
from pax._src.checkpoint import io as checkpoint_io
from pax._src.checkpoint import sharded as checkpoint_sharded

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS, "_multihost_checkpoint_worker.py")
META = checkpoint.METADATA_KEY
ONE_PROCESS = checkpoint_sharded.Group(0, 1, lambda x: x, lambda x: x[None])


def mesh(rows: int, columns: int) -> Mesh:
    return Mesh(np.array(jax.devices()[: rows * columns]).reshape(rows, columns), ("data", "model"))


def parts_of(path) -> list[str]:
    directory, base = os.path.split(os.fspath(path))
    return sorted(n for n in os.listdir(directory) if n.startswith(base + ".") and ".part" in n)


def metadata_of(path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(npz[META].tobytes())


def save_in_parts(path, tree, group=ONE_PROCESS) -> None:
    """`pax.save` as a multi-process save writes it, from this one process."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named = {jax.tree_util.keystr(k): leaf for k, leaf in leaves}
    head = {"format": checkpoint.FORMAT, "version": 1, "root": type(tree).__name__}
    checkpoint_sharded.save_parts(os.fspath(path), {**head, "treedef": str(treedef)}, named, group)


# --- one process -------------------------------------------------------------------------------


def test_sharded_arrays_on_one_process_keep_the_one_file_format(tmp_path):
    expected = build(1)
    tree = shard(expected, mesh(2, 4))
    path = tmp_path / "c.npz"
    pax.save(path, tree)
    assert parts_of(path) == []
    assert "parts" not in metadata_of(path)
    with zipfile.ZipFile(path) as archive:  # one member per leaf, as for unsharded arrays
        assert len(archive.namelist()) == 1 + len(jax.tree_util.tree_leaves(tree))
    for like in (shard(build(7), mesh(2, 4)), shard(build(7), mesh(4, 2), transpose=True)):
        check_loaded(pax.load(path, like), expected, like)


def test_part_format_round_trips_into_any_sharding(tmp_path):
    expected = build(1)
    path = tmp_path / "c.npz"
    save_in_parts(path, shard(expected, mesh(2, 4)))
    (part,) = parts_of(path)
    listed = metadata_of(path)["parts"]
    assert [p["file"] for p in listed] == [part]
    assert listed[0]["bytes"] == os.path.getsize(tmp_path / part)
    likes = [
        shard(build(7), mesh(2, 4)),  # the saved sharding
        shard(build(7), mesh(4, 2), transpose=True),  # another one
        shard(build(7), mesh(2, 2), abstract=True),  # jax.ShapeDtypeStruct, 4 devices
        build(7),  # uncommitted arrays on the default device
    ]
    for like in likes:
        check_loaded(pax.load(path, like), expected, like)


def test_scalars_weak_types_and_keys_round_trip_in_parts(tmp_path):
    m = mesh(2, 4)
    tree = {
        "float": 2.5,
        "int": 3,
        "scalar": np.float32(1.5),
        "weak": jax.device_put(jnp.asarray(0.25), NamedSharding(m, P())),
        "key": jax.device_put(jax.random.split(jax.random.key(3), 4), NamedSharding(m, P("model"))),
    }
    assert tree["weak"].weak_type
    path = tmp_path / "c.npz"
    save_in_parts(path, tree)
    like = {
        "float": 0.0,
        "int": 0,
        "scalar": np.float32(0),
        "weak": jax.device_put(jnp.asarray(0.0), NamedSharding(m, P())),
        "key": jax.device_put(jax.random.split(jax.random.key(0), 4), NamedSharding(m, P("data"))),
    }
    loaded = pax.load(path, like)
    assert loaded["float"] == 2.5 and type(loaded["float"]) is float
    assert loaded["int"] == 3 and type(loaded["int"]) is int
    assert loaded["scalar"] == np.float32(1.5) and isinstance(loaded["scalar"], np.float32)
    assert loaded["weak"].weak_type and loaded["weak"].sharding == like["weak"].sharding
    assert float(loaded["weak"]) == 0.25
    assert loaded["key"].sharding == like["key"].sharding
    np.testing.assert_array_equal(
        jax.random.key_data(loaded["key"]), jax.random.key_data(tree["key"])
    )
    assert str(jax.random.key_impl(loaded["key"])) == str(jax.random.key_impl(tree["key"]))


def test_replicated_data_is_written_once(tmp_path):
    m = mesh(2, 4)
    tree = {
        "replicated": jax.device_put(jnp.arange(6.0), NamedSharding(m, P())),
        "rows": jax.device_put(jnp.arange(16.0).reshape(8, 2), NamedSharding(m, P("data"))),
        "host": np.arange(3),
    }
    path = tmp_path / "c.npz"
    save_in_parts(path, tree)
    with np.load(tmp_path / parts_of(path)[0]) as npz:
        pieces = json.loads(npz[META].tobytes())["pieces"]
        assert len(npz.files) == 1 + len(pieces)
    by_leaf = {}
    for piece in pieces:
        by_leaf.setdefault(piece["path"], []).append((piece["start"], piece["stop"]))
    assert by_leaf == {
        "['host']": [([0], [3])],
        "['replicated']": [([0], [6])],
        "['rows']": [([0, 0], [4, 2]), ([4, 0], [8, 2])],  # 2 row blocks, each on 4 devices
    }


def test_a_new_save_removes_the_parts_of_older_saves(tmp_path):
    path = tmp_path / "c.npz"
    save_in_parts(path, {"w": jnp.ones(3)})
    first = parts_of(path)
    stale = tmp_path / ".c.npz.0123456789ab.part1-of-2.0123456789ab.tmp"  # a killed writer's
    stale.write_bytes(b"partial")
    save_in_parts(path, {"w": jnp.zeros(3)})
    second = parts_of(path)
    assert len(first) == len(second) == 1 and first != second
    assert not stale.exists()
    (tmp_path / "other.npz.0123456789ab.part0-of-1").write_bytes(b"not ours")
    pax.save(path, {"w": jnp.full(3, 2.0)})  # a one-process save over a multi-process one
    assert parts_of(path) == []
    assert (tmp_path / "other.npz.0123456789ab.part0-of-1").exists()
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.ones(3)})["w"], 2.0)


def test_save_refuses_a_leaf_that_is_not_an_array(tmp_path):
    with pytest.raises(pax.CheckpointError, match=r"\['name'\] is a str, not an array"):
        save_in_parts(tmp_path / "c.npz", {"w": jnp.ones(2), "name": "mlp"})
    assert os.listdir(tmp_path) == []


def test_a_part_process_0_cannot_see_is_refused_and_the_old_checkpoint_kept(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_in_parts(path, {"w": jnp.ones(2)})
    before = path.read_bytes()
    write = checkpoint_sharded._write_part

    def write_elsewhere(part, entries):  # as on a disk process 0 does not share
        written = write(part, entries)
        os.unlink(part)
        return written

    monkeypatch.setattr(checkpoint_sharded, "_write_part", write_elsewhere)
    with pytest.raises(
        pax.CheckpointError,
        match=r"process 0 wrote .*part0-of-1 \(\d+ bytes\) but process 0 does not see it: all "
        r"processes must save to the same directory, on a file system they share.*Fix: pass a "
        r"path on a shared file system",
    ):
        save_in_parts(path, {"w": jnp.zeros(2)})
    assert path.read_bytes() == before
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.zeros(2)})["w"], 1.0)


def test_a_failed_part_elsewhere_stops_the_save_on_every_process(tmp_path):
    path = tmp_path / "c.npz"
    pax.save(path, {"w": jnp.ones(2)})
    before = path.read_bytes()
    # Process 0 of 2, told by the collectives that process 1 could not write its part.
    failed_peer = checkpoint_sharded.Group(
        0, 2, lambda x: x, lambda x: np.stack([x, np.zeros_like(x)])
    )
    with pytest.raises(
        pax.CheckpointError,
        match=r"process\(es\) \[1\] could not write their part of .*c\.npz \(their own errors "
        r"say why\); the checkpoint was not written and the previous one, if any, is unchanged",
    ):
        save_in_parts(path, {"w": jnp.zeros(2)}, failed_peer)
    assert path.read_bytes() == before
    # Process 1 of 2, told by process 0 that it could not write the main file.
    failed_main = checkpoint_sharded.Group(1, 2, np.zeros_like, lambda x: np.stack([x, x]))
    with pytest.raises(
        pax.CheckpointError,
        match=r"process 0 could not write the main file .*c\.npz \(its own error says why\); "
        r"the previous checkpoint, if any, is unchanged",
    ):
        save_in_parts(path, {"w": jnp.zeros(2)}, failed_main)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.zeros(2)})["w"], 1.0)


@pytest.fixture
def in_parts(tmp_path):
    path = tmp_path / "c.npz"
    tree = {"w": jnp.arange(8.0), "b": jnp.ones(2, jnp.bfloat16)}
    save_in_parts(path, shard(tree, mesh(2, 4)))
    return path, tmp_path / parts_of(path)[0], tree


def test_a_missing_part_file_names_it_and_the_shared_directory(in_parts):
    path, part, tree = in_parts
    part.unlink()
    with pytest.raises(
        pax.CheckpointError,
        match=r"lists the part file .*part0-of-1 \(written by process 0\), which is missing. "
        r"Every process must see the checkpoint's directory with all its part files \(a file "
        r"system shared by all processes\).*Fix: copy the part files \(c\.npz\.\*\.part\*\)",
    ):
        pax.load(path, tree)


@pytest.mark.parametrize("damage", ["flip", "truncate", "replace"])
def test_a_damaged_part_file_is_refused_before_anything_is_built(in_parts, damage):
    path, part, tree = in_parts
    data = bytearray(part.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
    elif damage == "truncate":
        data = data[:-10]
    else:  # a part of another save, renamed
        other = path.parent / "other.npz"
        save_in_parts(other, {"w": jnp.zeros(8), "b": jnp.ones(2, jnp.bfloat16)})
        data = bytearray((path.parent / parts_of(other)[0]).read_bytes())
    part.write_bytes(bytes(data))
    with pytest.raises(
        pax.CheckpointError,
        match=r"the part file .*part0-of-1 of .*c\.npz is corrupted or was replaced: it holds "
        r"\d+ bytes with SHA-256 [0-9a-f]{16}\.\.\., but the checkpoint records \d+ bytes.*"
        r"Nothing was loaded. Fix: restore the part file",
    ):
        pax.load(path, tree)


def rewrite(path, edit_main=None, edit_part=None) -> None:
    """Rewrites a checkpoint's metadata (and one part's), keeping the recorded digests right."""
    metadata = metadata_of(path)
    if edit_part is not None:
        part = os.path.join(os.path.dirname(path), metadata["parts"][0]["file"])
        with np.load(part, allow_pickle=False) as npz:
            entries = {name: npz[name] for name in npz.files}
        document = json.loads(entries[META].tobytes())
        edit_part(document)
        entries[META] = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
        checkpoint_io.atomic_write(part, entries)
        size, digest = checkpoint_sharded.file_digest(part)
        metadata["parts"][0].update(bytes=size, sha256=digest.hex())
    if edit_main is not None:
        edit_main(metadata)
    blob = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    checkpoint_io.atomic_write(os.fspath(path), {META: blob})


def _overlap(document):
    document["pieces"][1]["start"] = document["pieces"][0]["start"]
    document["pieces"][1]["stop"] = document["pieces"][0]["stop"]


def _gap(document):
    document["pieces"][0]["stop"] = document["pieces"][0]["start"]


@pytest.mark.parametrize(
    "edit_main, edit_part, message",
    [
        (lambda m: m["parts"].append(dict(m["parts"][0])), None, "list of part files is malformed"),
        (lambda m: m["parts"][0].update(file="../x"), None, "list of part files is malformed"),
        (lambda m: m.update(save="0" * 12), None, "list of part files is malformed"),
        (lambda m: m["leaves"][0].pop("stored_shape"), None, r"metadata entry .* does not match"),
        (None, lambda d: d.update(save="0" * 12), "does not describe its pieces of the save"),
        (None, lambda d: d["pieces"][0].update(stop=[99]), r"the piece .* does not match"),
        (None, lambda d: d["pieces"][0].update(member="9"), r"the piece .* does not match"),
        (None, _overlap, r"the pieces of \['b'\] in its part files overlap"),
        (None, _gap, r"the pieces of \['b'\] in its part files do not cover it"),
    ],
)
def test_corrupted_metadata_of_a_multi_process_checkpoint_is_refused(
    in_parts, edit_main, edit_part, message
):
    path, _, tree = in_parts
    rewrite(path, edit_main, edit_part)
    with pytest.raises(pax.CheckpointError, match=message + r".*Nothing was loaded"):
        pax.load(path, tree)


def test_multi_process_checkpoints_check_like_as_one_process_ones(in_parts):
    path, _, tree = in_parts
    with pytest.raises(pax.CheckpointMismatchError, match=r"\['w'\]: checkpoint float32\[8\]"):
        pax.load(path, {"w": jnp.zeros(4), "b": tree["b"]})
    loaded, report = pax.load(path, {"w": jnp.zeros(8), "x": jnp.zeros(1)}, strict=False)
    assert report == pax.LoadReport(missing=("['x']",), unexpected=("['b']",))
    np.testing.assert_array_equal(loaded["w"], np.arange(8.0))


# --- two processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(tmp_path, mode: str, path, seed: int, *others, timeout: float = 240.0) -> list[int]:
    """Runs the 2 worker processes; returns their exit codes (a process left running is killed
    once the other ended with an error, as a killed process leaves its peer waiting)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    port = free_port()
    logs = [open(tmp_path / f"{mode}-{i}.log", "wb") for i in range(2)]
    args = [str(port), mode, os.fspath(path), str(seed), *map(os.fspath, others)]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, args[0], str(i), *args[1:]],
            stdout=logs[i],
            stderr=subprocess.STDOUT,
            env=env,
            cwd=TESTS,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(2)  # the peer of a dead process may never return: end it
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    return [p.returncode for p in procs]


def log_of(tmp_path, mode: str) -> str:
    return "\n".join((tmp_path / f"{mode}-{i}.log").read_text() for i in range(2))


@pytest.fixture(scope="module")
def saved_by_two(tmp_path_factory):
    """A checkpoint of `build(1)` saved by 2 processes, over a (2, 4) mesh of 8 devices."""
    directory = tmp_path_factory.mktemp("two")
    path = directory / "c.npz"
    codes = run_workers(directory, "save", path, 1)
    assert codes == [0, 0], log_of(directory, "save")
    return path


@pytest.mark.slow
def test_two_processes_write_their_shards_once(saved_by_two):
    path = saved_by_two
    parts = parts_of(path)
    assert [p["file"] for p in metadata_of(path)["parts"]] == parts
    assert [p.rsplit(".", 1)[1] for p in parts] == ["part0-of-2", "part1-of-2"]
    pieces = {}
    for i, part in enumerate(parts):
        with np.load(path.parent / part) as npz:
            for piece in json.loads(npz[META].tobytes())["pieces"]:
                pieces.setdefault(piece["path"], []).append((i, piece["start"], piece["stop"]))
    saved_mesh = mesh(2, 4)  # the same layout as the 2 processes' mesh, on 8 local devices
    for record in metadata_of(path)["leaves"]:
        where, shape = record["path"], tuple(record["shape"])
        found = pieces[where]
        if where == "[2]['table']":  # a numpy leaf: process 0 writes it
            assert found == [(0, [0, 0], [3, 4])]
            continue
        sharding = NamedSharding(saved_mesh, spec_of(shape, saved_mesh, transpose=False))
        distinct = {str(i) for i in sharding.devices_indices_map(shape).values()}
        assert len(found) == len(distinct), where  # each distinct shard once
        if not shape:  # adam's step count, replicated over 8 devices of 2 processes
            assert found == [(0, [], [])]


@pytest.mark.slow
def test_a_two_process_checkpoint_loads_in_one_process(saved_by_two):
    expected = build(1)
    likes = [
        shard(build(7), mesh(2, 4)),  # 8 devices, the saved sharding
        shard(build(7), mesh(4, 2), transpose=True),  # 8 devices, another sharding
        shard(build(7), mesh(1, 8), abstract=True),
        build(7),  # one device
    ]
    for like in likes:
        assert check_loaded(pax.load(saved_by_two, like), expected, like) == 16


@pytest.mark.slow
def test_a_two_process_checkpoint_loads_in_two_processes_resharded(saved_by_two, tmp_path):
    one_file = tmp_path / "one.npz"  # and a one-process checkpoint, into arrays of 2 processes
    pax.save(one_file, build(1))
    codes = run_workers(tmp_path, "load", saved_by_two, 1, one_file)
    log = log_of(tmp_path, "load")
    assert codes == [0, 0], log
    for path in (saved_by_two, one_file):
        for process in (0, 1):
            assert f"checked 16 leaves of {path} on process {process}" in log, log


@pytest.mark.slow
def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(saved_by_two, tmp_path):
    path = tmp_path / "c.npz"
    for name in [saved_by_two.name, *parts_of(saved_by_two)]:
        shutil.copy(saved_by_two.parent / name, tmp_path / name)
    before, old_parts = path.read_bytes(), parts_of(path)
    codes = run_workers(tmp_path, "die", path, 2)
    assert codes[1] == 17, log_of(tmp_path, "die")  # died after writing its part
    assert codes[0] != 0  # left waiting for it, then killed
    new_parts = [p for p in parts_of(path) if p not in old_parts]
    assert any(p.endswith("part1-of-2") for p in new_parts)  # the dead process's part
    assert path.read_bytes() == before
    expected = build(1)
    like = shard(build(7), mesh(2, 4))
    assert check_loaded(pax.load(path, like), expected, like) == 16
