"""Every exception class pax raises beyond the built-in ones.

Each subclasses the built-in error a user would catch (`ValueError`), so code written against
the built-ins keeps working.
"""

from __future__ import annotations

import errno


class StructureChangedError(ValueError):
    """A module's pytree structure changed inside a transformed function."""


class SharedObjectError(ValueError):
    """The same module or array object is reachable twice in one pytree."""


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: corrupted, truncated, or not a pax checkpoint."""


class CheckpointIsADirectoryError(CheckpointError, IsADirectoryError):
    """The path given to `pax.save` or `pax.load` is a directory, not a checkpoint file.

    It is both a `CheckpointError` and an `IsADirectoryError` (so an ``except OSError`` around
    file handling catches it), with ``errno``, ``strerror`` and ``filename`` set.

    Example:
      >>> import errno, tempfile, jax.numpy as jnp, pax
      >>> try:
      ...     pax.save(tempfile.mkdtemp(), {"w": jnp.ones(2)})
      ... except IsADirectoryError as error:
      ...     print(error.errno == errno.EISDIR)
      True
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.errno, self.strerror, self.filename = errno.EISDIR, message, path

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple:
        return (type(self), (self.strerror, self.filename))


class CheckpointMismatchError(CheckpointError):
    """The names given do not match the model: the checkpoint's leaves and ``like`` in
    `pax.load`, a mapping and the model in `pax.load_state_dict`, Haiku dicts and the model in
    `pax.haiku.load_haiku_params` (one matching routine serves all three).

    The message lists at most 20 key paths of each kind; the attributes hold all of them.

    Attributes:
      missing: every key path of ``like`` absent from the checkpoint.
      unexpected: every key path of the checkpoint absent from ``like``.
      mismatched: every key path present in both with another shape or dtype.

    Example:
      >>> import os, tempfile, jax.numpy as jnp, pax
      >>> path = os.path.join(tempfile.mkdtemp(), "x.npz")
      >>> pax.save(path, {"a": jnp.ones(2), "b": jnp.ones(2)})
      >>> try:
      ...     pax.load(path, {"a": jnp.ones(3), "c": jnp.ones(2)})
      ... except pax.CheckpointMismatchError as error:
      ...     print(error.missing, error.unexpected, error.mismatched)
      ("['c']",) ("['b']",) ("['a']",)
    """

    def __init__(
        self,
        message: str,
        *,
        missing: tuple[str, ...] = (),
        unexpected: tuple[str, ...] = (),
        mismatched: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)
        self.mismatched = tuple(mismatched)


__all__ = [
    "CheckpointError",
    "CheckpointIsADirectoryError",
    "CheckpointMismatchError",
    "SharedObjectError",
    "StructureChangedError",
]

# Shown as `pax.SharedObjectError` etc. in tracebacks: the public names users import.
for _cls in (CheckpointError, CheckpointMismatchError, SharedObjectError, StructureChangedError):
    _cls.__module__ = "pax"
del _cls
