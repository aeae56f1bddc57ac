"""The file side of checkpoints: atomic, locked writes and size-checked reads of ``.npz`` files.

Writing: the arrays go to a temporary file next to the target, named
``.{name}.pax-{host}-{pid}-{12 hex digits}.tmp`` (``host``: 8 hex digits of a hash of the host
name; ``pid``: the writing process), held under an exclusive ``fcntl.flock`` while it is
written, fsynced, then renamed over the target. A target that is a symbolic link is written
through: its (final) target is replaced, the link stays.

Stale temporaries. Before writing, a save removes the temporaries of killed saves in the
target's directory, whatever checkpoint they were for. A file is removed only if ALL of these
hold, so a concurrent writer's temporary is never taken:

1. its name follows the pattern above (pax's own; no other file is ever touched);
2. it was made on this host (same host hash), and its process is gone (``os.kill(pid, 0)``
   finds no such process) or is this process;
3. no process holds its lock (a non-blocking ``flock`` succeeds), and it is still the same
   file once locked.

Rule 3 alone protects live writers on a local disk or NFS; rule 2 protects them where locks
are not shared between hosts (some network file systems). Temporaries named by older pax
versions, ``.{name}.{12 hex digits}.tmp``, are removed by saves to their own target under rule
3. Without ``fcntl`` (Windows) nothing is removed.

Reading: the file is opened once, and everything is read from that one descriptor: a file
atomically replaced while it is read (a trainer saving while another process loads) gives the
complete old file. Every size a file declares (zip member sizes, ``.npy`` header shapes) is
checked against the file's real size and against what the caller expects before anything is
read, so a corrupt or hostile file fails fast instead of allocating what it claims.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import socket
import stat
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from pax._src.errors import CheckpointError, CheckpointIsADirectoryError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, no cleanup of stale files
    fcntl = None  # type: ignore[assignment]

# Deflate cannot compress better than about 1032:1; a member claiming more is not honest.
MAX_DEFLATE_RATIO = 1100
_HEX = 12
_NAME_KEPT = 100  # characters of the target's name kept in a temporary's name (NAME_MAX: 255)
_TEMPORARY = re.compile(
    rf"\.(?P<name>.*)\.pax-(?P<host>[0-9a-f]{{8}})-(?P<pid>[1-9][0-9]{{0,9}})-[0-9a-f]{{{_HEX}}}\.tmp",
    re.DOTALL,
)


def host_tag() -> str:
    """8 hex digits naming this host in temporary file names."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temporary_name(path: str) -> str:
    """A fresh temporary file name for a save to `path` (see the module doc)."""
    name = os.path.basename(path)[:_NAME_KEPT]
    return f".{name}.pax-{host_tag()}-{os.getpid()}-{secrets.token_hex(_HEX // 2)}.tmp"


def resolve_link(path: str) -> str:
    """The file a save to (or a load from) `path` writes (reads): a symbolic link's target."""
    return os.path.realpath(path) if os.path.islink(path) else path


def directory_error(fn: str, path: str) -> CheckpointIsADirectoryError:
    example = (
        f"pax.save(os.path.join({path!r}, 'model.npz'), tree)"
        if fn == "pax.save"
        else f"pax.load(os.path.join({path!r}, 'model.npz'), like)"
    )
    return CheckpointIsADirectoryError(
        f"{fn}: {path} is a directory; a checkpoint is one file. Fix: name a file in it, "
        f"e.g. {example}.",
        path,
    )


# --- writing -----------------------------------------------------------------------------------


def write_array(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _legacy_pattern(path: str) -> re.Pattern:
    """Temporaries of `path` named by pax versions before the pid and host were in the name."""
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


def _process_gone(pid: int) -> bool:
    if pid == os.getpid():
        return True  # our own leftover; the lock still protects a save of another thread
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: it exists, under another user
        return False
    return False


def _is_stale(name: str, legacy: re.Pattern, host: str) -> bool:
    """Rules 1 and 2 of the module doc, read from the name alone."""
    if legacy.fullmatch(name):
        return True
    match = _TEMPORARY.fullmatch(name)
    return match is not None and match["host"] == host and _process_gone(int(match["pid"]))


def remove_stale_temporaries(path: str) -> None:
    """Removes the temporaries of killed saves next to `path` (the rules are in the module doc)."""
    if fcntl is None:
        return
    directory = os.path.dirname(os.path.abspath(path))
    legacy, host = _legacy_pattern(path), host_tag()
    with contextlib.suppress(OSError):
        names = [n for n in os.listdir(directory) if _is_stale(n, legacy, host)]
        for name in names:
            candidate = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    if (
                        stat.S_ISREG(os.fstat(fd).st_mode)
                        and _lock(fd, blocking=False)
                        and _same_file(candidate, fd)
                    ):
                        os.unlink(candidate)  # still holding the lock: no writer can own it
                finally:
                    os.close(fd)


def _create_locked_temp(path: str) -> tuple[str, int]:
    directory = os.path.dirname(os.path.abspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, temporary_name(path))
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
    """Writes `entries` as an uncompressed ``.npz`` at `path`, atomically (see module doc).

    A symbolic link at `path` is written through: its target is replaced, the link stays.
    """
    if not os.path.basename(path) or os.path.isdir(path):
        raise directory_error("pax.save", path)
    shown, path = path, resolve_link(path)
    try:
        mode = _target_mode(path)
        remove_stale_temporaries(path)
        tmp, fd = _create_locked_temp(path)
    except OSError as err:
        raise _about(err, shown) from err
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
            raise _about(err, shown) from err
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

    def __init__(self, path: str, shown: str | None = None) -> None:
        self.path = path if shown is None else shown  # the name errors give
        # One open, then everything from this descriptor: a replace of `path` meanwhile (a
        # concurrent save) does not change what is read. O_NONBLOCK: opening a FIFO must not
        # hang; it does not change reads of a regular file.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags)  # missing file, permissions: the usual OSError
        except OSError:
            if os.path.isdir(path):  # Windows cannot open a directory
                raise directory_error("pax.load", self.path) from None
            raise
        try:
            opened = os.fstat(fd)
            if stat.S_ISDIR(opened.st_mode):
                raise directory_error("pax.load", self.path)
            if not stat.S_ISREG(opened.st_mode):
                raise CheckpointError(
                    f"pax.load: {self.path} is not a regular file (a device, pipe or socket); a "
                    f"checkpoint is a file written by pax.save. Nothing was loaded."
                )
        except BaseException:
            os.close(fd)
            raise
        self._file = os.fdopen(fd, "rb")  # closed by close()
        try:
            self.size = opened.st_size
            self.archive = zipfile.ZipFile(self._file)
            self.members = self._check_members()
        except CheckpointError:
            self.close()
            raise
        except Exception as err:  # anything a damaged zip can raise
            self.close()
            raise _corrupted(self.path, f"{type(err).__name__}: {err}") from None

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
