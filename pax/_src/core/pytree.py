"""Flatten and unflatten of modules: the hot path, run on every jitted call.

`flatten` is C-level: an `operator.attrgetter` of the module's flatten cache, the
``(children, aux)`` pair kept in its dict. When the cache is missing (a child was reassigned,
the layout or a static value changed, a tracer was assigned), the attribute lookup falls back
to ``Module.__getattr__``, which calls `compute_flat`: it reads the cached aux (layout + static
values) and picks the children out of the attribute dict with one `operator.itemgetter`. Only
the first flatten of a module (or the first after its layout, a static value or a traced
assignment changed) builds the aux, `build_aux`, which also promotes static containers that
came to hold modules. `unflatten` copies the aux's template (static values, private entries
and placeholders for the children), stores the children (and the new module's flatten cache)
with the layout's compiled `fill`, and gives the dict to an object made without ``__init__``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax

from pax._src.core import registry
from pax._src.core._jax_compat import trace_state_clean
from pax._src.core.aux import Aux, FrozenStatic, freeze_static
from pax._src.core.registry import Kind
from pax._src.core.tracing import (
    PENDING,
    check_no_leaked_tracers,
    check_pending,
    flattened_in_trace,
)
from pax._src.core.validate import check_module_subtree

flatten: Callable[[Any], tuple[tuple, Aux]] = operator.attrgetter(registry.FLAT_KEY)


def compute_flat(module: Any) -> tuple[tuple, Aux]:
    """The ``(children, aux)`` pair of `module`; cached in it when its aux is cacheable."""
    d = module.__dict__
    aux = d.get(registry.AUX_KEY)
    if aux is None:  # first flatten, changed static attributes, or tracers assigned
        if registry.is_traced(d):
            if trace_state_clean():
                check_no_leaked_tracers(module)
            else:
                flattened_in_trace(module)  # returned (or copied) by the transformation
        aux = build_aux(module)
    elif PENDING:
        check_pending()
    flat = (aux.get_children(d), aux)
    if d.get(registry.AUX_KEY) is aux:  # invariant 8: cached only with a cached aux
        d[registry.FLAT_KEY] = flat
    return flat


def wrap_getattr(getattr_: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """Wraps a subclass's own ``__getattr__`` so that the flatten cache fallback still works."""
    key = registry.FLAT_KEY

    def __getattr__(self: Any, name: str) -> Any:
        if name == key:
            return compute_flat(self)
        return getattr_(self, name)

    __getattr__.__flatten_aware__ = True  # type: ignore[attr-defined]
    return __getattr__


def flatten_with_keys(module: Any) -> tuple[tuple, Aux]:
    children, aux = flatten(module)
    return tuple(zip(aux[0].keys, children)), aux


def _dict_setter(cls: type) -> Callable[[Any, dict], None]:
    """``set_dict(obj, d)``: replaces the attribute dict of an instance of `cls` (C-level)."""
    for klass in cls.__mro__:
        descriptor = vars(klass).get("__dict__")
        if descriptor is not None and hasattr(descriptor, "__set__"):
            return descriptor.__set__
    raise TypeError(f"{cls.__name__} instances have no attribute dict")


def make_unflatten(cls: type) -> Callable[[Aux, Any], Any]:
    """``unflatten(aux, children)`` for modules of `cls`."""
    new = object.__new__
    set_dict = _dict_setter(cls)

    def unflatten(aux: Aux, children: Any) -> Any:
        d = aux.template.copy()
        aux.fill(d, children, aux)
        module: Any = new(cls)
        set_dict(module, d)
        return module

    return unflatten


def register(cls: type) -> None:
    """Registers `cls` (a `Module` class) as a pytree node with key paths."""
    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, make_unflatten(cls), flatten)


def build_aux(module: Any) -> Aux:
    """Builds (and caches, when every static value is hashable) the aux data of `module`.

    The aux is ``(layout, static values)``; unhashable static values (lists, dicts) enter it
    as content snapshots and make it uncacheable, so each flatten compares their content.
    The layout is `read_layout`'s: nothing but the caches is written.
    """
    d = module.__dict__
    layout, statics, cacheable = _read(module)
    aux = Aux((layout, statics))
    cache = cacheable and not registry.is_traced(d)
    template = {name: d[name] for name in layout.static}
    # A reference cycle made once per aux (not per call): unflattened modules reuse the aux.
    template.update(registry.template_entries(layout, aux if cache else None))
    aux.template = template
    aux.get_children = layout.get_children
    aux.fill = layout.fill_and_cache if cache else layout.fill
    if cache:
        registry.cache_aux(d, aux)
    return aux


def read_layout(module: Any) -> registry.Layout:
    """The layout flatten uses for `module`: every reader of the registry (the views,
    `submodules`, `summary`, `registry`, the guards) calls this, so all see one classification.

    A pure read: it is the stored layout, except that a static list or dict that came to hold
    modules after it was assigned (``self.layers = []`` then ``.append(...)``) reads as a
    module subtree. Nothing is written to the module. A module whose aux is cached pays one
    dict lookup.
    """
    aux = module.__dict__.get(registry.AUX_KEY)
    if aux is not None:
        return aux[0]
    return _read(module)[0]  # invariant 7: computed, never written back


def _read(module: Any) -> tuple[registry.Layout, tuple, bool]:
    """``(layout, static values, all hashable)``: the stored layout with the static
    containers that hold modules read as module subtrees, and the static values (snapshots of
    the unhashable ones)."""
    d = module.__dict__
    layout = registry.layout_in(d)
    statics: list = []
    cacheable = True
    for name in layout.static:  # the stored names: promoting one keeps the others' order
        value = d[name]
        try:
            hash(value)
        except TypeError:
            cacheable = False
            value = _snapshot(module, name, value)
            if value is None:  # it holds modules: a child (read so, not written)
                layout = layout.with_child(name, Kind.MODULE_SUBTREE)
                continue
        statics.append(value)
    return layout, tuple(statics), cacheable


def _snapshot(module: Any, name: str, value: Any) -> FrozenStatic | None:
    """The snapshot of the unhashable static `value`, or None if it holds modules (then it is
    read as a module subtree; checked as one, cycles included). One holding arrays raises."""
    frozen = freeze_static(value)
    if not (frozen.modules or frozen.arrays):
        return frozen
    cls = type(module).__name__
    if frozen.arrays:
        raise TypeError(
            f"{cls}.{name}: this {type(value).__name__} is a static attribute but now holds a "
            f"{frozen.arrays[0]} array; arrays must never be static (they would be baked into "
            f"the compiled program). Register it instead: "
            f"self.register_parameter_subtree({name!r}, value) or "
            f"self.register_state_subtree({name!r}, value)."
        )
    check_module_subtree(module, name, value)
    return None
