"""`Module.apply`, `Module.astype` and `Module.copy`: whole-tree transformations that return a
new tree.

`apply` copies the tree with `views.rebuild` (a fresh object per module, arrays shared) and
calls a user function on every copy, children first, so the function may replace a module
by another one. `astype` maps over the leaves with `jax.tree_util.tree_map`, which builds the
new modules by unflattening: the dtype rule of registered states (`validate.check_state_dtype`)
guards assignments, not this deliberate cast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core._jax_compat import Tracer
from pax._src.core.registry import is_module
from pax._src.core.views import rebuild

T = TypeVar("T")


def _checked(fn: Callable[[Any], Any], new: Any) -> Any:
    out = fn(new)
    if not is_module(out):
        raise TypeError(
            f"apply: the function returned {out!r} of type {type(out).__name__} for a "
            f"{type(new).__name__}; it must return a pax.Module. Fix: return the module "
            f"itself when there is nothing to change, e.g. lambda m: m.eval() if "
            f"isinstance(m, pax.nn.Dropout) else m."
        )
    return out


def apply(module: Any, fn: Callable[[Any], Any]) -> Any:
    """Returns a new tree where `fn` was applied to every submodule, children before parents.

    `fn` receives a copy of each module whose submodules were already replaced, and returns a
    module (itself, a changed copy, or another module). The module it is called on is left
    unchanged; the root is passed to `fn` last, and its result is returned.

    Args:
      fn: a function from a module to a module.

    Raises:
      TypeError: if `fn` returns something other than a module.

    Example:
      >>> import pax
      >>> net = pax.nn.Sequential(pax.nn.Linear(2, 2), pax.nn.Dropout(0.5))
      >>> net = net.apply(lambda m: m.eval() if isinstance(m, pax.nn.Dropout) else m)
      >>> net.modules[0].training, net.modules[1].training
      (True, False)
      >>> pax.nn.Linear(2, 2).apply(lambda m: type(m).__name__)
      Traceback (most recent call last):
      ...
      TypeError: apply: the function returned 'Linear' of type str for a Linear; ...
    """
    return rebuild(module, None, finish=lambda new: _checked(fn, new))


def _floating_dtype(dtype: Any) -> Any:
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"astype: {dtype!r} is not a dtype. Fix: pass a floating-point dtype, e.g. "
            f"jnp.bfloat16 or 'float16'."
        ) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"astype: {dtype} is not a floating-point dtype; astype casts the floating-point "
            f"parameters and states only. Fix: pass e.g. jnp.bfloat16, jnp.float16 or "
            f"jnp.float32."
        )
    return dtype


def astype(module: T, dtype: Any) -> T:
    """Returns a copy whose floating-point parameters and states are cast to `dtype`.

    Integer states (counters such as `pax.nn.EMA`'s ``counter``), booleans and RNG keys (typed
    keys and raw ``uint32`` keys) keep their dtype, so the cast model still runs. This is the
    way to cast a model: ``jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), model)``
    casts the RNG keys too (a typed key refuses the cast, a raw ``uint32`` key becomes a float
    that `jax.random` refuses later). Registered states take the new dtype, as if registered
    again; the module it is called on is left unchanged.

    Args:
      dtype: a floating-point dtype, e.g. ``jnp.bfloat16``.

    Raises:
      ValueError: if `dtype` is not a floating-point dtype.
      TypeError: if `dtype` is not a dtype.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Dropout(0.1))
      >>> half = net.astype(jnp.bfloat16)
      >>> half.modules[0].weight.dtype, half.modules[1].rng_key.dtype
      (dtype(bfloat16), dtype('uint32'))
      >>> half(jnp.ones((1, 2), jnp.bfloat16)).dtype
      dtype(bfloat16)
    """
    dtype = _floating_dtype(dtype)

    def cast(x: Any) -> Any:
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype:
            return jnp.asarray(x, dtype=dtype)
        return x

    return jax.tree_util.tree_map(cast, module)


def copy(module: T) -> T:
    """Returns an independent copy: submodules, containers and arrays copied.

    The arrays get buffers of their own (sharding kept), so a copy is a separate network
    (a target network, an EMA teacher): `pax.check` does not report it as tied weights,
    and donating the original's buffers to a step leaves the copy intact. Inside a
    transformation, traced values are values and are kept as they are.

    Example:
      >>> import pax
      >>> net = pax.nn.Linear(2, 3)
      >>> target = net.copy()
      >>> target is net, target.weight is net.weight, bool((target.weight == net.weight).all())
      (False, False, True)
    """
    copies: dict[int, Any] = {}  # one array reachable twice stays one array (a tie the
    # original has is kept, so `pax.check` still reports it on the copy)

    def fresh(leaf: Any) -> Any:
        new = copies.get(id(leaf))
        if new is None:
            new = copies[id(leaf)] = _fresh_buffer(leaf)
        return new

    return jax.tree_util.tree_map(fresh, module)


def _fresh_buffer(leaf: Any) -> Any:
    """A copy of a concrete array (own buffer, same sharding); anything else as it is."""
    if isinstance(leaf, Tracer):
        return leaf
    if isinstance(leaf, jax.Array):
        return jnp.copy(leaf)
    if isinstance(leaf, np.ndarray):
        return leaf.copy()
    return leaf
