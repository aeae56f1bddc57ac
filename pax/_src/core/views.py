"""Functional views of a module tree: parameters(), states(), freeze(), train(), ...

Each view copies the module tree (`rebuild`) and lets a visit function edit the attribute
dict of every copy. Arrays are shared, never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax

from pax._src.core import pytree, registry, tracing
from pax._src.core.registry import Kind, Layout, is_module
from pax._src.core.structure import describe_difference
from pax._src.describe import describe

T = TypeVar("T")

Visit = Callable[[dict, Layout, str], None]


class _LeafMismatch(Exception):
    pass


def _is_none(x: Any) -> bool:
    return x is None


def _pick(mine: Any, theirs: Any) -> Any:
    if theirs is None:
        return mine
    if mine is not None:
        try:
            if mine.aval == theirs.aval:  # jax arrays and tracers: one cheap comparison
                return theirs
        except AttributeError:  # numpy arrays have no aval
            pass
        try:  # weak types, numpy arrays
            same = mine.shape == theirs.shape and mine.dtype == theirs.dtype
        except AttributeError:  # a leaf that is not an array: nothing to compare
            return theirs
        if not same:
            raise _LeafMismatch
    return theirs


def _leaf_text(x: Any) -> str:
    return describe(x)


def _first_leaf_difference(mine: Any, theirs: Any) -> str:
    pairs = jax.tree_util.tree_leaves_with_path(mine, is_leaf=_is_none)
    for (path, a), b in zip(pairs, jax.tree_util.tree_leaves(theirs, is_leaf=_is_none)):
        if a is not None and b is not None and (a.shape != b.shape or a.dtype != b.dtype):
            return f"at {jax.tree_util.keystr(path)}: {_leaf_text(a)} here, {_leaf_text(b)} given"
    return "a leaf differs in shape or dtype"


def merge(module: T, trees: tuple) -> T:
    """`Module.update`: the non-None leaves of each tree replace the module's, same shapes."""
    result = module
    for tree in trees:
        try:
            result = jax.tree_util.tree_map(_pick, result, tree, is_leaf=_is_none)
        except _LeafMismatch:
            raise ValueError(
                f"{type(module).__name__}.update: the tree to merge has the same structure but "
                f"{_first_leaf_difference(result, tree)}. Fix: build it from this module (e.g. "
                f"model.parameters(), or a jax.tree_util.tree_map over it), or cast it: "
                f"jax.tree_util.tree_map(lambda x: x.astype(...), tree)."
            ) from None
        except Exception:  # jax reports structure mismatches with several exception types
            diff = describe_difference(result, tree, none_is_wildcard=True)
            if diff is None:
                raise
            raise ValueError(
                f"{type(module).__name__}.update: the tree to merge has a different "
                f"structure: {diff}. Fix: build it from this module, e.g. "
                f"model.parameters() or a jax.tree_util.tree_map over it."
            ) from None
    return result


class _Partial:
    """In place of a kind in `keep_only`'s work list: a parameter subtree with leaves frozen one
    by one, of which the frozen leaves (`keep_frozen`) or the others are kept."""

    __slots__ = ("keep_frozen", "paths")

    def __init__(self, paths: frozenset[str], keep_frozen: bool) -> None:
        self.paths = paths
        self.keep_frozen = keep_frozen

    def keep(self, value: Any) -> Any:
        paths, keep_frozen = self.paths, self.keep_frozen

        def pick(path: tuple, leaf: Any) -> Any:
            return leaf if (jax.tree_util.keystr(path) in paths) is keep_frozen else None

        return jax.tree_util.tree_map_with_path(pick, value)


def _nonify(value: Any, kind: Kind | _Partial) -> Any:
    if kind in registry.LEAF_KINDS or value is None:
        return None
    if type(kind) is _Partial:
        return kind.keep(value)
    return jax.tree_util.tree_map(_to_none, value)


def _to_none(_: Any) -> None:
    return None


