"""`pax.Module`: a stateful pytree whose children are decided by an explicit registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from jax._src.core import trace_state_clean

from pax._src.core import layout as _layout
from pax._src.core import views as _views
from pax._src.core.layout import EMPTY, FAMILY, Kind, Layout
from pax._src.core.leaks import Tracer, check_no_leaked_tracers, mark_traced, wrap_call
from pax._src.core.static import Aux, freeze_static
from pax._src.core.validate import (
    ARRAY_TYPES,
    NDARRAY_TYPES,
    REGISTER_FIX,
    check_leaf,
    check_module_subtree,
    check_subtree,
    scan_container,
    type_name,
)
from pax._src.core.views import map_kinds, pick, rebuild, set_training

T = TypeVar("T", bound="Module")
_INTERNAL_PREFIX = "_pax_"

__all__ = ["ARRAY_TYPES", "Module", "is_module"]


def is_module(x: Any) -> bool:
    return isinstance(x, Module)


def _is_none(x: Any) -> bool:
    return x is None


# --- flatten / unflatten: the hot path --------------------------------------------------------


def _flatten(module: Module) -> tuple[tuple, Aux]:
    d = module.__dict__
    aux = d.get("_pax_aux")
    if aux is None:  # first flatten, changed static attributes, or tracers assigned
        if "_pax_tracers" in d:
            check_no_leaked_tracers(module)
        aux = _build_aux(module)
    return aux[0].get_children(d), aux


def _flatten_with_keys(module: Module) -> tuple[tuple, Aux]:
    children, aux = _flatten(module)
    return tuple(zip(aux[0].keys, children)), aux


def _make_unflatten(cls: type) -> Callable[[Aux, Any], Module]:
    new = object.__new__

    def unflatten(aux: Aux, children: Any) -> Module:
        module = new(cls)
        d = module.__dict__
        d.update(aux.template)
        aux.fill(d, children)
        return module

    return unflatten


def _build_aux(module: Module) -> Aux:
    """Builds (and caches, when every static value is immutable) the aux data of `module`.

    The aux is ``(layout, static values)``. It also carries, outside equality, the `template`
    dict that unflatten copies into a new module (static values, the layout and, when
    cacheable, the aux itself) and the layout's compiled `fill`.
    """
    d = module.__dict__
    layout = d.get("_pax_layout", EMPTY)
    statics = []
    cacheable = True
    for name in layout.static:
        value = d[name]
        try:
            hash(value)
        except TypeError:
            cacheable = False
            frozen = freeze_static(value)
            if frozen.modules or frozen.arrays:
                return _promote_static(module, name, value, frozen)
            value = frozen
        statics.append(value)
    aux = Aux((layout, tuple(statics)))
    template = {name: d[name] for name in layout.static}
    template["_pax_layout"] = layout
    if cacheable and "_pax_tracers" not in d:
        # A reference cycle made once per aux (not per call): unflattened modules reuse it.
        template["_pax_aux"] = aux
        d["_pax_aux"] = aux
    aux.template = template
    aux.fill = layout.fill
    return aux


def _promote_static(module: Module, name: str, value: Any, frozen: Any) -> Aux:
    """A static container (e.g. `self.layers = []` then `.append(...)`) now holds modules."""
    cls = type(module).__name__
    if frozen.arrays:
        raise TypeError(
            f"{cls}.{name}: this {type(value).__name__} is a static attribute but now holds a "
            f"{frozen.arrays[0]}; arrays must never be static (they would be baked into the "
            f"compiled program). Register it instead: self.register_parameter_subtree({name!r}, "
            f"value) or self.register_state_subtree({name!r}, value)."
        )
    check_module_subtree(module, name, value)
    d = module.__dict__
    d["_pax_layout"] = d.get("_pax_layout", EMPTY).with_child(name, Kind.MODULE_SUBTREE)
    d.pop("_pax_aux", None)
    return _build_aux(module)


# --- the Module class --------------------------------------------------------------------------


class Module:
    """Base class of every pax module: a mutable Python object that is also a pytree.

    A module keeps a registry of which attributes are its pytree children: parameters
    (trainable arrays), states (non-trainable arrays), subtrees of either, and submodules.
    Submodules assigned as attributes, directly or inside a list, tuple or dict, are registered
    automatically; every other attribute is static and goes into the treedef.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> class Counter(pax.Module):
      ...     def __init__(self, start: int = 0):
      ...         super().__init__()
      ...         self.register_state("count", jnp.array(start))
      ...         self.register_parameter("bias", jnp.array(0.0))
      ...     def __call__(self, x):
      ...         self.count = self.count + 1
      ...         return self.count * x + self.bias
      >>> net = Counter(3)
      >>> def loss_fn(params, model, x):
      ...     model = model.update(params)
      ...     y = model(x)
      ...     loss = jnp.mean(jnp.square(x - y))
      ...     return loss, (loss, model)
      >>> grads, (loss, net) = jax.grad(loss_fn, has_aux=True)(net.parameters(), net, 10.0)
      >>> print(grads.count, grads.bias)
      None 60.0
    """

    training: bool = True

    def __init__(self) -> None:
        self._pax_init()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls, _flatten_with_keys, _make_unflatten(cls), _flatten
        )
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "_pax_wrapped", False):
            cls.__call__ = wrap_call(call)

    def _pax_init(self) -> Layout:
        d = self.__dict__
        layout = d.get("_pax_layout")
        if layout is None:
            layout = EMPTY.with_static("training")
            d["_pax_layout"] = layout
            d.setdefault("training", True)
        return layout

    # --- attribute assignment ----------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        layout = d.get("_pax_layout") or self._pax_init()
        kind = layout.kind_of.get(name)
        if kind is None or kind in _layout.MODULE_KINDS:
            if name.startswith(_INTERNAL_PREFIX):
                d[name] = value
                return
            self._pax_assign_unregistered(name, value, layout, kind)
        elif kind in _layout.LEAF_KINDS:
            check_leaf(self, name, kind, value, allow_none=True)
            d[name] = value
            if isinstance(value, Tracer):
                mark_traced(d)
        else:
            if value is not None:
                check_subtree(self, name, kind, value)
            d[name] = value
            if not trace_state_clean():
                mark_traced(d)

    def _pax_assign_unregistered(
        self, name: str, value: Any, layout: Layout, kind: Kind | None
    ) -> None:
        d = self.__dict__
        descriptor = getattr(type(self), name, None)
        if hasattr(descriptor, "__set__"):
            object.__setattr__(self, name, value)
            return
        if isinstance(value, Module):
            new_layout = layout.with_child(name, Kind.MODULE)
        elif value is None and kind is not None:
            new_layout = layout
        elif isinstance(value, (list, tuple, dict)):
            has_module, array = scan_container(value)
            if array is not None:
                raise TypeError(
                    f"{type(self).__name__}.{name}: this {type(value).__name__} holds an array "
                    f"({type_name(array)}) but is not registered, so it would be static and baked "
                    f"into the compiled program. Fix: self.register_parameter_subtree({name!r}, "
                    f"value) or self.register_state_subtree({name!r}, value)."
                )
            if has_module:
                check_module_subtree(self, name, value)
                new_layout = layout.with_child(name, Kind.MODULE_SUBTREE)
            else:
                new_layout = layout.with_static(name)
        elif isinstance(value, NDARRAY_TYPES):
            raise TypeError(
                f"{type(self).__name__}.{name}: cannot assign a {type_name(value)} to an "
                f"unregistered attribute; it would be static and baked into the compiled "
                f"program. Fix: {REGISTER_FIX.format(name=name)}."
            )
        else:
            new_layout = layout.with_static(name)
        d[name] = value
        if kind is not None and not trace_state_clean():
            mark_traced(d)
        if new_layout is not layout or name in new_layout.static:
            d["_pax_layout"] = new_layout
            d.pop("_pax_aux", None)

    def __getstate__(self) -> dict[str, Any]:
        # The cached aux holds a compiled function; it is rebuilt on the next flatten.
        return {k: v for k, v in self.__dict__.items() if k != "_pax_aux"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        d = self.__dict__
        layout = d.get("_pax_layout")
        if layout is not None and (name in layout.kind_of or name in layout.static):
            d["_pax_layout"] = layout.without(name)
            d.pop("_pax_aux", None)

    # --- registration ------------------------------------------------------------------------

    def register_parameter(self, name: str, value: jax.Array) -> None:
        """Registers `value` (an array) as a trainable parameter named `name`.

        Raises:
          TypeError: if `value` is not a jax/numpy array.
          ValueError: if `name` is registered with another kind or shadows a method.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> m = pax.Module()
          >>> m.register_parameter("w", jnp.zeros((2,)))
          >>> m.parameters().w.shape
          (2,)
        """
        self._pax_register(name, value, Kind.PARAMETER)

    def register_state(self, name: str, value: jax.Array) -> None:
        """Registers `value` (an array) as a non-trainable state named `name`.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> m = pax.Module()
          >>> m.register_state("count", jnp.array(0))
          >>> print(m.parameters().count)
          None
        """
        self._pax_register(name, value, Kind.STATE)

    def register_parameter_subtree(self, name: str, tree: Any) -> None:
        """Registers a pytree whose every leaf is a trainable parameter.

        Example:
          >>> import jax, jax.numpy as jnp, pax
          >>> m = pax.Module()
          >>> m.register_parameter_subtree("params", {"w": jnp.ones(2), "b": jnp.zeros(1)})
          >>> len(jax.tree_util.tree_leaves(m.parameters()))
          2
        """
        self._pax_register(name, tree, Kind.PARAMETER_SUBTREE)

    def register_state_subtree(self, name: str, tree: Any) -> None:
        """Registers a pytree (modules included) whose every leaf is a non-trainable state.

        Example:
          >>> import jax, jax.numpy as jnp, pax
          >>> net = pax.nn.Linear(2, 2)
          >>> m = pax.Module()
          >>> m.register_state_subtree("velocity", jax.tree_util.tree_map(jnp.zeros_like, net))
          >>> jax.tree_util.tree_leaves(m.parameters())
          []
        """
        self._pax_register(name, tree, Kind.STATE_SUBTREE)

    def register_module(self, name: str, module: Module) -> None:
        """Registers a submodule (plain attribute assignment does the same).

        Example:
          >>> import pax
          >>> m = pax.Module()
          >>> m.register_module("fc", pax.nn.Linear(2, 2))
          >>> [type(s).__name__ for s in m.submodules()]
          ['Linear']
        """
        self._pax_register(name, module, Kind.MODULE)

    def register_module_subtree(self, name: str, tree: Any) -> None:
        """Registers a list, tuple or dict (possibly nested) of submodules.

        Example:
          >>> import pax
          >>> m = pax.Module()
          >>> blocks = {"a": pax.nn.Linear(1, 1), "b": [pax.nn.Identity()]}
          >>> m.register_module_subtree("blocks", blocks)
          >>> len(m.submodules())
          2
        """
        self._pax_register(name, tree, Kind.MODULE_SUBTREE)

    def _pax_register(self, name: str, value: Any, kind: Kind) -> None:
        layout = self.__dict__.get("_pax_layout") or self._pax_init()
        cls = type(self).__name__
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{cls}: cannot register {name!r}: the name must be an identifier.")
        if name == "training":
            raise ValueError(
                f"{cls}.training: cannot register 'training': it is the train/eval mode flag "
                f"(see train() and eval()). Fix: choose another name."
            )
        if name.startswith(_INTERNAL_PREFIX):
            raise ValueError(
                f"{cls}.{name}: names starting with {_INTERNAL_PREFIX!r} are reserved."
            )
        attr = getattr(type(self), name, None)
        if callable(attr) or isinstance(attr, (property, classmethod, staticmethod)):
            raise ValueError(
                f"{cls}.{name}: cannot register {name!r}: it would shadow the "
                f"{type(attr).__name__} {cls}.{name}. Fix: choose another name, e.g. "
                f"self.register_{FAMILY[kind].replace(' ', '_')}({name + '_'!r}, value)."
            )
        old = layout.kind_of.get(name)
        if old is not None and FAMILY[old] != FAMILY[kind]:
            raise ValueError(
                f"{cls}.{name} is already registered as a {old.value}; cannot register it again "
                f"as a {kind.value}. Fix: use another name, or `del self.{name}` first."
            )
        if kind in _layout.LEAF_KINDS:
            check_leaf(self, name, kind, value, allow_none=False)
        elif kind is Kind.MODULE:
            if not isinstance(value, Module):
                raise TypeError(
                    f"{cls}.{name}: register_module expects a pax.Module, got {type_name(value)}."
                )
        elif kind is Kind.MODULE_SUBTREE:
            check_module_subtree(self, name, value)
        else:
            check_subtree(self, name, kind, value)
        if old is not None and old is not kind and FAMILY[old] == FAMILY[kind]:
            kind = old  # re-registering a frozen parameter keeps it frozen
        d = self.__dict__
        d[name] = value
        d["_pax_layout"] = layout.with_child(name, kind)
        d.pop("_pax_aux", None)

    # --- functional views --------------------------------------------------------------------

    def parameters(self: T) -> T:
        """Returns a copy whose non-parameter leaves (states, frozen parameters) are None.

        Example:
          >>> import jax, pax
          >>> net = pax.nn.Linear(2, 3)
          >>> [x.shape for x in jax.tree_util.tree_leaves(net.parameters())]
          [(2, 3), (3,)]
          >>> jax.tree_util.tree_leaves(net.freeze().parameters())
          []
        """
        return rebuild(self, _views.ONLY_PARAMETERS)

    def states(self: T) -> T:
        """Returns a copy whose parameter leaves are None (the converse of `parameters`).

        Example:
          >>> import jax, pax
          >>> jax.tree_util.tree_leaves(pax.nn.Linear(2, 3).states())
          []
        """
        return rebuild(self, _views.ONLY_STATES)

    def update(self: T, other: T, *rest: T) -> T:
        """Returns a copy of self where the non-None leaves of `other` (then `rest`) win.

        Raises:
          ValueError: if a tree's structure differs from self's, naming the first differing
            key path.

        Example:
          >>> import jax, pax
          >>> net = pax.nn.Linear(2, 3)
          >>> zeros = jax.tree_util.tree_map(lambda x: 0 * x, net.parameters())
          >>> float(net.update(zeros).weight.sum())
          0.0
        """
        from pax._src.core.structure import describe_difference

        result = self
        for tree in (other, *rest):
            try:
                result = jax.tree_util.tree_map(pick, result, tree, is_leaf=_is_none)
            except Exception:  # jax reports mismatches with several exception types
                diff = describe_difference(result, tree, none_is_wildcard=True)
                if diff is None:
                    raise
                raise ValueError(
                    f"{type(self).__name__}.update: the tree to merge has a different "
                    f"structure: {diff}. Fix: build it from this module, e.g. "
                    f"model.parameters() or a jax.tree_util.tree_map over it."
                ) from None
        return result

    def freeze(self: T) -> T:
        """Returns a copy where every parameter (recursively) is a non-trainable state.

        Example:
          >>> import pax
          >>> frozen = pax.nn.Linear(2, 3).freeze()
          >>> print(frozen.parameters().weight)
          None
        """
        return rebuild(self, map_kinds(_layout.FREEZE))

    def unfreeze(self: T) -> T:
        """Returns a copy where the parameters frozen by `freeze` are trainable again.

        States that were never parameters stay states.

        Example:
          >>> import pax
          >>> pax.nn.Linear(2, 3).freeze().unfreeze().parameters().weight.shape
          (2, 3)
        """
        return rebuild(self, map_kinds(_layout.UNFREEZE))

    def train(self: T) -> T:
        """Returns a copy with `training = True` on every submodule.

        Example:
          >>> import pax
          >>> pax.nn.Linear(2, 3).eval().train().training
          True
        """
        return rebuild(self, set_training(True))

    def eval(self: T) -> T:
        """Returns a copy with `training = False` on every submodule.

        Example:
          >>> import pax
          >>> net = pax.nn.Sequential(pax.nn.Linear(2, 3))
          >>> net.eval().modules[0].training, net.modules[0].training
          (False, True)
        """
        return rebuild(self, set_training(False))

    def copy(self: T) -> T:
        """Returns a copy of the module tree (submodules and containers copied, arrays shared).

        Example:
          >>> import pax
          >>> net = pax.nn.Linear(2, 3)
          >>> net.copy() is net, net.copy().weight is net.weight
          (False, True)
        """
        return jax.tree_util.tree_map(lambda x: x, self)

    def submodules(self) -> list[Module]:
        """Returns the direct submodules, in flatten order.

        Example:
          >>> import pax
          >>> len(pax.nn.MLP([2, 4, 1]).submodules())
          2
        """
        d = self.__dict__
        layout = d.get("_pax_layout", EMPTY)
        out: list[Module] = []
        for name, kind in zip(layout.children, layout.kinds):
            if kind in _layout.MODULE_KINDS:
                out.extend(jax.tree_util.tree_leaves(d[name], is_leaf=is_module))
        return out

    def hk_init(self: T, *args: Any, enable_jit: bool = False, **kwargs: Any) -> T:
        """Initializes every `pax.from_haiku` submodule by calling the model on dummy inputs.

        Returns a new, initialized model; see `pax.from_haiku`.
        """
        from pax._src.haiku.init import hk_init

        return hk_init(self, *args, enable_jit=enable_jit, **kwargs)

    def summary(self) -> str:
        """Returns a table of the submodules with their parameter and state counts.

        Example:
          >>> import pax
          >>> print(pax.nn.Linear(2, 3).summary())
          module  type    params  states
          Linear  Linear       9       0
        """
        from pax._src.core.summary import summary

        return summary(self)

    def __repr__(self) -> str:
        from pax._src.core.summary import module_repr

        return module_repr(self)


jax.tree_util.register_pytree_with_keys(
    Module, _flatten_with_keys, _make_unflatten(Module), _flatten
)


_views.MODULE_TYPES = (Module,)
