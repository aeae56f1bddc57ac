"""Selecting leaves by key path: ``where=`` of `freeze`, `unfreeze`, `parameters`, `states`.

A selection (`Where`) is a regular expression searched (`re.search`) in each leaf's key-path
string, as `jax.tree_util.keystr` writes the path from the root module (``".layers[0].bias"``,
``".params['linear']['w']"``), or a predicate of ``(key_path, leaf)`` (or of the key path
alone). `pax.optim.by_key_path` and ``pax.optim.adamw(mask=...)`` take the same forms.

Freezing single leaves of a parameter *attribute* re-classifies it
(`Kind.FROZEN_PARAMETER`). Inside a parameter *subtree* (the ``params`` dict of a
`pax.from_haiku` module) the frozen leaves are recorded in the module's interned `Layout`
(`Layout.frozen`, key paths inside the subtree), so a partial freeze is static treedef data:
freezing the same leaves again gives the same treedef, and a compiled step is reused. A subtree
whose leaves are all frozen becomes a `Kind.FROZEN_PARAMETER_SUBTREE`, one with none frozen a
plain `Kind.PARAMETER_SUBTREE`: each selection has exactly one layout.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np

from pax._src.core import registry
from pax._src.core.inspect_shapes import iter_modules
from pax._src.core.registry import Kind, Layout
from pax._src.core.views import ONLY_PARAMETERS, ONLY_STATES, rebuild

T = TypeVar("T")

Where = str | re.Pattern | Callable[..., Any]
Predicate = Callable[[str, Any], Any]

_EXAMPLES = (
    r"where='\.bias$' (a regular expression searched in the key path), or "
    "where=lambda path, leaf: path.endswith('.bias') and leaf.ndim == 1"
)
_SHOWN = 6  # key paths listed when a selection matches nothing


def as_predicate(where: Where, owner: str) -> Predicate:
    """Returns ``match(key_path, leaf)`` for a `Where` (a regex, or a predicate of one or two
    arguments); `owner` names the caller in errors.

    Raises:
      TypeError: if `where` is neither a string, a compiled pattern nor a function of
        ``(key_path, leaf)`` or ``(key_path)``.
      ValueError: if `where` is not a valid regular expression.

    Example:
      >>> match = as_predicate(r"\\.bias$", "freeze")
      >>> match(".layers[0].bias", None), match(".layers[0].weight", None)
      (True, False)
      >>> as_predicate(lambda path: "w" in path, "freeze")(".w", None)
      True
    """
    if isinstance(where, str):
        try:
            where = re.compile(where)
        except re.error as error:
            raise ValueError(
                f"{owner}: where={where!r} is not a valid regular expression ({error}). Fix: "
                f"escape special characters with re.escape or a backslash, e.g. {_EXAMPLES}."
            ) from None
    if isinstance(where, re.Pattern):
        search = where.search
        return lambda path, leaf: search(path) is not None
    if not callable(where):
        raise TypeError(
            f"{owner}: where must be a regular expression (str) or a function of (key_path, "
            f"leaf), got {type(where).__name__}. Fix: {_EXAMPLES}."
        )
    if _takes_one_argument(where):
        fn = where
        return lambda path, leaf: fn(path)
    return where


def _takes_one_argument(fn: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: call them with both
        return False
    try:
        signature.bind("", None)
    except TypeError:
        return True
    return False


def describe_where(where: Where) -> str:
    """How `where` is shown in messages: the pattern, or the function's name."""
    if isinstance(where, re.Pattern):
        return repr(where.pattern)
    if isinstance(where, str):
        return repr(where)
    return f"the function {getattr(where, '__qualname__', type(where).__name__)}"


def _nothing_selected(owner: str, where: Where, what: str, paths: list[str]) -> ValueError:
    shown = ", ".join(paths[:_SHOWN]) + (
        f", ... ({len(paths)} in all)" if len(paths) > _SHOWN else ""
    )
    return ValueError(
        f"{owner}: where={describe_where(where)} selects no {what} (most likely a typo). The "
        f"{what} key paths are: {shown or 'none'}. Fix: match one of them, e.g. "
        f"where=r'\\.bias$' or where=r'^\\.layers\\[0\\]'."
    )


# --- layers of a stack: ``.blocks[3].weight`` names a row of ``.blocks.stacked.weight`` ------


def _runs(rows: list[int], n: int, action: str) -> str:
    """``pax.nn.Sequential(stack[0:3], stack[3:4].freeze())`` for the selected `rows`."""
    parts, start = [], 0
    for i in range(1, n + 1):
        if i == n or (i in rows) != (start in rows):
            parts.append(f"stack[{start}:{i}]" + (f".{action}()" if start in rows else ""))
            start = i
    return f"pax.nn.Sequential({', '.join(parts)})"