def keep_only(keep: frozenset, view: str) -> Visit:
    """A visit that sets every leaf whose kind is not in `keep` to None.

    A parameter subtree with leaves frozen one by one (`Layout.frozen`) keeps its frozen leaves
    as `Kind.FROZEN_PARAMETER_SUBTREE` would, and its other leaves as its own kind would; the
    modules without such subtrees pay nothing for it.
    """
    keep_frozen = Kind.FROZEN_PARAMETER_SUBTREE in keep

    def work(layout: Layout) -> tuple[tuple[str, Kind | _Partial], ...]:
        todo: list[tuple[str, Kind | _Partial]] = []
        for name, kind in zip(layout.children, layout.kinds):
            paths = layout.frozen_in.get(name)
            if paths and (kind in keep) is not keep_frozen:
                todo.append((name, _Partial(paths, keep_frozen)))
            elif kind not in keep and kind not in registry.MODULE_KINDS:
                todo.append((name, kind))
        return tuple(todo)

    def visit(d: dict, layout: Layout, _path: str) -> None:
        for name, kind in work(layout):
            d[name] = _nonify(d[name], kind)
        d[registry.VIEW_KEY] = view  # invariant 10: a partial copy is never called as a model

    return visit


ONLY_PARAMETERS = keep_only(registry.TRAINABLE, "parameters")
ONLY_STATES = keep_only(registry.NON_TRAINABLE, "states")


def map_kinds(mapping: dict[Kind, Kind]) -> Visit:
    """A visit that replaces each kind through `mapping` (e.g. `registry.FREEZE`)."""

    def visit(d: dict, layout: Layout, _path: str) -> None:
        new = layout.map_kinds(mapping)
        if new is not layout:
            registry.set_layout(d, new)

    return visit


def set_training(flag: bool) -> Visit:
    """A visit that sets the static `training` flag."""

    def visit(d: dict, layout: Layout, _path: str) -> None:
        if d.get("training") is not flag or "training" not in layout.static:
            d["training"] = flag
            registry.set_layout(d, layout.with_static("training"))

    return visit


def rebuild(
    module: T,
    visit: Visit | None,
    *,
    finish: Callable[[Any], Any] | None = None,
    with_paths: bool = False,
    stop: Callable[[Any], bool] | None = None,
) -> T:
    """Copies `module` and its submodules (arrays shared), children before parents.

    The one copy walker of the core: the views, ``freeze(where=...)`` and `Module.apply` all
    go through it.

    Args:
      module: the root module.
      visit: ``visit(d, layout, key_path)`` edits each copy's attribute dict before the copy is
        made; ``key_path`` is the module's key path from the root (``".blocks[0]"``) with
        `with_paths`, else ``""``.
      finish: called on each new module (children first); its result replaces the module.
      with_paths: compute the key paths given to `visit` (costs a key path per submodule).
      stop: submodules (below the root) for which it is true are kept as they are, not copied
        or visited.

    Returns:
      The new root (or what `finish` returned for it).
    """
    tracing.check_pending()  # once per view, not per submodule
    if stop is not None:  # the root itself is always copied
        return _copy(module, visit, finish, with_paths, "", lambda m: m is not module and stop(m))
    return _copy(module, visit, finish, with_paths, "", None)


def _copy(
    module: Any,
    visit: Visit | None,
    finish: Callable[[Any], Any] | None,
    with_paths: bool,
    prefix: str,
    stop: Callable[[Any], bool] | None,
) -> Any:
    if stop is not None and stop(module):
        return module
    layout = pytree.read_layout(module)  # flatten's (static lists filled later included)
    d = dict(module.__dict__)
    registry.drop_flat(d)
    if layout is not registry.layout_in(d):
        registry.set_layout(d, layout)  # the copy stores what its source reads as
    for name, kind in layout.module_children:
        here = f"{prefix}.{name}" if with_paths else ""
        if kind is Kind.MODULE:
            if d[name] is not None:
                d[name] = _copy(d[name], visit, finish, with_paths, here, stop)
        elif with_paths:
            d[name] = jax.tree_util.tree_map_with_path(
                lambda p, m, here=here: _copy(
                    m, visit, finish, True, here + jax.tree_util.keystr(p), stop
                ),
                d[name],
                is_leaf=is_module,
            )
        else:
            d[name] = jax.tree_util.tree_map(
                lambda m: _copy(m, visit, finish, False, "", stop),
                d[name],
                is_leaf=is_module,
            )
    if visit is not None:
        visit(d, layout, prefix)
    new = object.__new__(type(module))
    new.__dict__.update(d)
    if tracing.PENDING:
        tracing.copied(module, new)  # invariant 9: a view that carries a change may return it
    return new if finish is None else finish(new)
