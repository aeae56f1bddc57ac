"""The files behind `pax.save` / `pax.load`: hostile or corrupt files refused before allocating,
non-regular files, stale temporaries of crashed saves cleaned up, OS errors naming the target,
and file modes kept or respected."""

import fcntl
import io
import os
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax._src.checkpoint import check as checkpoint

META = checkpoint.METADATA_KEY


def _members(path):
    """{member name: bytes} of a checkpoint, in order."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _write(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


# --- hostile or corrupt files fail before allocating ----------------------------------------


def _quick_refusal(path, like, match):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(pax.CheckpointError, match=match):
            pax.load(path, like)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5
    assert peak < 20 * 2**20


def test_header_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    pax.save(path, {"w": jnp.ones(2)})
    members = _members(path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}
    )
    members["['w'].npy"] = header.getvalue() + b"\0" * 8
    _write(path, members)
    assert path.stat().st_size < 4096
    _quick_refusal(path, {"w": jnp.ones(2)}, r"declares float32\[1099511627776\]")


def test_zip_bomb_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    pax.save(path, {"w": jnp.ones(2)})
    members = _members(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{META}.npy", members[f"{META}.npy"])
        with archive.open("['w'].npy", "w") as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (2**26,)}
            np.lib.format.write_array_header_1_0(member, header)
            zeros = bytes(2**20)
            for _ in range(2**8):
                member.write(zeros)
    assert path.stat().st_size < 2**20
    _quick_refusal(path, {"w": jnp.ones(2)}, r"\['w'\] declares")


def test_metadata_bomb_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{META}.npy", "w") as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "|u1", "fortran_order": False, "shape": (2**28,)}
            )
            zeros = bytes(2**20)
            for _ in range(2**8):
                member.write(zeros)
    _quick_refusal(path, {"w": jnp.ones(2)}, r"metadata.*declares")


def test_non_regular_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(pax.CheckpointError, match=r"fifo is not a regular file"):
        pax.load(fifo, {"w": jnp.ones(2)})
    script = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
        import pax, jax.numpy as jnp
        pax.load("/dev/zero", {"w": jnp.ones(2)})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "CheckpointError: pax.load: /dev/zero is not a regular file" in result.stderr


# --- stale temporary files --------------------------------------------------------------


def test_next_save_removes_stale_temporaries_of_that_path_only(tmp_path):
    path = tmp_path / "m.npz"
    stale = tmp_path / ".m.npz.0123456789ab.tmp"
    other = tmp_path / ".other.npz.0123456789ab.tmp"
    live = tmp_path / ".m.npz.ba9876543210.tmp"
    for name in (stale, other, live):
        name.write_bytes(b"partial")
    with open(live, "rb") as held:  # another writer is still writing this one
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        pax.save(path, {"w": jnp.ones(2)})
    assert sorted(os.listdir(tmp_path)) == sorted(["m.npz", other.name, live.name])


def test_a_crashed_save_is_cleaned_up_by_the_next(tmp_path):
    path = tmp_path / "model.npz"
    script = textwrap.dedent(
        f"""
        import os, jax.numpy as jnp, pax
        from pax._src.checkpoint import io as checkpoint_io
        real = checkpoint_io.write_array
        def crash(archive, name, array):
            os._exit(3)
        checkpoint_io.write_array = crash
        pax.save({str(path)!r}, {{"w": jnp.zeros(4)}})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120
    )
    assert result.returncode == 3
    assert len(os.listdir(tmp_path)) == 1 and os.listdir(tmp_path)[0].startswith(".model.npz.")
    pax.save(path, {"w": jnp.ones(4)})
    assert os.listdir(tmp_path) == ["model.npz"]


# --- OS errors and file modes -----------------------------------------------------------


def test_os_errors_name_the_target_not_the_temporary(tmp_path):
    target = tmp_path / "no-such-dir" / "m.npz"
    with pytest.raises(FileNotFoundError, match=r"no-such-dir/m\.npz") as info:
        pax.save(target, {"w": jnp.ones(2)})
    assert ".tmp" not in str(info.value)
    assert info.value.filename == str(target)


def test_saving_keeps_the_mode_of_the_existing_file(tmp_path):
    path = tmp_path / "m.npz"
    pax.save(path, {"w": jnp.zeros(2)})
    os.chmod(path, 0o640)
    pax.save(path, {"w": jnp.ones(2)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    np.testing.assert_array_equal(pax.load(path, {"w": jnp.zeros(2)})["w"], jnp.ones(2))


def test_saving_over_a_read_only_file_is_refused(tmp_path):
    path = tmp_path / "m.npz"
    pax.save(path, {"w": jnp.zeros(2)})
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(PermissionError, match=r"m\.npz is read-only.*chmod u\+w") as info:
        pax.save(path, {"w": jnp.ones(2)})
    assert info.value.filename == str(path)
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert os.listdir(tmp_path) == ["m.npz"]
