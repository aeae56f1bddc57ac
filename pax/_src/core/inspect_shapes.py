"""The rows of `summary()`: the module tree with its counts, and an abstract pass for shapes.

`module_rows` walks the module tree (one row per module occurrence, as flatten sees it) and
counts each module's arrays by kind. `record_shapes` calls the model under `jax.eval_shape`
(nothing is allocated, nothing is computed) with `recording.recording` active, and returns the
input and output shapes of every call of every submodule, in the order of `module_rows`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from pax._src.core import pytree, registry, tracing
from pax._src.core.recording import recording
from pax._src.core.registry import Kind, is_module
from pax._src.describe import describe, is_array_like

_FROZEN = frozenset({Kind.FROZEN_PARAMETER, Kind.FROZEN_PARAMETER_SUBTREE})


@dataclasses.dataclass
class Counts:
    """Scalars and arrays of a module tree, by kind (trainable, frozen, state), and bytes."""

    params: int = 0
    states: int = 0
    trainable: int = 0
    frozen: int = 0
    state: int = 0
    nbytes: int = 0

    def add(self, other: Counts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    @property
    def leaves(self) -> str:
        """``trainable/frozen/state`` leaf counts."""
        return f"{self.trainable}/{self.frozen}/{self.state}"


@dataclasses.dataclass
class Row:
    """One module occurrence: its key path, depth, the module, and its recursive counts."""

    path: str
    depth: int
    module: Any
    counts: Counts
    own: list[tuple[str, Any]]  # (key path inside the module, leaf) of its own arrays
    layers: tuple[int, ...] = ()  # sizes of the stacks it is in (`iter_layers`)


def iter_modules(module: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, int, Any]]:
    """Yields ``(key path, depth, module)`` for `module` and every submodule, depth first.

    Example:
      >>> import pax
      >>> [p for p, _, _ in iter_modules(pax.nn.Sequential(pax.nn.Linear(1, 1)))]
      ['', '.modules[0]']
    """
    for path_, depth_, sub, _ in iter_layers(module, path, depth):
        yield path_, depth_, sub


def iter_layers(
    module: Any, path: str = "", depth: int = 0, layers: tuple[int, ...] = ()
) -> Iterator[tuple[str, int, Any, tuple[int, ...]]]:
    """`iter_modules` with, for each module, the sizes of the stacks it is inside: a module
    whose arrays stack `n` layers along a leading axis (``stack.stacked`` of a `pax.nn.Stack`)
    has ``(n,)``. A module tells which child stacks layers with the hook
    ``_stacked_layers(self) -> (attribute name, n)``.

    Example:
      >>> import pax
      >>> stack = pax.nn.Stack(lambda key: pax.nn.Linear(1, 1, rng_key=key), 3)
      >>> [(p, n) for p, _, _, n in iter_layers(stack)]
      [('', ()), ('.stacked', (3,))]
    """
    yield path, depth, module, layers
    d = module.__dict__
    layout = pytree.read_layout(module)
    hook = getattr(module, "_stacked_layers", None)
    stacked_name, n = hook() if hook is not None else (None, 0)
    for name, kind in zip(layout.children, layout.kinds):
        inner = (*layers, n) if name == stacked_name else layers
        if kind is Kind.MODULE and d[name] is not None:
            yield from iter_layers(d[name], f"{path}.{name}", depth + 1, inner)
        elif kind is Kind.MODULE_SUBTREE:
            pairs = jax.tree_util.tree_leaves_with_path(d[name], is_leaf=is_module)
            for key_path, sub in pairs:
                if is_module(sub):
                    sub_path = f"{path}.{name}{jax.tree_util.keystr(key_path)}"
                    yield from iter_layers(sub, sub_path, depth + 1, inner)


def own_leaves(module: Any) -> list[tuple[str, Kind, Any]]:
    """``(key path, kind, leaf)`` of the arrays `module` holds itself (not in submodules).

    Example:
      >>> import pax
      >>> [(p, k.value, describe(x)) for p, k, x in own_leaves(pax.nn.Linear(2, 3))]
      [('.weight', 'parameter', 'f32[2,3]'), ('.bias', 'parameter', 'f32[3]')]
    """
    d = module.__dict__
    layout = pytree.read_layout(module)
    out = []
    for name, kind in zip(layout.children, layout.kinds):
        if kind in registry.MODULE_KINDS:
            continue
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(d[name]):
            out.append((f".{name}{jax.tree_util.keystr(key_path)}", kind, leaf))
    return out


def _size_and_bytes(leaf: Any) -> tuple[int, int]:
    size = int(np.prod(leaf.shape)) if is_array_like(leaf) else int(np.size(leaf))
    itemsize = np.dtype(leaf.dtype).itemsize if is_array_like(leaf) else 0
    return size, size * itemsize


def count(leaves: list[tuple[str, Kind, Any]]) -> Counts:
    """Counts `leaves` (as returned by `own_leaves`) by kind."""
    counts = Counts()
    for _, kind, leaf in leaves:
        size, nbytes = _size_and_bytes(leaf)
        counts.nbytes += nbytes
        if kind in registry.TRAINABLE:
            counts.params += size
            counts.trainable += 1
        else:
            counts.states += size
            if kind in _FROZEN:
                counts.frozen += 1
            else:
                counts.state += 1
    return counts


def module_rows(module: Any) -> tuple[list[Row], Counts]:
    """One `Row` per module occurrence (recursive counts), and the totals over unique arrays.

    An array reachable twice (a shared module or weight) is counted in every row that holds
    it, and once in the totals.
    """
    rows: list[Row] = []
    stack: list[Row] = []
    seen: set[int] = set()
    total = Counts()
    for path, depth, sub, layers in iter_layers(module):
        leaves = own_leaves(sub)
        counts = count(leaves)
        total.add(count([leaf for leaf in leaves if id(leaf[2]) not in seen]))
        seen.update(id(leaf[2]) for leaf in leaves)
        while stack and stack[-1].depth >= depth:
            stack.pop()
        for parent in stack:
            parent.counts.add(counts)
        row = Row(path, depth, sub, counts, [(p, x) for p, _, x in leaves], layers)
        rows.append(row)
        stack.append(row)
    return rows, total


def record_shapes(module: Any, args: tuple, kwargs: dict) -> list[list[tuple[str, str]]]:
    """Calls ``module(*args, **kwargs)`` under `jax.eval_shape` and records every module call.

    Array leaves of the inputs (arrays or `jax.ShapeDtypeStruct`) are abstract; other values
    (flags, ints) are passed as they are. Returns, for each module in `iter_modules` order,
    the ``(input shapes, output shapes)`` of each of its calls.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
      >>> record_shapes(net, (jnp.ones((4, 2)),), {})
      [[('f32[4,2]', 'f32[4,1]')], [('f32[4,2]', 'f32[4,3]')], [('f32[4,3]', 'f32[4,1]')]]
    """
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    abstract = [is_array_like(x) for x in leaves]
    found: list[list[list[tuple[str, str]]]] = []

    def run(model: Any, arrays: list) -> Any:
        it = iter(arrays)
        full = [next(it) if a else x for x, a in zip(leaves, abstract)]
        call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, full)
        order = [id(sub) for _, _, sub in iter_modules(model)]
        with recording() as recorder:
            out = model(*call_args, **call_kwargs)
        found.append([recorder.calls.get(i, []) for i in order])
        return out, model  # the model is returned: its state changes are not lost

    arrays = [x for x, a in zip(leaves, abstract) if a]
    try:
        with tracing.discarding():  # modules made and changed during the call
            jax.eval_shape(run, module, arrays)
    except Exception as e:
        inputs = ", ".join(describe(x) for x in leaves) or "no inputs"
        note = getattr(e, "add_note", None)
        if note is not None:
            note(
                f"{type(module).__name__}.summary(*example_inputs): calling the model on "
                f"({inputs}) failed; pass inputs the model accepts, or call summary() "
                f"without inputs for the counts only."
            )
        raise
    return found[0]
