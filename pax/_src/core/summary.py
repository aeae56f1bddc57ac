"""`repr` and `summary()` of modules.

The repr is bounded for huge models: a container of submodules shows its first `MAX_ENTRIES`
entries then ``... and N more``, a module its first `MAX_ATTRIBUTES` attributes, and a tree of
arrays (a parameter dict) at most `MAX_VALUE_CHARS` characters then ``... (N leaves)``. The
summary has one row per module; its shape cells hold at most `MAX_CELL_CHARS` characters.
"""

from __future__ import annotations

from typing import Any

import jax

from pax._src.core import pytree, registry
from pax._src.core.inspect_shapes import Row, module_rows, record_shapes
from pax._src.core.registry import is_module
from pax._src.core.sharing import find_shared
from pax._src.describe import describe, is_array_like

MAX_ENTRIES = 8
MAX_ATTRIBUTES = 32
MAX_VALUE_CHARS = 200
MAX_CELL_CHARS = 48  # the input, output and arrays columns of summary(*inputs)


def _array_repr(x: Any) -> str:
    return describe(x) if x is None or is_array_like(x) else repr(x)


def _more(n: int, what: str = "more") -> str:
    return f"... and {n:,} {what}"


def _container_repr(items: list[str], indent: int, open_: str, close: str) -> str:
    pad = "  " * (indent + 1)
    shown = items[:MAX_ENTRIES]
    if len(items) > MAX_ENTRIES:
        shown.append(_more(len(items) - MAX_ENTRIES))
    inner = ",\n".join(pad + item for item in shown)
    return f"{open_}\n{inner},\n{'  ' * indent}{close}"


def truncate(text: str, limit: int, count: int, what: str) -> str:
    """`text` if it has at most `limit` characters, else its start and ``... (count what)``.

    Example:
      >>> truncate("a, b, c, d", 4, 4, "leaves")
      'a, b... (4 leaves)'
    """
    return text if len(text) <= limit else f"{text[:limit].rstrip(' ,')}... ({count:,} {what})"


def _leaves_repr(value: Any) -> str:
    text = jax.tree_util.tree_map(_array_repr, value).__repr__().replace("'", "")
    return truncate(text, MAX_VALUE_CHARS, len(jax.tree_util.tree_leaves(value)), "leaves")


def _value_repr(value: Any, indent: int) -> str:
    if is_module(value):
        return module_repr(value, indent)
    if isinstance(value, (list, tuple)) and any(is_module(v) for v in value):
        items = [_value_repr(v, indent + 1) for v in value[: MAX_ENTRIES + 1]]
        items += [""] * (len(value) - len(items))  # counted, never shown
        brackets = ("[", "]") if isinstance(value, list) else ("(", ")")
        return _container_repr(items, indent, *brackets)
    if isinstance(value, dict) and any(is_module(v) for v in value.values()):
        pairs = list(value.items())
        items = [f"{k!r}: {_value_repr(v, indent + 1)}" for k, v in pairs[: MAX_ENTRIES + 1]]
        items += [""] * (len(pairs) - len(items))
        return _container_repr(items, indent, "{", "}")
    if is_array_like(value):
        return describe(value)
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    leaves = jax.tree_util.tree_leaves(value)
    if leaves and all(hasattr(v, "shape") for v in leaves):
        return _leaves_repr(value)
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else f"{text[:MAX_VALUE_CHARS]}..."


def module_repr(module: Any, indent: int = 0) -> str:
    """One line per module when it fits, nested otherwise; bounded (see the module docstring).

    Example:
      >>> import pax
      >>> text = repr(pax.nn.Sequential(*[pax.nn.Linear(2, 2) for _ in range(200)]))
      >>> text.splitlines()[-3:], len(text) < 1000
      (['    ... and 192 more,', '  ],', ')'], True)
    """
    d = module.__dict__
    layout = pytree.read_layout(module)
    parts = []
    names = [n for n in layout.static if not (n == "training" and d[n] is True)]
    children = list(zip(layout.children, layout.kinds))
    hidden = max(0, len(names) + len(children) - MAX_ATTRIBUTES)
    for name in names[:MAX_ATTRIBUTES]:
        parts.append(f"{name}={_value_repr(d[name], indent + 1)}")
    for name, kind in children[: max(0, MAX_ATTRIBUTES - len(names))]:
        text = _value_repr(d[name], indent + 1)
        if kind not in registry.TRAINABLE and kind not in registry.MODULE_KINDS:
            text += f" ({kind.value})"
        parts.append(f"{name}={text}")
    if hidden:
        parts.append(_more(hidden, "more attributes"))
    cls = type(module).__name__
    one_line = f"{cls}({', '.join(parts)})"
    if "\n" not in one_line and len(one_line) + 2 * indent <= 100:
        return one_line
    pad = "  " * (indent + 1)
    body = "".join(f"{pad}{p},\n" for p in parts)
    return f"{cls}(\n{body}{'  ' * indent})"


