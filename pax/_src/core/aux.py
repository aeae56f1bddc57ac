"""Aux data of a module's treedef, and hashable snapshots of unhashable static values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pax._src.core.registry import is_module
from pax._src.describe import describe


class Aux(tuple):
    """``(layout, static_values)``: hashed and compared as a plain tuple.

    Outside equality it carries what flatten and unflatten need: the layout's `get_children`
    and `fill`, and `template` (static values and the private registry entries a rebuilt
    module starts with).
    """

    get_children: Callable[[dict], tuple]
    fill: Callable[[dict, Any, Any], None]
    template: dict[str, Any]


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
    """Returns a hashable, content-based snapshot of an unhashable static value.

    Example:
      >>> freeze_static([1, {"a": 2}]) == freeze_static([1, {"a": 2}])
      True
    """
    modules: list = []
    arrays: list = []

    def snap(x: Any) -> Any:
        if is_module(x):
            modules.append(x)
            return ("module", id(x))
        if isinstance(x, np.ndarray) or type(x).__module__.startswith("jax"):
            if hasattr(x, "shape") and hasattr(x, "dtype"):
                arrays.append(describe(x))
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
