"""Checks on the values assigned to, or registered on, a module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from pax._src.core.layout import FAMILY, Kind
from pax._src.core.views import is_module_instance

if TYPE_CHECKING:
    from pax._src.core.module import Module

ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
NDARRAY_TYPES = (jax.Array, np.ndarray)

REGISTER_FIX = (
    "self.register_parameter({name!r}, value) for a trainable array, or "
    "self.register_state({name!r}, value) for a non-trainable one"
)


def type_name(value: Any) -> str:
    if isinstance(value, NDARRAY_TYPES):
        return f"{type(value).__name__}{tuple(value.shape)} {value.dtype}"
    return type(value).__name__


def check_leaf(module: Module, name: str, kind: Kind, value: Any, allow_none: bool) -> None:
    if isinstance(value, ARRAY_TYPES) or (allow_none and value is None):
        return
    cls = type(module).__name__
    fix = (
        f"self.register_{FAMILY[kind].replace(' ', '_')}({name!r}, jnp.asarray(value))"
        if isinstance(value, (bool, int, float, complex))
        else "store it as a plain attribute under another name, or wrap it in a pax.Module"
    )
    raise TypeError(
        f"{cls}.{name}: a {kind.value} must be a jax or numpy array, got {value!r} of type "
        f"{type(value).__name__}. Fix: {fix}."
    )


def check_subtree(module: Module, name: str, kind: Kind, value: Any) -> None:
    cls = type(module).__name__
    if value is None:
        raise TypeError(f"{cls}.{name}: cannot register None as a {kind.value}; pass a pytree.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(value):
        if not isinstance(leaf, ARRAY_TYPES):
            raise TypeError(
                f"{cls}.{name}{jax.tree_util.keystr(path)}: every leaf of a {kind.value} must be "
                f"a jax or numpy array, got {leaf!r} of type {type(leaf).__name__}. Fix: convert "
                f"it with jnp.asarray, or keep non-array values out of the subtree."
            )


def check_module_subtree(module: Module, name: str, value: Any) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(value, is_leaf=is_module_instance):
        if not is_module_instance(leaf):
            where = f"{type(module).__name__}.{name}{jax.tree_util.keystr(path)}"
            if isinstance(leaf, ARRAY_TYPES):
                fix = "register arrays with register_parameter / register_state on a Module"
            elif callable(leaf):
                fix = "wrap functions in a module: pax.nn.Lambda(fn)"
            else:
                fix = "keep non-module values in a separate attribute"
            raise TypeError(
                f"{where}: a container of modules may hold only Modules (or None), found "
                f"{type_name(leaf)}. Fix: {fix}."
            )


def scan_container(value: Any) -> tuple[bool, Any]:
    """Returns (has a module, first array) among the leaves of a list/tuple/dict."""
    has_module = False
    for leaf in jax.tree_util.tree_leaves(value, is_leaf=is_module_instance):
        if is_module_instance(leaf):
            has_module = True
        elif isinstance(leaf, NDARRAY_TYPES):
            return has_module, leaf
    return has_module, None
