"""Dropout that carries its own RNG key as state."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from pax._src.core._jax_compat import is_batch_tracer, varying_axes
from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v

_AXIS_NAME_FIX = "axis_name='batch' (or a tuple of names, axis_name=('data', 'model'))"


def axis_names(cls: str, axis_name: Any) -> tuple[str, ...] | None:
    """`axis_name` as a tuple of non-empty strings, or None."""
    if axis_name is None:
        return None
    names = (axis_name,) if isinstance(axis_name, str) else axis_name
    if isinstance(names, (tuple, list)) and names and all(isinstance(n, str) and n for n in names):
        return tuple(names)
    raise TypeError(
        f"{cls}: axis_name must be None, an axis name or a tuple of axis names, got "
        f"{axis_name!r}. Fix: {_AXIS_NAME_FIX}, the names given to jax.shard_map's mesh, "
        f"jax.pmap(axis_name=...) or jax.vmap(axis_name=...)."
    )


def fold_axis_indices(key: jax.Array, names: Any, unbound: Callable[[str], str]) -> jax.Array:
    """`key` folded with the index of each named mapped axis; `unbound(name)` is the message
    of the `ValueError` raised for an axis that is not bound where this runs."""
    for name in names or ():
        try:
            index = jax.lax.axis_index(name)
        except NameError:
            raise ValueError(unbound(name)) from None
        key = jax.random.fold_in(key, index)
    return key


class Dropout(Module):
    """Randomly zeroes entries with probability `rate` and rescales the rest by ``1 / (1 - rate)``.

    The module keeps its RNG key as the state ``rng_key``: every call in training mode splits
    it, uses one half for the mask (exactly as ``hk.dropout(subkey, rate, x)``) and stores the
    other, so successive calls draw new masks, also inside ``jax.jit`` when the updated module
    is returned. In ``eval()`` mode the module is the identity and the key does not change.

    Data parallelism: under ``jax.shard_map``, ``jax.pmap`` or ``jax.vmap`` with a model shared
    by every device or example (``in_specs=P()``, ``in_axes=None``) the key is the same
    everywhere, so without `axis_name` **every shard or example gets the same mask**. Pass the
    names of the mapped axes as `axis_name`: the index along each is folded into the key of the
    mask, so the masks differ per device / shard / example, while the stored key stays the
    same everywhere (the model can be returned replicated, ``out_specs=P()`` or
    ``out_axes=None``). Under plain ``jax.jit``, also with sharded inputs (``NamedSharding``),
    there is no mapped axis: the whole array gets one mask, the same as on one device. A shared
    key under ``jax.vmap`` or ``jax.shard_map`` without `axis_name` warns when it can be
    detected (not under ``jax.pmap``).

    Gradients: the key is an integer (``uint32``) or typed-key state, so differentiating with
    respect to the whole model, ``jax.grad(loss, argnums=1)(x, model)``, fails inside
    `jax.grad` ("grad requires real- or complex-valued inputs ... but got uint32") before the
    layer runs. Differentiate
    with respect to the parameters, rebuild the model inside the loss and return it (its key
    advanced): ``grads, model = jax.grad(loss, has_aux=True)(model.parameters(), model, x)``
    with ``model = model.update(params)`` first in ``loss`` and ``return value, model`` last
    (as `pax.utils.build_update_fn` does).

    Args:
      rate: probability of dropping an entry, in ``[0, 1)``.
      broadcast_dims: axes along which the mask is shared (e.g. ``(1,)`` drops the same
        features at every time step of a ``(N, T, C)`` input).
      axis_name: the name (or tuple of names) of the mapped axes over which the masks must
        differ; the layer must then be called where these names are bound.
      rng_key: the initial key; default `pax.next_rng_key()`.

    Raises:
      ValueError: for a rate outside ``[0, 1)``, or (at call) a broadcast axis the input lacks or
        an `axis_name` that is not bound.
      TypeError: for an `axis_name` that is not a string or a tuple of strings.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> drop = pax.nn.Dropout(0.5)
      >>> y = drop(jnp.ones((1000,)))
      >>> sorted(set(y.tolist()))
      [0.0, 2.0]
      >>> drop.eval()(jnp.ones((3,))).tolist()
      [1.0, 1.0, 1.0]
      >>> drop = pax.nn.Dropout(0.5, axis_name="batch")
      >>> f = jax.vmap(lambda m, x: (m(x), m), (None, 0), (0, None), axis_name="batch")
      >>> y, drop = f(drop, jnp.ones((2, 100)))  # one mask per example; the key advanced
      >>> bool((y[0] != y[1]).any())
      True
    """

    rng_key: jax.Array

    def __init__(
        self,
        rate: float,
        broadcast_dims: Sequence[int] = (),
        *,
        axis_name: str | Sequence[str] | None = None,
        rng_key: jax.Array | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        self.rate = v.rate_in_unit_interval(cls, "rate", rate)
        self.broadcast_dims = v.int_tuple(
            cls, "broadcast_dims", broadcast_dims, scalar=False, example="(1,)"
        )
        self.axis_name = axis_names(cls, axis_name)
        self.register_state("rng_key", resolve_rng_key(rng_key))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if not self.training or self.rate == 0.0:
            return x
        shape = list(x.shape)
        for dim in self.broadcast_dims:
            if not -x.ndim <= dim < x.ndim:
                raise ValueError(
                    f"{type(self).__name__}: broadcast axis {dim} does not exist for an input of "
                    f"shape {x.shape}."
                )
            shape[dim] = 1
        new_key, sub = jax.random.split(self.rng_key)
        if self.axis_name is None:
            self._warn_if_shared(x)
        else:
            sub = self._fold_axis_indices(sub)
        self.rng_key = new_key
        keep_rate = 1.0 - self.rate
        keep = jnp.broadcast_to(jax.random.bernoulli(sub, keep_rate, shape=shape), x.shape)
        return keep * x / jnp.asarray(keep_rate, x.dtype)

    def _fold_axis_indices(self, key: jax.Array) -> jax.Array:
        return fold_axis_indices(
            key,
            self.axis_name,
            lambda name: (
                f"{type(self).__name__}: axis_name {name!r} is not bound here; the layer "
                f"must be called inside jax.shard_map / jax.pmap / jax.vmap over an axis "
                f"named {name!r}. Fix: call it there, or outside them use a layer without "
                f"named axes: drop.axis_name = None (or pax.nn.Dropout(rate))."
            ),
        )

    def _warn_if_shared(self, x: jax.Array) -> None:
        """Warns when a shared key meets an input mapped by vmap or split by shard_map."""
        cls = type(self).__name__
        where, axes = "", frozenset(varying_axes(x) - varying_axes(self.rng_key))
        if axes:
            where = f"inside jax.shard_map over {tuple(sorted(axes))}"
        elif is_batch_tracer(x) and not is_batch_tracer(self.rng_key):
            where = "under jax.vmap with an unbatched rng_key (in_axes=None)"
        if where:
            name = sorted(axes)[0] if axes else "batch"
            warnings.warn(
                f"{cls}: called {where} without axis_name: every shard or example gets the "
                f"same mask. Fix: name the mapped axis, pax.nn.Dropout(rate, "
                f"axis_name={name!r}) with jax.vmap(..., axis_name={name!r}) or the mesh axis "
                f"{name!r}; or give each example its own key.",
                UserWarning,
                stacklevel=3,
            )
