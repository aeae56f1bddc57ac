"""What assigning, deleting or reading a module attribute does to its registry.

`AssignmentRules` is the part of `pax.Module` that runs on ``module.x = value``: registered
children are checked and stored (marking the module when the value is traced), modules and
containers of modules become children, arrays outside the registry are refused, everything
else becomes static. Every change drops the caches `registry.py` owns.
"""

from __future__ import annotations

from typing import Any

from pax._src.core import pytree, registry, tracing
from pax._src.core._jax_compat import Tracer, current_trace, trace_state_clean
from pax._src.core.registry import Kind, Layout, Registered
from pax._src.core.validate import (
    check_leaf,
    check_not_shadowing,
    check_state_dtype,
    check_subtree,
    layout_after_assignment,
)

_LAYOUT_KEY = registry.LAYOUT_KEY
_FLAT_KEY = registry.FLAT_KEY


def init_registry(module: Any) -> Layout:
    """Gives `module` its initial layout (only `training`, static) if it has none yet."""
    d = module.__dict__
    layout = registry.stored_layout(d)
    if layout is None:
        layout = registry.EMPTY.with_static("training")
        registry.set_layout(d, layout)
        d.setdefault("training", True)
        if not trace_state_clean():  # invariant 9: made inside a transformation, never "lost"
            registry.mark_born(d, current_trace())
    return layout


class AssignmentRules(Registered):
    """Attribute assignment, deletion and the flatten-cache fallback of `pax.Module`."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        layout = d.get(_LAYOUT_KEY) or init_registry(self)
        kind = layout.kind_of.get(name)
        if kind is None or kind in registry.MODULE_KINDS:
            if registry.is_private(name):
                raise AttributeError(
                    f"{type(self).__name__}.{name}: names starting with {registry.PREFIX!r} are "
                    f"reserved to pax. Fix: choose another name."
                )
            _assign_unregistered(self, name, value, layout, kind)
        elif kind in registry.LEAF_KINDS:
            check_leaf(self, name, kind, value, allow_none=True)
            if kind is Kind.STATE:
                value = check_state_dtype(self, name, d.get(name), value)
            old = d.get(name)
            d[name] = value
            d.pop(_FLAT_KEY, None)  # invariant 8: a write drops the flatten cache
            if value is not old and (isinstance(value, Tracer) or not trace_state_clean()):
                tracing.mark(self, name, old, value)  # invariant 9: a traced change is tracked
        else:
            if value is not None:
                check_subtree(self, name, kind, value)
            old = d.get(name)
            d[name] = value
            d.pop(_FLAT_KEY, None)  # invariant 8: a write drops the flatten cache
            if not trace_state_clean():
                tracing.mark(self, name, old, value)  # invariant 9: a traced change is tracked

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: for the flatten cache, build it (pytree.py).
        if name == _FLAT_KEY:
            return pytree.compute_flat(self)
        descriptor: Any = getattr(type(self), name, None)
        if hasattr(descriptor, "__get__"):  # a property whose getter raised AttributeError:
            return descriptor.__get__(self, type(self))  # raise its own error again
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # The cached aux is a reference cycle through the layout; it is rebuilt on next flatten.
        return registry.without_cache(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        registry.invalidate(self.__dict__)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        d = self.__dict__
        layout = registry.stored_layout(d)
        if layout is not None and (name in layout.kind_of or name in layout.static):
            registry.set_layout(d, layout.without(name))


def _assign_unregistered(
    self: Any, name: str, value: Any, layout: Layout, kind: Kind | None
) -> None:
    descriptor = getattr(type(self), name, None)
    if descriptor is not None:
        if hasattr(descriptor, "__set__"):
            object.__setattr__(self, name, value)
            return
        check_not_shadowing(self, name, descriptor)
    new_layout = layout_after_assignment(self, name, value, layout, kind)  # invariants 4, 5
    d = self.__dict__
    old = d.get(name)
    d[name] = value
    d.pop(_FLAT_KEY, None)  # invariant 8: a write drops the flatten cache
    if kind is not None and not trace_state_clean():
        tracing.mark(self, name, old, value)  # invariant 9: a traced change is tracked
    if new_layout is not layout or name in new_layout.static:
        registry.set_layout(d, new_layout)
