"""Dropout that carries its own RNG key as state."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v


class Dropout(Module):
    """Randomly zeroes entries with probability `rate` and rescales the rest by ``1 / (1 - rate)``.

    The module keeps its RNG key as the state ``rng_key``: every call in training mode splits
    it, uses one half for the mask (exactly as ``hk.dropout(subkey, rate, x)``) and stores the
    other, so successive calls draw new masks, also inside ``jax.jit`` when the updated module
    is returned. In ``eval()`` mode the module is the identity and the key does not change.

    Args:
      rate: probability of dropping an entry, in ``[0, 1)``.
      broadcast_dims: axes along which the mask is shared (e.g. ``(1,)`` drops the same
        features at every time step of a ``(N, T, C)`` input).
      rng_key: the initial key; default `pax.next_rng_key()`.

    Raises:
      ValueError: for a rate outside ``[0, 1)``, or (at call) a broadcast axis the input lacks.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> drop = pax.nn.Dropout(0.5)
      >>> y = drop(jnp.ones((1000,)))
      >>> sorted(set(y.tolist()))
      [0.0, 2.0]
      >>> drop.eval()(jnp.ones((3,))).tolist()
      [1.0, 1.0, 1.0]
    """

    rng_key: jax.Array

    def __init__(
        self,
        rate: float,
        broadcast_dims: Sequence[int] = (),
        *,
        rng_key: jax.Array | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        self.rate = v.rate_in_unit_interval(cls, "rate", rate)
        self.broadcast_dims = v.int_tuple(
            cls, "broadcast_dims", broadcast_dims, scalar=False, example="(1,)"
        )
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
        self.rng_key = new_key
        keep_rate = 1.0 - self.rate
        keep = jnp.broadcast_to(jax.random.bernoulli(sub, keep_rate, shape=shape), x.shape)
        return keep * x / jnp.asarray(keep_rate, x.dtype)