# --- summary() ---------------------------------------------------------------------------------


def human_bytes(n: int) -> str:
    """``n`` bytes in B, KiB, MiB, GiB or TiB.

    Example:
      >>> human_bytes(36), human_bytes(1536), human_bytes(44_740_000)
      ('36 B', '1.5 KiB', '42.7 MiB')
    """
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _calls_cell(calls: list[tuple[str, str]], which: int) -> str:
    if not calls:
        return "-"
    text = calls[0][which] or "-"
    text = truncate(text, MAX_CELL_CHARS, text.count(", ") + 1, "values")
    return f"{text} (x{len(calls)})" if which == 1 and len(calls) > 1 else text


def _own_cell(row: Row) -> str:
    """The module's own arrays; inside a Stack, one layer's (the stacked axes dropped)."""
    k = len(row.layers)
    text = " ".join(f"{path[1:]}={describe(_one_layer(x, k))}" for path, x in row.own)
    return truncate(text, MAX_CELL_CHARS, len(row.own), "arrays")


def _one_layer(x: Any, k: int) -> Any:
    if k == 0 or not is_array_like(x) or len(x.shape) < k:
        return x
    return jax.ShapeDtypeStruct(x.shape[k:], x.dtype)


def _count_cell(value: int, layers: tuple[int, ...]) -> str:
    """``n`` or, inside a Stack of `n` layers, ``nxper_layer`` (e.g. ``4x42``)."""
    n = 1
    for size in layers:
        n *= size
    if not layers or value == 0 or value % n:
        return f"{value:,}"
    return f"{'x'.join(map(str, layers))}x{value // n:,}"


def summary(module: Any, *example_inputs: Any, **kwargs: Any) -> str:
    """The table behind `Module.summary` (see its docstring)."""
    rows, total = module_rows(module)
    header = ["module", "type"]
    right = {"params", "states", "leaves t/f/s", "bytes"}
    table: list[list[str]] = []
    calls = record_shapes(module, example_inputs, kwargs) if example_inputs or kwargs else None
    if calls is not None:
        header += ["input", "output", "arrays"]
    header += ["params", "states", "leaves t/f/s", "bytes"]
    for i, row in enumerate(rows):
        line = ["  " * row.depth + (row.path or type(row.module).__name__)]
        name = getattr(row.module, "name", None)
        kind = type(row.module).__name__ + (f" {name!r}" if isinstance(name, str) else "")
        line.append(kind + "".join(f" x{n}" for n in row.layers))
        if calls is not None:
            line += [_calls_cell(calls[i], 0), _calls_cell(calls[i], 1), _own_cell(row)]
        c = row.counts
        line += [_count_cell(c.params, row.layers), _count_cell(c.states, row.layers)]
        line += [c.leaves, human_bytes(c.nbytes)]
        table.append(line)
    blank = [""] * (len(header) - 6)
    t = total
    table.append(["total", "", *blank, f"{t.params:,}", f"{t.states:,}", t.leaves])
    table[-1].append(human_bytes(t.nbytes))
    widths = [max(len(r[j]) for r in [header, *table]) for j in range(len(header))]

    def fmt(cells: list[str]) -> str:
        out = [
            f"{cell:>{w}}" if name in right else f"{cell:<{w}}"
            for cell, w, name in zip(cells, widths, header)
        ]
        return "  ".join(out).rstrip()

    lines = [fmt(header), *(fmt(r) for r in table)]
    for first, later in find_shared(module):
        lines.append(
            f"warning: {later or '<root>'} is the same object as {first or '<root>'}; JAX "
            f"transforms would turn it into two copies (see pax.check)."
        )
    return "\n".join(lines)


# --- treescope ---------------------------------------------------------------------------------


def treescope_repr(module: Any, path: str | None, subtree_renderer: Any) -> Any:
    """`Module.__treescope_repr__`: a foldable ``Class(attribute=..., ...)`` tree in treescope.

    Shows the static attributes (but ``training=True``) then the registered children, each
    rendered by treescope itself (arrays as array summaries, submodules as trees). Needs the
    optional package ``treescope``; only treescope calls it.

    Example:
      >>> import pax
      >>> treescope = __import__("pytest").importorskip("treescope")
      >>> "Linear" in treescope.render_to_text(pax.nn.Linear(2, 3))
      True
    """
    from treescope import repr_lib  # type: ignore[import-untyped, import-not-found, unused-ignore]

    d = module.__dict__
    layout = pytree.read_layout(module)
    attributes = {n: d[n] for n in layout.static if not (n == "training" and d[n] is True)}
    attributes.update((name, d[name]) for name in layout.children)
    return repr_lib.render_object_constructor(
        object_type=type(module),
        attributes=attributes,
        path=path,
        subtree_renderer=subtree_renderer,
    )
