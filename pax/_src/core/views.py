"""Functional views of a module tree: parameters(), states(), freeze(), train(), ..."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax

from pax._src.core import layout as _layout
from pax._src.core.layout import EMPTY, Kind, Layout

T = TypeVar("T")


# `(pax.Module,)`, filled in by pax._src.core.module (which imports this file).
MODULE_TYPES: tuple[type, ...] = ()


def is_module_instance(x: Any) -> bool:
    return isinstance(x, MODULE_TYPES)


def pick(mine: Any, theirs: Any) -> Any:
    return mine if theirs is None else theirs


def _nonify(value: Any, kind: Kind) -> Any:
    if kind in _layout.LEAF_KINDS or value is None:
        return None
    return jax.tree_util.tree_map(_to_none, value)


def _to_none(_: Any) -> None:
    return None


def keep_only(keep: frozenset) -> Callable[[dict, Layout], None]:
    """A visit that sets every leaf whose kind is not in `keep` to None (per-layout cached)."""
    cache: dict[Layout, tuple[tuple[str, Kind], ...]] = {}

    def visit(d: dict, layout: Layout) -> None:
        todo = cache.get(layout)
        if todo is None:
            todo = cache[layout] = tuple(
                (name, kind)
                for name, kind in zip(layout.children, layout.kinds)
                if kind not in keep and kind not in _layout.MODULE_KINDS
            )
        for name, kind in todo:
            d[name] = _nonify(d[name], kind)

    return visit


ONLY_PARAMETERS = keep_only(_layout.TRAINABLE)
ONLY_STATES = keep_only(_layout.NON_TRAINABLE)


def map_kinds(mapping: dict) -> Callable[[dict, Layout], None]:
    def visit(d: dict, layout: Layout) -> None:
        new = layout.map_kinds(mapping)
        if new is not layout:
            d["_pax_layout"] = new
            d.pop("_pax_aux", None)

    return visit


def set_training(flag: bool) -> Callable[[dict, Layout], None]:
    def visit(d: dict, layout: Layout) -> None:
        if d.get("training") is not flag or "training" not in layout.static:
            d["training"] = flag
            d["_pax_layout"] = layout.with_static("training")
            d.pop("_pax_aux", None)

    return visit


def rebuild(module: T, visit: Callable[[dict, Layout], None]) -> T:
    """Copies `module` and its submodules, letting `visit` edit each copy's attribute dict."""
    d = dict(module.__dict__)
    layout = d.get("_pax_layout", EMPTY)
    for name, kind in layout.module_children:
        if kind is Kind.MODULE:
            if d[name] is not None:
                d[name] = rebuild(d[name], visit)
        else:
            d[name] = jax.tree_util.tree_map(
                lambda m: rebuild(m, visit), d[name], is_leaf=is_module_instance
            )
    visit(d, layout)
    new = object.__new__(type(module))
    new.__dict__.update(d)
    return new
