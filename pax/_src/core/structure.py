"""Explaining why two pytrees (of modules) do not have the same structure."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pax._src.core.layout import EMPTY
from pax._src.core.module import Module


def _static_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _name(x: Any) -> str:
    if x is None:
        return "None"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{type(x).__name__}{tuple(x.shape)} {x.dtype}"
    return type(x).__name__


def _is_leaf_value(x: Any) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x)) and x is not None


def describe_difference(
    a: Any,
    b: Any,
    *,
    none_is_wildcard: bool = False,
    check_shapes: bool = False,
    names: tuple[str, str] = ("expected", "got"),
    path: str = "",
) -> str | None:
    """Returns a sentence naming the first key path where `a` and `b` differ, or None.

    Args:
      a: the reference tree.
      b: the tree compared with it.
      none_is_wildcard: treat None as matching any subtree (the rule of `Module.update`).
      check_shapes: also compare the shape and dtype of array leaves.
      names: how to call `a` and `b` in the sentence.
      path: key path prefix of `a` and `b`.

    Example:
      >>> describe_difference({"w": 1}, {"v": 1})
      "at the root: dict keys ['w'] (expected) vs ['v'] (got)"
    """
    na, nb = names
    where = f"at {path}" if path else "at the root"
    if none_is_wildcard and (a is None or b is None):
        return None
    if isinstance(a, Module) or isinstance(b, Module):
        if type(a) is not type(b):
            return f"{where}: {_name(a)} ({na}) vs {_name(b)} ({nb})"
        return _module_difference(a, b, none_is_wildcard, check_shapes, names, path)
    if a is None or b is None:
        if a is None and b is None:
            return None
        return f"{where}: {_name(a)} ({na}) vs {_name(b)} ({nb})"
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return (
                f"{where}: {type(a).__name__} of length {len(a)} ({na}) vs "
                f"{type(b).__name__} of length {len(b)} ({nb})"
            )
        for i, (x, y) in enumerate(zip(a, b)):
            diff = describe_difference(
                x,
                y,
                none_is_wildcard=none_is_wildcard,
                check_shapes=check_shapes,
                names=names,
                path=f"{path}[{i}]",
            )
            if diff:
                return diff
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return (
                f"{where}: dict keys {sorted(map(str, a))} ({na}) vs {sorted(map(str, b))} ({nb})"
            )
        for k in a:
            diff = describe_difference(
                a[k],
                b[k],
                none_is_wildcard=none_is_wildcard,
                check_shapes=check_shapes,
                names=names,
                path=f"{path}[{k!r}]",
            )
            if diff:
                return diff
        return None
    if _is_leaf_value(a) and _is_leaf_value(b):
        if check_shapes and (np.shape(a) != np.shape(b) or _dtype(a) != _dtype(b)):
            return f"{where}: {_name(a)} ({na}) vs {_name(b)} ({nb})"
        return None
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if ta != tb:
        return f"{where}: {ta} ({na}) vs {tb} ({nb})"
    return None


def _dtype(x: Any) -> Any:
    return getattr(x, "dtype", type(x))


def _module_difference(
    a: Module,
    b: Module,
    none_is_wildcard: bool,
    check_shapes: bool,
    names: tuple[str, str],
    path: str,
) -> str | None:
    na, nb = names
    cls = type(a).__name__
    da, db = a.__dict__, b.__dict__
    la, lb = da.get("_pax_layout", EMPTY), db.get("_pax_layout", EMPTY)
    if la is not lb:
        for name in dict.fromkeys(la.children + lb.children + la.static + lb.static):
            ka = la.kind_of.get(name, "static attribute" if name in la.static else "absent")
            kb = lb.kind_of.get(name, "static attribute" if name in lb.static else "absent")
            ka = getattr(ka, "value", ka)
            kb = getattr(kb, "value", kb)
            if ka != kb:
                return (
                    f"at {path}.{name}: {cls}.{name} is {_article(ka)} ({na}) but "
                    f"{_article(kb)} ({nb})"
                )
        return f"at {path or 'the root'}: {cls} attributes are in another order ({na} vs {nb})"
    for name in la.static:
        va, vb = da[name], db[name]
        if not _static_equal(va, vb):
            return (
                f"at {path}.{name}: static attribute {cls}.{name} is {va!r} ({na}) but {vb!r} "
                f"({nb})"
            )
    for name in la.children:
        diff = describe_difference(
            da[name],
            db[name],
            none_is_wildcard=none_is_wildcard,
            check_shapes=check_shapes,
            names=names,
            path=f"{path}.{name}",
        )
        if diff:
            return diff
    return None


def _article(kind: str) -> str:
    if kind == "absent":
        return "absent"
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
