"""Functional views of a module tree: parameters(), states(), freeze(), train(), ...

Each view copies the module tree (`rebuild`) and lets a visit function edit the attribute
dict of every copy. Arrays are shared, never copied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax

from pax._src.core import registry
from pax._src.core.registry import Kind, Layout, is_module

T = TypeVar("T")

Visit = Callable[[dict, Layout], None]


def pick(mine: Any, theirs: Any) -> Any:
    return mine if theirs is None else theirs


def _nonify(value: Any, kind: Kind) -> Any:
    if kind in registry.LEAF_KINDS or value is None:
        return None
    return jax.tree_util.tree_map(_to_none, value)


def _to_none(_: Any) -> None:
    return None


def keep_only(keep: frozenset) -> Visit:
    """A visit that sets every leaf whose kind is not in `keep` to None (per-layout cached)."""
    cache: dict[Layout, tuple[tuple[str, Kind], ...]] = {}

    def visit(d: dict, layout: Layout) -> None:
        todo = cache.get(layout)
        if todo is None:
            todo = cache[layout] = tuple(
                (name, kind)
                for name, kind in zip(layout.children, layout.kinds)
                if kind not in keep and kind not in registry.MODULE_KINDS
            )
        for name, kind in todo:
            d[name] = _nonify(d[name], kind)

    return visit


ONLY_PARAMETERS = keep_only(registry.TRAINABLE)
ONLY_STATES = keep_only(registry.NON_TRAINABLE)


def map_kinds(mapping: dict[Kind, Kind]) -> Visit:
    """A visit that replaces each kind through `mapping` (e.g. `registry.FREEZE`)."""

    def visit(d: dict, layout: Layout) -> None:
        new = layout.map_kinds(mapping)
        if new is not layout:
            registry.set_layout(d, new)

    return visit


def set_training(flag: bool) -> Visit:
    """A visit that sets the static `training` flag."""

    def visit(d: dict, layout: Layout) -> None:
        if d.get("training") is not flag or "training" not in layout.static:
            d["training"] = flag
            registry.set_layout(d, layout.with_static("training"))

    return visit


def rebuild(module: T, visit: Visit) -> T:
    """Copies `module` and its submodules, letting `visit` edit each copy's attribute dict."""
    d = dict(module.__dict__)
    layout = registry.layout_in(d)
    for name, kind in layout.module_children:
        if kind is Kind.MODULE:
            if d[name] is not None:
                d[name] = rebuild(d[name], visit)
        else:
            d[name] = jax.tree_util.tree_map(
                lambda m: rebuild(m, visit), d[name], is_leaf=is_module
            )
    visit(d, layout)
    new = object.__new__(type(module))
    new.__dict__.update(d)
    return new
