"""`repr` and `summary()` of modules."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pax._src.core import pytree, registry
from pax._src.core.registry import Kind, is_module
from pax._src.core.sharing import find_shared
from pax._src.describe import describe, is_array_like


def _array_repr(x: Any) -> str:
    return describe(x) if x is None or is_array_like(x) else repr(x)


def _value_repr(value: Any, indent: int) -> str:
    if is_module(value):
        return module_repr(value, indent)
    if isinstance(value, (list, tuple)) and any(is_module(v) for v in value):
        pad = "  " * (indent + 1)
        inner = ",\n".join(pad + _value_repr(v, indent + 1) for v in value)
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        return f"{open_}\n{inner},\n{'  ' * indent}{close}"
    if isinstance(value, dict) and any(is_module(v) for v in value.values()):
        pad = "  " * (indent + 1)
        inner = ",\n".join(f"{pad}{k!r}: {_value_repr(v, indent + 1)}" for k, v in value.items())
        return f"{{\n{inner},\n{'  ' * indent}}}"
    if is_array_like(value):
        return describe(value)
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    leaves = jax.tree_util.tree_leaves(value)
    if leaves and all(hasattr(v, "shape") for v in leaves):
        return jax.tree_util.tree_map(_array_repr, value).__repr__().replace("'", "")
    return repr(value)


def module_repr(module: Any, indent: int = 0) -> str:
    """One line per module when it fits, nested otherwise."""
    pytree.ensure_promoted(module)
    d = module.__dict__
    layout = registry.layout_in(d)
    parts = []
    for name in layout.static:
        value = d[name]
        if name == "training" and value is True:
            continue
        parts.append(f"{name}={_value_repr(value, indent + 1)}")
    for name, kind in zip(layout.children, layout.kinds):
        text = _value_repr(d[name], indent + 1)
        if kind not in registry.TRAINABLE and kind not in registry.MODULE_KINDS:
            text += f" ({kind.value})"
        parts.append(f"{name}={text}")
    cls = type(module).__name__
    one_line = f"{cls}({', '.join(parts)})"
    if "\n" not in one_line and len(one_line) + 2 * indent <= 100:
        return one_line
    pad = "  " * (indent + 1)
    body = "".join(f"{pad}{p},\n" for p in parts)
    return f"{cls}(\n{body}{'  ' * indent})"


def _count(module: Any) -> tuple[int, int]:
    """(number of parameter scalars, number of state scalars) of `module`, recursively."""
    n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(module.parameters()))
    n_states = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(module.states()))
    return n_params, n_states


def _walk(module: Any, path: str, depth: int, rows: list) -> None:
    pytree.ensure_promoted(module)
    n_params, n_states = _count(module)
    rows.append(
        ("  " * depth + (path or type(module).__name__), type(module).__name__, n_params, n_states)
    )
    d = module.__dict__
    layout = registry.layout_in(d)
    for name, kind in zip(layout.children, layout.kinds):
        if kind is Kind.MODULE and d[name] is not None:
            _walk(d[name], f".{name}", depth + 1, rows)
        elif kind is Kind.MODULE_SUBTREE:
            pairs = jax.tree_util.tree_leaves_with_path(d[name], is_leaf=is_module)
            for key_path, sub in pairs:
                _walk(sub, f".{name}{jax.tree_util.keystr(key_path)}", depth + 1, rows)


def summary(module: Any) -> str:
    """A table: one row per module (indented by depth) with parameter and state counts.

    Example:
      >>> import pax
      >>> print(pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1)).summary())
      ... # doctest: +NORMALIZE_WHITESPACE
      module          type        params  states
      Sequential      Sequential      13       0
        .modules[0]   Linear           9       0
        .modules[1]   Linear           4       0
    """
    rows: list = []
    _walk(module, "", 0, rows)
    header = ("module", "type", "params", "states")
    w0 = max(len(header[0]), *(len(r[0]) for r in rows))
    w1 = max(len(header[1]), *(len(r[1]) for r in rows))
    w2 = max(len(header[2]), *(len(f"{r[2]:,}") for r in rows))
    w3 = max(len(header[3]), *(len(f"{r[3]:,}") for r in rows))
    lines = [f"{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>{w2}}  {header[3]:>{w3}}"]
    for path, cls, n_params, n_states in rows:
        lines.append(f"{path:<{w0}}  {cls:<{w1}}  {n_params:>{w2},}  {n_states:>{w3},}")
    for first, later in find_shared(module):
        lines.append(
            f"warning: {later or '<root>'} is the same object as {first or '<root>'}; JAX "
            f"transforms would turn it into two copies (see pax.check)."
        )
    return "\n".join(lines)
