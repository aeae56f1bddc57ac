"""The shape invariant of a module tree: no cycle, bounded depth (checked at assignment).

JAX flattens a module recursively, and so do pax's views: a module that contains itself would
never finish flattening (the interpreter is left in `RecursionError`), and a very deep chain
exhausts Python's recursion limit. Both are refused where they are made, at assignment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax

from pax._src.core.registry import LAYOUT_KEY, is_module

MAX_NESTING = 256


def _modules_in(value: Any) -> list[Any]:
    return [x for x in jax.tree_util.tree_leaves(value, is_leaf=is_module) if is_module(x)]


def _child_modules(module: Any) -> Iterator[Any]:
    """The modules directly under `module`: registered ones, and those put in a static list or
    dict after it was assigned (flatten reads those as children too)."""
    d = module.__dict__
    layout = d.get(LAYOUT_KEY)
    if layout is None:
        return
    for name, _ in layout.module_children:
        yield from _modules_in(d[name])
    for name in layout.static:
        if isinstance(d.get(name), (list, dict)):
            yield from _modules_in(d[name])


def check_tree_shape(module: Any, name: str, value: Any) -> None:
    """Invariant: the modules under a module form a tree without cycles, at most `MAX_NESTING`
    deep, so flatten (recursive, in JAX and here) always ends. Checked at assignment, on the
    modules `value` reaches (an iterative walk: no recursion of its own)."""
    cls = type(module).__name__
    stack = [(m, 1) for m in _modules_in(value)]
    seen: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if node is module:
            raise ValueError(
                f"{cls}.{name}: this value contains the {cls} module itself, which would then "
                f"contain itself (a cycle): flattening it would never end. Fix: do not store "
                f"a module inside itself; pass the parent where it is needed, e.g. "
                f"`self.child(x, parent=self)`."
            )
        if id(node) in seen:
            continue
        seen.add(id(node))
        if depth + 1 > MAX_NESTING:  # `module` itself is one more level
            raise ValueError(
                f"{cls}.{name}: this module nests more than {MAX_NESTING} modules inside one "
                f"another: flattening it would exhaust Python's recursion limit. Fix: keep long "
                f"chains flat, e.g. pax.nn.Sequential(*layers), or pax.nn.Stack for repeated "
                f"blocks."
            )
        stack.extend((child, depth + 1) for child in _child_modules(node))
