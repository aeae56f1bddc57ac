"""Aux data of a module's treedef, and hashable snapshots of unhashable static values."""

from __future__ import annotations

from typing import Any

import numpy as np


class Aux(tuple):
    """``(layout, static_values)``: hashed and compared as a plain tuple.

    `template` (not part of equality) maps static names to their real values, so unflatten
    restores a module with one dict update.
    """


class FrozenStatic:
    """Hashable stand-in for an unhashable static value (list, dict, set), compared by content.

    Attributes:
      key: a hashable snapshot of the value's content.
      modules: `pax.Module` instances found inside (they must not be static).
      arrays: descriptions of arrays found inside (they must not be static either).
    """

    __slots__ = ("arrays", "key", "modules")

    def __init__(self, key: Any, modules: list, arrays: list) -> None:
        self.key = key
        self.modules = modules
        self.arrays = arrays

    def __eq__(self, other: object) -> bool:
        return type(other) is FrozenStatic and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"FrozenStatic({self.key!r})"


class _ByIdentity:
    """Compares an unhashable, unknown object by identity (keeping it alive)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is _ByIdentity and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)


def freeze_static(value: Any) -> FrozenStatic:
    """Returns a hashable, content-based snapshot of an unhashable static value."""
    from pax._src.core.module import Module

    modules: list = []
    arrays: list = []

    def snap(x: Any) -> Any:
        if isinstance(x, Module):
            modules.append(x)
            return ("module", id(x))
        if isinstance(x, np.ndarray) or type(x).__module__.startswith("jax"):
            if hasattr(x, "shape") and hasattr(x, "dtype"):
                arrays.append(f"{type(x).__name__}{tuple(x.shape)} {x.dtype}")
                return ("array", id(x))
        if isinstance(x, list):
            return ("list", tuple(snap(v) for v in x))
        if isinstance(x, tuple):
            return (type(x), tuple(snap(v) for v in x))
        if isinstance(x, dict):
            return ("dict", tuple((k, snap(v)) for k, v in x.items()))
        if isinstance(x, (set, frozenset)):
            return ("set", frozenset(snap(v) for v in x))
        try:
            hash(x)
        except TypeError:
            return _ByIdentity(x)
        return x

    return FrozenStatic(snap(value), modules, arrays)
