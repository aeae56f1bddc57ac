"""The registry of a module: which attributes are pytree children, of what kind.

This file owns every private key a module keeps in its ``__dict__``:

- the `Layout` (``_pax_layout``): an interned, immutable description of the attributes;
- the cached aux data (``_pax_aux``), valid as long as the layout and static values are;
- the flatten cache (``_pax_flat``): the ``(children, aux)`` pair flatten returns, valid as
  long as the aux is and no child was reassigned;
- the tracer mark (``_pax_tracers``), set when a traced value is assigned;
- the birth trace (``_pax_born``), kept only by modules constructed inside a transformation;
- the view mark (``_pax_view``): ``"parameters"`` or ``"states"`` on the copies those views
  make (calling one raises); unflatten does not carry it.

No other file spells these keys: they call the helpers below. Replacing a layout with
`set_layout` always drops the cached aux and the flatten cache, so they can never disagree.
"""

from __future__ import annotations

import enum
import operator
import threading
from collections.abc import Callable
from typing import Any

from jax.tree_util import GetAttrKey

PREFIX = "_pax_"
# The keys themselves, for the few hot paths (flatten, __call__, __setattr__) where a helper's
# extra Python call would cost more than the work; everyone else uses the helpers.
LAYOUT_KEY = "_pax_layout"
AUX_KEY = "_pax_aux"
TRACERS_KEY = "_pax_tracers"
FLAT_KEY = "_pax_flat"
BORN_KEY = "_pax_born"
VIEW_KEY = "_pax_view"
_LAYOUT, _AUX, _TRACERS, _FLAT = LAYOUT_KEY, AUX_KEY, TRACERS_KEY, FLAT_KEY


class Kind(enum.Enum):
    """How a registered attribute takes part in the pytree.

    Example:
      >>> import pax
      >>> dict(pax.nn.Linear(2, 3).registry)
      {'weight': <Kind.PARAMETER: 'parameter'>, 'bias': <Kind.PARAMETER: 'parameter'>}
    """

    PARAMETER = "parameter"
    STATE = "state"
    FROZEN_PARAMETER = "frozen parameter"
    PARAMETER_SUBTREE = "parameter subtree"
    STATE_SUBTREE = "state subtree"
    FROZEN_PARAMETER_SUBTREE = "frozen parameter subtree"
    MODULE = "module"
    MODULE_SUBTREE = "module subtree"


TRAINABLE = frozenset({Kind.PARAMETER, Kind.PARAMETER_SUBTREE})
NON_TRAINABLE = frozenset(
    {Kind.STATE, Kind.STATE_SUBTREE, Kind.FROZEN_PARAMETER, Kind.FROZEN_PARAMETER_SUBTREE}
)
MODULE_KINDS = frozenset({Kind.MODULE, Kind.MODULE_SUBTREE})
LEAF_KINDS = frozenset({Kind.PARAMETER, Kind.STATE, Kind.FROZEN_PARAMETER})
FREEZE = {
    Kind.PARAMETER: Kind.FROZEN_PARAMETER,
    Kind.PARAMETER_SUBTREE: Kind.FROZEN_PARAMETER_SUBTREE,
}
UNFREEZE = {v: k for k, v in FREEZE.items()}

# Kinds that may be registered again under another name of the same family.
FAMILY = {
    Kind.PARAMETER: "parameter",
    Kind.FROZEN_PARAMETER: "parameter",
    Kind.STATE: "state",
    Kind.PARAMETER_SUBTREE: "parameter subtree",
    Kind.FROZEN_PARAMETER_SUBTREE: "parameter subtree",
    Kind.STATE_SUBTREE: "state subtree",
    Kind.MODULE: "module",
    Kind.MODULE_SUBTREE: "module subtree",
}


