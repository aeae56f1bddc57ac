"""Explaining why two pytrees (of modules) do not have the same structure, and the check run
where an updated module comes back from a transformed function."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pax._src.core import pytree, registry
from pax._src.core.registry import is_module
from pax._src.describe import describe
from pax._src.errors import StructureChangedError

_STATIC_HINT = (
    "Static attributes and the registry are part of the treedef: a change made inside "
    "jax.jit / jax.grad is either lost or forces a recompilation on every call. Fix: keep values "
    "that change per call in registered state, e.g. self.register_state('count', jnp.array(0)) "
    "then self.count = self.count + 1, and do not register new attributes inside the function."
)


def _static_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


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
    if is_module(a) or is_module(b):
        if type(a) is not type(b):
            return f"{where}: {describe(a)} ({na}) vs {describe(b)} ({nb})"
        return _module_difference(a, b, none_is_wildcard, check_shapes, names, path)
    if a is None or b is None:
        if a is None and b is None:
            return None
        return f"{where}: {describe(a)} ({na}) vs {describe(b)} ({nb})"
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
            return f"{where}: {describe(a)} ({na}) vs {describe(b)} ({nb})"
        return None
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if ta != tb:
        return f"{where}: {ta} ({na}) vs {tb} ({nb})"
    return None


def _dtype(x: Any) -> Any:
    return getattr(x, "dtype", type(x))


def _module_difference(
    a: Any,
    b: Any,
    none_is_wildcard: bool,
    check_shapes: bool,
    names: tuple[str, str],
    path: str,
) -> str | None:
    na, nb = names
    cls = type(a).__name__
    da, db = a.__dict__, b.__dict__
    la, lb = pytree.read_layout(a), pytree.read_layout(b)
    if la is not lb:
        for name in dict.fromkeys(la.children + lb.children + la.static + lb.static):
            ka, kb = _kind_name(la, name), _kind_name(lb, name)
            if ka != kb:
                return (
                    f"at {path}.{name}: {cls}.{name} is {_article(ka)} ({na}) but "
                    f"{_article(kb)} ({nb})"
                )
        for name in dict.fromkeys(la.children):
            fa, fb = la.frozen_in.get(name, frozenset()), lb.frozen_in.get(name, frozenset())
            if fa != fb:
                return (
                    f"at {path}.{name}: {cls}.{name} has other leaves frozen by "
                    f"freeze(where=...): {sorted(fa)} ({na}) vs {sorted(fb)} ({nb})"
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


def _kind_name(layout: registry.Layout, name: str) -> str:
    kind = layout.kind_of.get(name)
    if kind is not None:
        return kind.value
    return "static attribute" if name in layout.static else "absent"


def _article(kind: str) -> str:
    if kind == "absent":
        return "absent"
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def check_same_structure(before: Any, after: Any, *, what: str = "the model") -> None:
    """Raises `StructureChangedError` if `after` has another treedef than `before`.

    Args:
      before: the tree that went into the function.
      after: the tree that came out.
      what: how to name the tree in the message.

    Raises:
      StructureChangedError: naming the first differing key path, with the fix.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Linear(2, 3)
      >>> pax.utils.check_same_structure(net, net.copy())
    """
    if jax.tree_util.tree_structure(before) == jax.tree_util.tree_structure(after):
        return
    diff = describe_difference(before, after, names=("before", "after"))
    raise StructureChangedError(
        f"The structure of {what} changed inside the function: {diff or 'treedefs differ'}. "
        f"{_STATIC_HINT}"
    )
