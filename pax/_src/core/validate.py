"""Checks on the values assigned to, or registered on, a module."""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core.registry import FAMILY, LEAF_KINDS, PREFIX, Kind, Layout, is_module
from pax._src.core.tree_shape import check_tree_shape
from pax._src.describe import describe

ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
NDARRAY_TYPES = (jax.Array, np.ndarray)

REGISTER_FIX = (
    "self.register_parameter({name!r}, value) for a trainable array, or "
    "self.register_state({name!r}, value) for a non-trainable one"
)


PARAMETER_KINDS = frozenset({Kind.PARAMETER, Kind.FROZEN_PARAMETER})
PARAMETER_SUBTREE_KINDS = frozenset({Kind.PARAMETER_SUBTREE, Kind.FROZEN_PARAMETER_SUBTREE})


def is_inexact(dtype: Any) -> bool:
    """True for float and complex dtypes (bfloat16 and the float8 types included)."""
    return dtype.kind in "fc" or jax.dtypes.issubdtype(dtype, np.inexact)


def as_jax(value: Any) -> Any:
    """A numpy array or scalar converted as `jnp.asarray` would (float64 -> float32 unless x64)."""
    if not isinstance(value, (np.ndarray, np.generic)):
        return value
    if not value.dtype.isnative:  # big-endian data: JAX refuses it; same values, native order
        value = value.astype(value.dtype.newbyteorder("="))
    return jnp.asarray(value)


def _check_inexact(module: Any, where: str, value: Any, subtree: bool) -> None:
    dtype = getattr(value, "dtype", None)
    if dtype is None or is_inexact(dtype):
        return
    name = where.split(".", 1)[1].split("[", 1)[0]
    register = (
        f"self.register_state_subtree({name!r}, tree)"
        if subtree
        else f"self.register_state({name!r}, value)"
    )
    raise TypeError(
        f"{where}: a parameter must be a float or complex array (gradients are taken with "
        f"respect to it), got {describe(value)} (dtype {dtype}). Fix: {register} for a "
        f"non-trainable array, or cast it: value.astype(jnp.float32)."
    )


_CASTING = threading.local()


@contextlib.contextmanager
def casting_states() -> Iterator[None]:
    """Inside (a mixed-precision call), a floating-point value assigned to a floating-point
    state is cast to the state's dtype instead of refused."""
    _CASTING.depth = getattr(_CASTING, "depth", 0) + 1
    try:
        yield
    finally:
        _CASTING.depth -= 1


def check_state_dtype(module: Any, name: str, old: Any, value: Any) -> Any:
    """A registered state keeps the dtype it was registered with; returns the value to store."""
    old_dtype = getattr(old, "dtype", None)
    new_dtype = getattr(value, "dtype", None)
    if old_dtype is None or new_dtype is None or old_dtype == new_dtype:
        return value
    if (
        getattr(_CASTING, "depth", 0)
        and jnp.issubdtype(old_dtype, jnp.floating)
        and jnp.issubdtype(new_dtype, jnp.floating)
    ):
        return jnp.asarray(value, old_dtype)
    raise TypeError(
        f"{type(module).__name__}.{name}: this state was registered as {old_dtype}, the value "
        f"assigned is {new_dtype} ({describe(value)}); a state keeps its dtype (a silent "
        f"change, e.g. to float64 under jax_enable_x64, changes the compiled program and the "
        f"checkpoints). Fix: self.{name} = value.astype({old_dtype.name!r}), or "
        f"register it again with the new dtype: self.register_state({name!r}, value)."
    )


def check_leaf(module: Any, name: str, kind: Kind, value: Any, allow_none: bool) -> None:
    if isinstance(value, ARRAY_TYPES) or (allow_none and value is None):
        if kind in PARAMETER_KINDS and value is not None:
            _check_inexact(module, f"{type(module).__name__}.{name}", value, subtree=False)
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
        if kind in PARAMETER_SUBTREE_KINDS:
            where = f"{cls}.{name}{jax.tree_util.keystr(path)}"
            _check_inexact(module, where, leaf, subtree=True)


def check_module_subtree(module: Any, name: str, value: Any) -> None:
    check_tree_shape(module, name, value)
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


_PLAIN = (int, float, complex, str, bytes, bool, type(None), np.generic)
_OPAQUE = (
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
)
_MAX_DEPTH = 6
_MAX_NODES = 2000


def _is_inner_module(root: Any) -> Any:
    return lambda y: y is not root and is_module(y)