def _make_fill(names: tuple[str, ...], cache: bool) -> Callable[[dict, Any, Any], None]:
    """Compiles ``fill(d, children, aux)``: one unpacking assignment into the attribute dict,
    and with `cache` the flatten cache ``(children, aux)`` too."""
    body = f"    {''.join(f'd[{name!r}], ' for name in names)}= children\n" if names else ""
    if cache:
        body += f"    d[{_FLAT!r}] = (children, aux)\n"
    namespace: dict[str, Any] = {}
    exec(f"def fill(d, children, aux):\n{body or '    pass'}\n", namespace)
    return namespace["fill"]


def _make_getter(names: tuple[str, ...]) -> Callable[[dict], tuple]:
    if not names:
        return lambda d: ()
    if len(names) == 1:
        (name,) = names
        return lambda d: (d[name],)
    return operator.itemgetter(*names)


class Layout:
    """Interned, immutable description of a module's attributes.

    Two modules whose attributes are registered the same way share one `Layout` object, so
    comparing the aux data of two treedefs compares layouts by identity.

    Attributes:
      children: names of pytree children, in flatten order.
      kinds: the `Kind` of each child.
      static: names of static attributes (aux data), in assignment order.
      keys: `GetAttrKey` of each child, for key paths.
      get_children: ``get_children(obj.__dict__)`` returns the children as a tuple.
      fill: ``fill(obj.__dict__, children, aux)`` stores the children (the inverse).
      fill_and_cache: the same, also storing the flatten cache ``(children, aux)``.
      kind_of: ``{name: kind}`` of the children.
      module_children: ``(name, kind)`` of the children that hold submodules.
      frozen: ``((name, paths), ...)`` sorted by name: the leaves frozen one by one inside
        parameter subtrees (`jax.tree_util.keystr` paths inside each): static treedef data.
      frozen_in: ``{name: paths}`` of `frozen`.
    """

    __slots__ = (
        "children",
        "fill",
        "fill_and_cache",
        "frozen",
        "frozen_in",
        "get_children",
        "keys",
        "kind_of",
        "kinds",
        "module_children",
        "static",
    )

    _table: dict[tuple, Layout] = {}
    _lock = threading.Lock()

    children: tuple[str, ...]
    kinds: tuple[Kind, ...]
    static: tuple[str, ...]
    keys: tuple[GetAttrKey, ...]
    get_children: Callable[[dict], tuple]
    fill: Callable[[dict, Any, Any], None]
    fill_and_cache: Callable[[dict, Any, Any], None]
    module_children: tuple[tuple[str, Kind], ...]
    kind_of: dict[str, Kind]
    frozen: tuple[tuple[str, frozenset[str]], ...]
    frozen_in: dict[str, frozenset[str]]

    @classmethod
    def intern(
        cls,
        children: tuple[str, ...],
        kinds: tuple[Kind, ...],
        static: tuple[str, ...],
        frozen: tuple[tuple[str, frozenset[str]], ...] = (),
    ) -> Layout:
        key = (children, kinds, static, frozen)  # invariant 2: one object per layout
        layout = cls._table.get(key)
        if layout is None:
            with cls._lock:
                layout = cls._table.get(key)
                if layout is None:
                    layout = object.__new__(cls)
                    set_ = object.__setattr__
                    set_(layout, "children", children)
                    set_(layout, "kinds", kinds)
                    set_(layout, "static", static)
                    set_(layout, "keys", tuple(GetAttrKey(n) for n in children))
                    set_(layout, "get_children", _make_getter(children))
                    set_(layout, "fill", _make_fill(children, cache=False))
                    set_(layout, "fill_and_cache", _make_fill(children, cache=True))
                    set_(layout, "kind_of", dict(zip(children, kinds)))
                    module_children = tuple(
                        (n, k) for n, k in zip(children, kinds) if k in MODULE_KINDS
                    )
                    set_(layout, "module_children", module_children)
                    set_(layout, "frozen", frozen)
                    set_(layout, "frozen_in", dict(frozen))
                    cls._table[key] = layout
        return layout

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Layout is immutable")

    def __reduce__(self) -> tuple:
        return (Layout.intern, (self.children, self.kinds, self.static, self.frozen))

    def __copy__(self) -> Layout:
        return self

    def __deepcopy__(self, memo: dict) -> Layout:
        return self

    def __repr__(self) -> str:
        kids = ", ".join(f"{n}: {k.value}" for n, k in zip(self.children, self.kinds))
        frozen = f", frozen={dict((n, sorted(p)) for n, p in self.frozen)}" if self.frozen else ""
        return f"Layout(children=({kids}), static={self.static}{frozen})"

    # --- derived layouts -------------------------------------------------------------------

    def with_child(self, name: str, kind: Kind) -> Layout:
        """Returns this layout with `name` registered as a child of `kind`."""
        static = tuple(s for s in self.static if s != name)
        if name in self.kind_of:
            kinds = tuple(kind if n == name else k for n, k in zip(self.children, self.kinds))
            frozen = self.frozen if self.kind_of[name] is kind else self._frozen_without(name)
            return Layout.intern(self.children, kinds, static, frozen)
        return Layout.intern(self.children + (name,), self.kinds + (kind,), static, self.frozen)

    def with_static(self, name: str) -> Layout:
        """Returns this layout with `name` as a static attribute (and not a child)."""
        if name in self.static and name not in self.kind_of:
            return self
        pairs = [(n, k) for n, k in zip(self.children, self.kinds) if n != name]
        return Layout.intern(
            tuple(n for n, _ in pairs),
            tuple(k for _, k in pairs),
            self.static + (name,),
            self._frozen_without(name),
        )

    def without(self, name: str) -> Layout:
        """Returns this layout with `name` removed."""
        pairs = [(n, k) for n, k in zip(self.children, self.kinds) if n != name]
        return Layout.intern(
            tuple(n for n, _ in pairs),
            tuple(k for _, k in pairs),
            tuple(s for s in self.static if s != name),
            self._frozen_without(name),
        )

    def map_kinds(self, mapping: dict[Kind, Kind]) -> Layout:
        """Returns this layout with each kind replaced through `mapping` (others kept), and
        without leaves frozen one by one (whole-module `freeze()` / `unfreeze()` reset them)."""
        kinds = tuple(mapping.get(k, k) for k in self.kinds)
        if kinds == self.kinds and not self.frozen:
            return self
        return Layout.intern(self.children, kinds, self.static)

    def with_leaf_freezes(self, kinds: dict[str, Kind], paths: dict[str, frozenset[str]]) -> Layout:
        """Returns this layout with the children in `kinds` re-classified and the leaves frozen
        one by one inside parameter subtrees replaced by `paths` (``{name: paths}``; a name
        missing from it keeps its paths, an empty set of paths removes them)."""
        new_kinds = tuple(kinds.get(n, k) for n, k in zip(self.children, self.kinds))
        merged = {**self.frozen_in, **paths}
        pairs = tuple(sorted((n, p) for n, p in merged.items() if p))
        if new_kinds == self.kinds and pairs == self.frozen:
            return self
        return Layout.intern(self.children, new_kinds, self.static, pairs)

    def _frozen_without(self, name: str) -> tuple[tuple[str, frozenset[str]], ...]:
        return tuple((n, p) for n, p in self.frozen if n != name)