def check_layer_selection(
    module: Any, match: Predicate, owner: str, where: Where, action: str | None
) -> None:
    """Raises if `where` selects single layers of a stack (``.blocks[3].weight``) that are rows
    of one stacked array (``.blocks.stacked.weight``): the array is one leaf with one kind.

    A module stacking layers tells which child holds them with the hook
    ``_stacked_layers(self) -> (attribute name, n)`` (`pax.nn.Stack`); each of its leaves
    at ``<stack>.<name><inner>`` is also matched as ``<stack>[i]<inner>`` for ``i < n``, with
    the shape of one row.

    `action` (``"freeze"`` or ``"unfreeze"``, None for ``parameters(where=...)``) picks the fix.

    Raises:
      ValueError: if a layer path matches where the stacked array's own path does not.
    """
    pattern = re.compile(where) if isinstance(where, str) else where

    def hit(path: str, leaf: Any, stack_end: int) -> bool:
        # A pattern must name the stack (e.g. ``\.blocks\[3\]``), not only what follows the
        # index: ``\[0\]\.weight`` meant for ``.layers[0].weight`` is no layer selection.
        if not isinstance(pattern, re.Pattern):
            return bool(match(path, leaf))
        found = pattern.search(path)
        return found is not None and (found.start() < stack_end or stack_end == 0)

    for prefix, _, sub in iter_modules(module):
        hook = getattr(sub, "_stacked_layers", None)
        if hook is None:
            continue
        name, n = hook()
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(sub.__dict__[name]):
            inner = jax.tree_util.keystr(key_path)
            real = f"{prefix}.{name}{inner}"
            if match(real, leaf):
                continue
            row = jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype) if np.ndim(leaf) else leaf
            rows = [i for i in range(n) if hit(f"{prefix}[{i}]{inner}", row, len(prefix))]
            if rows:
                cls, at = type(sub).__name__, prefix or "model"
                fix = (
                    f"split it and {action} a part, {at} = {_runs(rows, n, action)} where "
                    f"stack is the {cls}"
                    if action
                    else f"select in the layers as modules, {at}[{rows[0]}] (a layer) or "
                    f"{at}[{rows[0]}:{rows[-1] + 1}] (a {cls})"
                )
                raise ValueError(
                    f"{owner}: where={describe_where(where)} selects layer(s) {rows} of the "
                    f"{type(sub).__name__} at {prefix or '<root>'} ({prefix}[{rows[0]}]{inner}), "
                    f"but a {type(sub).__name__} keeps each array of its {n} layers as one "
                    f"stacked array, {real}, frozen or trainable as a whole. Fix: {fix}; or "
                    f"select the whole array, where=r'{re.escape(real)}$'."
                )


# --- parameters(where=...) and states(where=...) -------------------------------------------------


def select(module: T, where: Where, states: bool) -> T:
    """`Module.parameters(where=...)` / `states(where=...)`: the view with only the selected
    leaves kept. Raises if `where` selects no leaf of the module (of any kind)."""
    owner = f"{type(module).__name__}.{'states' if states else 'parameters'}"
    match = as_predicate(where, owner)
    check_layer_selection(module, match, owner, where, None)
    paths: list[str] = []
    found = False

    def pick(path: tuple, leaf: Any) -> Any:
        nonlocal found
        key = jax.tree_util.keystr(path)
        paths.append(key)
        if match(key, leaf):
            found = True
            return leaf
        return None

    picked = jax.tree_util.tree_map_with_path(pick, module)
    if not found:
        raise _nothing_selected(owner, where, "leaf", paths)
    return rebuild(picked, ONLY_STATES if states else ONLY_PARAMETERS)


# --- freeze(where=...) and unfreeze(where=...) ---------------------------------------------------

_LEAF = frozenset({Kind.PARAMETER, Kind.FROZEN_PARAMETER})
_SUBTREE = frozenset({Kind.PARAMETER_SUBTREE, Kind.FROZEN_PARAMETER_SUBTREE})


def set_frozen(module: T, where: Where, frozen: bool) -> T:
    """`Module.freeze(where=...)` / `unfreeze(where=...)`: a copy where the parameters that
    `where` selects (trainable or frozen) are frozen, or trainable again.

    Raises:
      ValueError: if `where` selects no parameter, listing the parameters' key paths.
    """
    owner = f"{type(module).__name__}.{'freeze' if frozen else 'unfreeze'}"
    match = as_predicate(where, owner)
    check_layer_selection(module, match, owner, where, "freeze" if frozen else "unfreeze")
    paths: list[str] = []
    found = False

    def visit(d: dict, layout: Layout, prefix: str) -> None:
        nonlocal found
        kinds: dict[str, Kind] = {}
        leaf_freezes: dict[str, frozenset[str]] = {}
        for name, kind in zip(layout.children, layout.kinds):
            if kind in _LEAF and d[name] is not None:
                paths.append(prefix + "." + name)
                if match(paths[-1], d[name]):
                    found = True
                    kinds[name] = Kind.FROZEN_PARAMETER if frozen else Kind.PARAMETER
            elif kind in _SUBTREE and d[name] is not None:
                pairs = jax.tree_util.tree_leaves_with_path(d[name])
                inner = [jax.tree_util.keystr(p) for p, _ in pairs]
                hits = set()
                for sub, (_, leaf) in zip(inner, pairs):
                    paths.append(f"{prefix}.{name}{sub}")
                    if match(paths[-1], leaf):
                        hits.add(sub)
                if not hits:
                    continue
                found = True
                every = frozenset(inner)
                before = (
                    every
                    if kind is Kind.FROZEN_PARAMETER_SUBTREE
                    else every & layout.frozen_in.get(name, frozenset())
                )
                after = before | hits if frozen else before - hits
                whole = after == every
                kinds[name] = Kind.FROZEN_PARAMETER_SUBTREE if whole else Kind.PARAMETER_SUBTREE
                leaf_freezes[name] = frozenset() if whole else frozenset(after)
        if kinds or leaf_freezes:
            new = layout.with_leaf_freezes(kinds, leaf_freezes)
            if new is not layout:
                registry.set_layout(d, new)

    result = rebuild(module, visit, with_paths=True)
    if not found:
        raise _nothing_selected(owner, where, "parameter", paths)
    return result
