"""The file side of checkpoints: atomic, locked writes and size-checked reads of ``.npz`` files.

Writing: the arrays go to a temporary file ``.{name}.{12 hex digits}.tmp`` next to the target,
held under an exclusive ``fcntl.flock`` while it is written, fsynced, then renamed over the
target. Each save first removes the temporaries of its own target that no live writer holds.

Reading: every size a file declares (zip member sizes, ``.npy`` header shapes) is checked
against the file's real size and against what the caller expects before anything is read, so
a corrupt or hostile file fails fast instead of allocating what it claims.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import stat
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from pax._src.errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, no cleanup of stale files
    fcntl = None  # type: ignore[assignment]

# Deflate cannot compress better than about 1032:1; a member claiming more is not honest.
MAX_DEFLATE_RATIO = 1100
_HEX = 12


# --- writing -----------------------------------------------------------------------------------


def write_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _temp_pattern(path: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(os.path.basename(path))}\.[0-9a-f]{{{_HEX}}}\.tmp")


def _lock(fd: int, blocking: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _same_file(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


def remove_stale_temporaries(path: str) -> None:
    """Removes the temporary files of `path` left by writers that died (unlocked ones)."""
    if fcntl is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    pattern = _temp_pattern(path)
    with contextlib.suppress(OSError):
        names = [n for n in os.listdir(directory) if pattern.fullmatch(n)]
        for name in names:
            candidate = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    if _lock(fd, blocking=False) and _same_file(candidate, fd):
                        os.unlink(candidate)  # still holding the lock: no writer can own it
                finally:
                    os.close(fd)


def _create_locked_temp(path: str) -> tuple[str, int]:
    directory = os.path.dirname(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, flags, 0o666)
        _lock(fd, blocking=True)
        if fcntl is None or _same_file(tmp, fd):
            return tmp, fd
        os.close(fd)  # a cleaner removed it between open and lock: take another name


def _target_mode(path: str) -> int | None:
    """The permission bits of an existing target; refuses a read-only one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWUSR:
        raise PermissionError(
            errno.EACCES,
            f"pax.save: {path} is read-only, so it was not replaced. Fix: make it writable "
            f"(chmod u+w), delete it, or save to another path",
            path,
        )
    return stat.S_IMODE(st.st_mode)


def atomic_write(path: str, entries: dict[str, np.ndarray]) -> None:
    """Writes `entries` as an uncompressed ``.npz`` at `path`, atomically (see module doc)."""
    try:
        mode = _target_mode(path)
        remove_stale_temporaries(path)
        tmp, fd = _create_locked_temp(path)
    except OSError as err:
        raise _about(err, path) from err
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for name, array in entries.items():
                    write_array(archive, name, array)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: a concurrent cleaner cannot take it
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _about(err, path) from err
        raise
    with contextlib.suppress(OSError):  # makes the rename durable; not possible everywhere
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _about(err: OSError, path: str) -> OSError:
    """`err`, about the target `path` rather than the temporary file."""
    if err.filename == path and err.filename2 is None:
        return err
    message = err.strerror or str(err)
    if not message.startswith("pax.save"):
        message = f"pax.save could not write {path}: {message}"
    return OSError(err.errno, message, path)


# --- reading -----------------------------------------------------------------------------------


def _corrupted(path: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"pax.load: {path} is truncated or corrupted ({what}). Nothing was loaded."
    )


class Reader:
    """An open checkpoint whose members are read only after their declared sizes are checked."""

    def __init__(self, path: str) -> None:
        self.path = path
        st = os.stat(path)  # missing file, permissions: the usual OSError
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(
                f"pax.load: {path} is not a regular file (a device, pipe or directory); a "
                f"checkpoint is a file written by pax.save. Nothing was loaded."
            )
        self._file = open(path, "rb")  # closed by close()
        try:
            opened = os.fstat(self._file.fileno())
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise CheckpointError(f"pax.load: {path} was replaced while being opened.")
            self.size = opened.st_size
            self.archive = zipfile.ZipFile(self._file)
            self.members = self._check_members()
        except CheckpointError:
            self.close()
            raise
        except Exception as err:  # anything a damaged zip can raise
            self.close()
            raise _corrupted(path, f"{type(err).__name__}: {err}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if hasattr(self, "archive"):
                self.archive.close()
        self._file.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_members(self) -> dict[str, zipfile.ZipInfo]:
        members = {}
        for info in self.archive.infolist():
            name = info.filename[: -len(".npy")]
            if not info.filename.endswith(".npy") or name in members:
                raise _corrupted(self.path, f"unexpected zip member {info.filename!r}")
            if info.header_offset + info.compress_size > self.size:
                raise _corrupted(
                    self.path,
                    f"member {name} declares {info.compress_size} bytes, more than the file holds",
                )
            if info.compress_type == zipfile.ZIP_STORED:
                honest = info.file_size == info.compress_size
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                honest = info.file_size <= MAX_DEFLATE_RATIO * max(info.compress_size, 1)
            else:
                raise _corrupted(self.path, f"member {name} uses compression {info.compress_type}")
            if not honest:
                raise _corrupted(
                    self.path,
                    f"member {name} declares {info.file_size} bytes from "
                    f"{info.compress_size} stored bytes",
                )
            members[name] = info
        return members

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
        """The shape, dtype and header length of member `name`, read from its ``.npy`` header."""
        info = self.members[name]
        try:
            with self.archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read(member)
                header_size = member.tell()
        except Exception as err:
            raise _corrupted(self.path, f"{type(err).__name__}: {err}") from None
        del fortran  # numpy writes Fortran-ordered arrays so; read_array handles it
        if dtype.hasobject or dtype.names is not None:
            raise _corrupted(
                self.path,
                f"member {name} holds {dtype} objects, which pax.load never unpickles: it "
                f"reads with allow_pickle=False",
            )
        return tuple(shape), dtype, header_size

    def read(self, name: str, limit: Callable[[tuple[int, ...], np.dtype], str | None]) -> Any:
        """Reads member `name` after checking its header against its size and ``limit``.

        ``limit(shape, dtype)`` returns None if the declared array is what the caller expects,
        else a description of what it expected (the read is then refused).
        """
        info = self.members[name]
        shape, dtype, header_size = self.header(name)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        expected = limit(shape, dtype)
        if expected is not None or nbytes != info.file_size - header_size:
            described = f"{dtype.name}{list(shape)}"
            why = expected or f"the member holds {info.file_size - header_size} bytes of data"
            raise _corrupted(self.path, f"member {name or 'the root'} declares {described}, {why}")
        try:
            with self.archive.open(info) as member:  # verifies the CRC-32 at the end
                data = member.read()
            return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        except Exception as err:
            raise _corrupted(self.path, f"{type(err).__name__}: {err}") from None