EMPTY = Layout.intern((), (), ())


class Registered:
    """What every `pax.Module` is: an object whose pytree children its `Layout` decides.

    It holds no state of its own; it lets the core recognize modules (`is_module`) without
    importing the `Module` class.
    """

    __slots__ = ()


def is_module(x: Any) -> bool:
    """True if `x` is a `pax.Module`."""
    return isinstance(x, Registered)


# --- the helpers every other file uses ----------------------------------------------------------
# They take a module's attribute dict (`module.__dict__`): the hot paths work on it directly.


def layout_in(d: dict) -> Layout:
    """The layout stored in the attribute dict `d` (`EMPTY` before any registration)."""
    return d.get(_LAYOUT, EMPTY)


def layout_of(module: Any) -> Layout:
    """The layout of `module`."""
    return module.__dict__.get(_LAYOUT, EMPTY)


def stored_layout(d: dict) -> Layout | None:
    """The layout stored in `d`, or None when the module's `__init__` has not set one yet."""
    return d.get(_LAYOUT)


def set_layout(d: dict, layout: Layout) -> None:
    """Stores `layout` in `d` and drops the cached aux (which described the old one)."""
    d[_LAYOUT] = layout
    d.pop(_AUX, None)  # invariant 8: a new layout drops both caches, so they never disagree
    d.pop(_FLAT, None)


