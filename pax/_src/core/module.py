"""`pax.Module`: a stateful pytree whose children are decided by an explicit registry.

This file holds the class users subclass: the assignment rules, the ``register_*`` methods
and the functional views. The registry itself lives in `registry.py`, flatten/unflatten in
`pytree.py` (see README.md in this folder for the rules they rely on).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import jax

from pax._src.arguments import compat
from pax._src.core import lazy, precision, pytree, registry, select, transform
from pax._src.core.assignment import AssignmentRules, init_registry
from pax._src.core.registry import Kind
from pax._src.core.summary import module_repr, summary, treescope_repr
from pax._src.core.tracing import is_wrapped, wrap_call
from pax._src.core.validate import as_jax, kind_after_registration, module_name
from pax._src.core.views import (
    ONLY_PARAMETERS,
    ONLY_STATES,
    map_kinds,
    merge,
    rebuild,
    set_training,
)

T = TypeVar("T", bound="Module")

_LAYOUT_KEY = registry.LAYOUT_KEY

__all__ = ["Module"]


# --- the Module class --------------------------------------------------------------------------


class Module(AssignmentRules, compat.PaxV02Methods):
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
    name: str | None = None  # shown by repr and summary; None: the class name only

    def __init__(self, *, name: str | None = None) -> None:
        init_registry(self)
        if name is not None:
            self.name = module_name(self, name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        pytree.register(cls)
        getattr_ = cls.__dict__.get("__getattr__")
        if getattr_ is not None and not getattr(getattr_, "__flatten_aware__", False):
            cls.__getattr__ = pytree.wrap_getattr(getattr_)  # type: ignore[method-assign]
        call = cls.__dict__.get("__call__")
        if call is not None and not is_wrapped(call):
            cls.__call__ = wrap_call(call)  # type: ignore[method-assign]

    @property
    def registry(self) -> Mapping[str, Kind]:
        """The registered children, ``{name: Kind}`` in flatten order (read-only).

        Example:
          >>> import pax
          >>> pax.nn.Linear(2, 3).registry["weight"]
          <Kind.PARAMETER: 'parameter'>
        """
        return MappingProxyType(pytree.read_layout(self).kind_of)  # a pure read

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
        self.__register(name, value, Kind.PARAMETER)

    def register_state(self, name: str, value: jax.Array) -> None:
        """Registers `value` (an array) as a non-trainable state named `name`.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> m = pax.Module()
          >>> m.register_state("count", jnp.array(0))
          >>> print(m.parameters().count)
          None
        """
        self.__register(name, value, Kind.STATE)

    def register_parameter_subtree(self, name: str, tree: Any) -> None:
        """Registers a pytree whose every leaf is a trainable parameter.

        Example:
          >>> import jax, jax.numpy as jnp, pax
          >>> m = pax.Module()
          >>> m.register_parameter_subtree("params", {"w": jnp.ones(2), "b": jnp.zeros(1)})
          >>> len(jax.tree_util.tree_leaves(m.parameters()))
          2
        """
        self.__register(name, tree, Kind.PARAMETER_SUBTREE)

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
        self.__register(name, tree, Kind.STATE_SUBTREE)

    def register_module(self, name: str, module: Module) -> None:
        """Registers a submodule (plain attribute assignment does the same).

        Example:
          >>> import pax
          >>> m = pax.Module()
          >>> m.register_module("fc", pax.nn.Linear(2, 2))
          >>> [type(s).__name__ for s in m.submodules()]
          ['Linear']
        """
        self.__register(name, module, Kind.MODULE)

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
        self.__register(name, tree, Kind.MODULE_SUBTREE)

    def __register(self, name: str, value: Any, kind: Kind) -> None:
        layout = registry.stored_layout(self.__dict__) or init_registry(self)
        if kind in registry.LEAF_KINDS:
            value = as_jax(value)  # JAX's dtype rules: float64 -> float32 unless x64
        elif kind is not Kind.MODULE and kind is not Kind.MODULE_SUBTREE:
            value = jax.tree_util.tree_map(as_jax, value)
        kind = kind_after_registration(self, name, value, layout, kind)
        d = self.__dict__
        d[name] = value
        registry.set_layout(d, layout.with_child(name, kind))

    # --- functional views --------------------------------------------------------------------

    def parameters(self: T, where: select.Where | None = None) -> T:
        r"""Returns a copy whose non-parameter leaves (states, frozen parameters) are None.

        Args:
          where: keep only the leaves it selects: a regular expression searched in the key
            path (``r"\.bias$"``) or a function of ``(key_path, leaf)``. Key paths are
            `jax.tree_util.keystr` of the path from this module (``".layers[0].bias"``).

        Raises:
          ValueError: if `where` selects no leaf (most likely a typo) or is an invalid regex.
          TypeError: if `where` is neither a string nor a function.

        Example:
          >>> import jax, pax
          >>> net = pax.nn.Linear(2, 3)
          >>> [x.shape for x in jax.tree_util.tree_leaves(net.parameters())]
          [(2, 3), (3,)]
          >>> jax.tree_util.tree_leaves(net.freeze().parameters())
          []
          >>> [x.shape for x in jax.tree_util.tree_leaves(net.parameters(where="bias$"))]
          [(3,)]
        """
        if where is None:
            return rebuild(self, ONLY_PARAMETERS)
        return select.select(self, where, states=False)

    def states(self: T, where: select.Where | None = None) -> T:
        r"""Returns a copy whose parameter leaves are None (the converse of `parameters`).

        Args:
          where: keep only the leaves it selects, as in `parameters`.

        Example:
          >>> import jax, pax
          >>> jax.tree_util.tree_leaves(pax.nn.Linear(2, 3).states())
          []
          >>> net = pax.nn.Linear(2, 3).freeze()
          >>> [x.shape for x in jax.tree_util.tree_leaves(net.states(where=r"\.weight$"))]
          [(2, 3)]
        """
        if where is None:
            return rebuild(self, ONLY_STATES)
        return select.select(self, where, states=True)

    def update(self: T, other: T, *rest: T, in_place: bool = False) -> T:
        """Returns a copy of self where the non-None leaves of `other` (then `rest`) win.

        Raises:
          ValueError: if a tree's structure differs from self's, or a leaf has another shape
            or dtype (None leaves match anything), naming the first differing key path.

        Example:
          >>> import jax, pax
          >>> net = pax.nn.Linear(2, 3)
          >>> zeros = jax.tree_util.tree_map(lambda x: 0 * x, net.parameters())
          >>> float(net.update(zeros).weight.sum())
          0.0
        """
        compat.refuse_in_place(type(self).__name__, in_place)  # Pax v0.2's in_place=True
        return merge(self, (other, *rest))

    def freeze(self: T, where: select.Where | None = None) -> T:
        r"""Returns a copy where every parameter (recursively) is a non-trainable state.

        Args:
          where: freeze only the parameters it selects: a regular expression searched in the
            key path (``r"\.bias$"``, ``r"^\.blocks\[[0-3]\]"``) or a function of
            ``(key_path, leaf)``; single leaves inside parameter subtrees (the ``params`` of a
            `pax.from_haiku` module) too. Freezing the same leaves gives the same treedef.

        Raises:
          ValueError: if `where` selects no parameter (listing key paths) or is an invalid regex.
          TypeError: if `where` is neither a string nor a function.

        Example:
          >>> import pax
          >>> frozen = pax.nn.Linear(2, 3).freeze()
          >>> print(frozen.parameters().weight)
          None
          >>> net = pax.nn.MLP([2, 4, 1]).freeze(where=r"\.bias$")
          >>> print(net.parameters().layers[0].bias)
          None
        """
        if where is None:
            return rebuild(self, map_kinds(registry.FREEZE))
        return select.set_frozen(self, where, frozen=True)

    def unfreeze(self: T, where: select.Where | None = None) -> T:
        """Returns a copy where the parameters frozen by `freeze` are trainable again.

        States that were never parameters stay states.

        Args:
          where: unfreeze only the parameters it selects, as in `freeze`.

        Example:
          >>> import pax
          >>> pax.nn.Linear(2, 3).freeze().unfreeze().parameters().weight.shape
          (2, 3)
          >>> net = pax.nn.Linear(2, 3).freeze().unfreeze(where="weight")
          >>> net.parameters().weight.shape, net.parameters().bias
          ((2, 3), None)
        """
        if where is None:
            return rebuild(self, map_kinds(registry.UNFREEZE))
        return select.set_frozen(self, where, frozen=False)

    def train(self: T, mode: bool = True) -> T:
        """Returns a copy with `training = mode` on every submodule (``train(False)``, the
        PyTorch and Pax v0.2 spelling, is `eval()`).

        Example:
          >>> import pax
          >>> pax.nn.Linear(2, 3).eval().train().training
          True
        """
        return rebuild(self, set_training(compat.train_mode(type(self).__name__, mode)))

    def eval(self: T) -> T:
        """Returns a copy with `training = False` on every submodule.

        Example:
          >>> import pax
          >>> net = pax.nn.Sequential(pax.nn.Linear(2, 3))
          >>> net.eval().modules[0].training, net.modules[0].training
          (False, True)
        """
        return rebuild(self, set_training(False))

    copy = transform.copy  # an independent copy, arrays included (docs in transform.py)
    apply = transform.apply  # post-order map over the submodules (docs in transform.py)
    astype = transform.astype  # casts the floating-point leaves only (docs in transform.py)
    mixed_precision = precision.mixed_precision  # calls under a jmp.Policy (docs in precision.py)
    unwrap_mixed_precision = precision.unwrap_mixed_precision

    def submodules(self) -> list[Module]:
        """Returns the direct submodules, in flatten order.

        Example:
          >>> import pax
          >>> len(pax.nn.MLP([2, 4, 1]).submodules())
          2
        """
        d = self.__dict__
        out: list[Module] = []
        for name, _ in pytree.read_layout(self).module_children:
            out.extend(jax.tree_util.tree_leaves(d[name], is_leaf=registry.is_module))
        return out

    hk_init = lazy.hk_init  # initializes the pax.from_haiku submodules (docs in lazy.py)
    lazy_init = lazy.lazy_init  # initializes lazy layers from example inputs (docs in lazy.py)

    def summary(self, *example_inputs: Any, **kwargs: Any) -> str:
        """Returns a table of the submodules: counts, bytes, and with example inputs (arrays or
        `jax.ShapeDtypeStruct`) each call's shapes, from `jax.eval_shape` (nothing allocated).

        Example:
          >>> import pax
          >>> print(pax.nn.Linear(2, 3).summary())
          module  type    params  states  leaves t/f/s  bytes
          Linear  Linear       9       0         2/0/0   36 B
          total                9       0         2/0/0   36 B
        """
        return summary(self, *example_inputs, **kwargs)

    def __repr__(self) -> str:
        return module_repr(self)

    __treescope_repr__ = treescope_repr  # rendered as a foldable tree in notebooks


pytree.register(Module)