def find_hidden(value: Any) -> tuple[str, Any] | None:
    """The first array or module inside a static value, as ``(key path, object)``, or None.

    Registered pytrees are walked with `jax.tree_util`, other objects through ``vars()``
    (dataclasses, namespaces, ...); functions, classes and Python modules are not entered. The
    walk is cycle-safe and bounded (depth and number of objects).
    """
    seen: set[int] = set()
    budget = [_MAX_NODES]

    def walk(x: Any, path: str, depth: int) -> tuple[str, Any] | None:
        if isinstance(x, _PLAIN) or isinstance(x, _OPAQUE):
            return None
        if isinstance(x, NDARRAY_TYPES) or is_module(x):
            return path, x
        if depth >= _MAX_DEPTH or id(x) in seen or budget[0] <= 0:
            return None
        seen.add(id(x))
        budget[0] -= 1
        try:
            pairs = jax.tree_util.tree_flatten_with_path(x, is_leaf=_is_inner_module(x))[0]
        except Exception:  # an object whose flatten fails: look at its attributes only
            pairs = [((), x)]
        if not (len(pairs) == 1 and pairs[0][1] is x):
            for key_path, leaf in pairs:
                found = walk(leaf, path + jax.tree_util.keystr(key_path), depth + 1)
                if found:
                    return found
            return None
        attrs = getattr(x, "__dict__", None)
        if isinstance(attrs, dict):
            for key, item in list(attrs.items()):
                found = walk(item, f"{path}.{key}", depth + 1)
                if found:
                    return found
        return None

    return walk(value, "", 0)


def check_not_hidden(module: Any, name: str, value: Any) -> None:
    """Refuses a static value that holds an array or a module somewhere inside."""
    if isinstance(value, _PLAIN):
        return
    found = find_hidden(value)
    if found is None:
        return
    path, obj = found
    cls = type(module).__name__
    holder = type(value).__name__
    if is_module(obj):
        what = f"a {type(obj).__name__} module"
        fix = (
            f"make {holder} a pax.Module (its modules become submodules), or assign the module "
            f"to its own attribute: self.{name}_module = module"
        )
    else:
        what = f"an array ({describe(obj)})"
        fix = (
            f"assign the array to a registered attribute, e.g. "
            f"self.register_parameter({name + '_array'!r}, array), register the whole value if "
            f"it is a pytree: self.register_state_subtree({name!r}, value), or make {holder} "
            f"a pax.Module"
        )
    raise TypeError(
        f"{cls}.{name}{path}: {what} inside a {holder}, which is a static attribute: it would "
        f"never be trained, be baked into the compiled program, and be invisible to pax.check. "
        f"Fix: {fix}."
    )


def check_not_shadowing(module: Any, name: str, attr: Any) -> None:
    """Refuses plain assignment of a name the class defines as a method."""
    if isinstance(attr, (types.FunctionType, types.MethodType, classmethod, staticmethod)):
        cls = type(module).__name__
        raise ValueError(
            f"{cls}.{name}: cannot assign {name!r}: it would shadow the "
            f"{type(attr).__name__} {cls}.{name} (calls like model.{name}(...) would then "
            f"fail far from here). Fix: choose another name, e.g. self.{name}_ = value."
        )


def layout_after_assignment(
    module: Any, name: str, value: Any, layout: Layout, kind: Kind | None
) -> Layout:
    """The layout of `module` once `value` is assigned to the unregistered (or module) `name`.

    Modules and containers of modules become children; arrays are refused (they would be
    static); everything else is static.
    """
    cls = type(module).__name__
    if is_module(value):
        check_tree_shape(module, name, value)
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
        check_not_hidden(module, name, value)  # invariant 4: no array hidden in a static
        return layout.with_static(name)
    if isinstance(value, NDARRAY_TYPES):
        raise TypeError(
            f"{cls}.{name}: cannot assign a {describe(value)} array to an unregistered "
            f"attribute; it would be static and baked into the compiled program. Fix: "
            f"{REGISTER_FIX.format(name=name)}."
        )
    check_not_hidden(module, name, value)  # invariant 4: no array hidden in a static
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
        check_tree_shape(module, name, value)
    elif kind is Kind.MODULE_SUBTREE:
        check_module_subtree(module, name, value)
    else:
        check_subtree(module, name, kind, value)
    if old is not None and old is not kind and FAMILY[old] == FAMILY[kind]:
        return old  # re-registering a frozen parameter keeps it frozen
    return kind


def module_name(module: Any, name: Any) -> str:
    """Checks the ``name=`` given to a module: a non-empty string."""
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"{type(module).__name__}: name must be a non-empty string, got {name!r}. Fix: "
            f"{type(module).__name__}(..., name='encoder'), or leave it out."
        )
    return name
