"""Checks on the values assigned to, or registered on, a module."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pax._src.core.registry import FAMILY, LEAF_KINDS, PREFIX, Kind, Layout, is_module
from pax._src.describe import describe

ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
NDARRAY_TYPES = (jax.Array, np.ndarray)

REGISTER_FIX = (
    "self.register_parameter({name!r}, value) for a trainable array, or "
    "self.register_state({name!r}, value) for a non-trainable one"
)


def check_leaf(module: Any, name: str, kind: Kind, value: Any, allow_none: bool) -> None:
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


def check_subtree(module: Any, name: str, kind: Kind, value: Any) -> None:
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


def check_module_subtree(module: Any, name: str, value: Any) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(value, is_leaf=is_module):
        if not is_module(leaf):
            where = f"{type(module).__name__}.{name}{jax.tree_util.keystr(path)}"
            if isinstance(leaf, ARRAY_TYPES):
                fix = "register arrays with register_parameter / register_state on a Module"
            elif callable(leaf):
                fix = "wrap functions in a module: pax.nn.Lambda(fn)"
            else:
                fix = "keep non-module values in a separate attribute"
            raise TypeError(
                f"{where}: a container of modules may hold only Modules (or None), found "
                f"{describe(leaf)}. Fix: {fix}."
            )


def scan_container(value: Any) -> tuple[bool, Any]:
    """Returns (has a module, first array) among the leaves of a list/tuple/dict."""
    has_module = False
    for leaf in jax.tree_util.tree_leaves(value, is_leaf=is_module):
        if is_module(leaf):
            has_module = True
        elif isinstance(leaf, NDARRAY_TYPES):
            return has_module, leaf
    return has_module, None


def layout_after_assignment(
    module: Any, name: str, value: Any, layout: Layout, kind: Kind | None
) -> Layout:
    """The layout of `module` once `value` is assigned to the unregistered (or module) `name`.

    Modules and containers of modules become children; arrays are refused (they would be
    static); everything else is static.
    """
    cls = type(module).__name__
    if is_module(value):
        return layout.with_child(name, Kind.MODULE)
    if value is None and kind is not None:
        return layout
    if isinstance(value, (list, tuple, dict)):
        has_module, array = scan_container(value)
        if array is not None:
            raise TypeError(
                f"{cls}.{name}: this {type(value).__name__} holds an array ({describe(array)}) "
                f"but is not registered, so it would be static and baked into the compiled "
                f"program. Fix: self.register_parameter_subtree({name!r}, value) or "
                f"self.register_state_subtree({name!r}, value)."
            )
        if has_module:
            check_module_subtree(module, name, value)
            return layout.with_child(name, Kind.MODULE_SUBTREE)
        return layout.with_static(name)
    if isinstance(value, NDARRAY_TYPES):
        raise TypeError(
            f"{cls}.{name}: cannot assign a {describe(value)} array to an unregistered "
            f"attribute; it would be static and baked into the compiled program. Fix: "
            f"{REGISTER_FIX.format(name=name)}."
        )
    return layout.with_static(name)


def kind_after_registration(module: Any, name: str, value: Any, layout: Layout, kind: Kind) -> Kind:
    """Checks ``register_<kind>(name, value)`` on `module`; returns the kind to record."""
    cls = type(module).__name__
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls}: cannot register {name!r}: the name must be an identifier.")
    if name == "training":
        raise ValueError(
            f"{cls}.training: cannot register 'training': it is the train/eval mode flag "
            f"(see train() and eval()). Fix: choose another name."
        )
    if name.startswith(PREFIX):
        raise ValueError(f"{cls}.{name}: names starting with {PREFIX!r} are reserved.")
    attr = getattr(type(module), name, None)
    if callable(attr) or isinstance(attr, (property, classmethod, staticmethod)):
        raise ValueError(
            f"{cls}.{name}: cannot register {name!r}: it would shadow the "
            f"{type(attr).__name__} {cls}.{name}. Fix: choose another name, e.g. "
            f"self.register_{FAMILY[kind].replace(' ', '_')}({name + '_'!r}, value)."
        )
    old = layout.kind_of.get(name)
    if old is not None and FAMILY[old] != FAMILY[kind]:
        raise ValueError(
            f"{cls}.{name} is already registered as a {old.value}; cannot register it again "
            f"as a {kind.value}. Fix: use another name, or `del self.{name}` first."
        )
    if kind in LEAF_KINDS:
        check_leaf(module, name, kind, value, allow_none=False)
    elif kind is Kind.MODULE:
        if not is_module(value):
            raise TypeError(
                f"{cls}.{name}: register_module expects a pax.Module, got {describe(value)}."
            )
    elif kind is Kind.MODULE_SUBTREE:
        check_module_subtree(module, name, value)
    else:
        check_subtree(module, name, kind, value)
    if old is not None and old is not kind and FAMILY[old] == FAMILY[kind]:
        return old  # re-registering a frozen parameter keeps it frozen
    return kind