def invalidate(d: dict) -> None:
    """Drops the cached aux of `d` (static values changed): the next flatten rebuilds it."""
    d.pop(_AUX, None)
    d.pop(_FLAT, None)


def drop_flat(d: dict) -> None:
    """Drops the flatten cache of `d` (a child was reassigned): the next flatten rebuilds it."""
    d.pop(_FLAT, None)


def replace_state(target: Any, source: Any) -> None:
    """Makes `target` hold `source`'s attributes in place (its caches dropped, not copied)."""
    d = target.__dict__
    d.update(source.__dict__)
    d.pop(_AUX, None)
    d.pop(_FLAT, None)


def cached_aux(d: dict) -> Any:
    """The cached aux data of `d`, or None."""
    return d.get(_AUX)


def cache_aux(d: dict, aux: Any) -> None:
    """Caches `aux` in `d` (only valid until the layout or a static value changes)."""
    d[_AUX] = aux


def template_entries(layout: Layout, aux: Any | None) -> dict[str, Any]:
    """What an unflattened module's dict starts with, after its static values: placeholders
    for the children, its layout and, when `aux` is cached, the aux and a placeholder for the
    flatten cache. With the placeholders, filling a copy of the template never grows it."""
    entries: dict[str, Any] = dict.fromkeys(layout.children)
    entries[_LAYOUT] = layout
    if aux is not None:
        entries[_AUX] = aux
        entries[_FLAT] = None
    return entries


def without_cache(d: dict) -> dict:
    """A copy of `d` without the cached aux (for pickling: the aux holds compiled code) and
    without the birth trace (a weak reference to a trace long gone)."""
    return {k: v for k, v in d.items() if k != _AUX and k != _FLAT and k != BORN_KEY}


def mark_born(d: dict, trace: object) -> None:
    """Records that the module was constructed while `trace` (`_jax_compat.current_trace`) was
    being traced. Views copy it (a view of a module made inside a transformation was made
    there too); unflatten does not (a module passed into a transformation existed outside)."""
    d[BORN_KEY] = trace


def born_in(d: dict) -> object:
    """The trace the module was constructed in (see `mark_born`), or None."""
    return d.get(BORN_KEY)


def mark_traced(d: dict) -> None:
    """Flags a module given traced values; its flatten then takes the slow, checking path."""
    d[_TRACERS] = True
    d.pop(_AUX, None)
    d.pop(_FLAT, None)


DONATED = "donated"


def mark_donated(d: dict, what: str) -> None:
    """Flags a module whose buffers were donated to a compiled step (`what` names it): its
    next call or flatten raises instead of failing on a deleted array."""
    d[_TRACERS] = (DONATED, what)
    d.pop(_AUX, None)
    d.pop(_FLAT, None)


def donated_as(d: dict) -> str | None:
    """What the module was donated as (see `mark_donated`), or None."""
    mark = d.get(_TRACERS)
    return mark[1] if isinstance(mark, tuple) and mark[0] == DONATED else None


def is_traced(d: dict) -> bool:
    """True if a traced value was assigned to the module since its last check."""
    return _TRACERS in d


def clear_traced(d: dict) -> None:
    """Removes the tracer mark (the module was checked and holds no tracer)."""
    d.pop(_TRACERS, None)


def is_private(name: str) -> bool:
    """True for attribute names reserved to pax (the keys above and any future ones)."""
    return name.startswith(PREFIX)
