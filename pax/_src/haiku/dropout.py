"""`pax.haiku.dropout(rng_key, rate, x)`: Haiku's dropout function (Pax v0.2 re-exported it)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def dropout(
    rng_key: jax.Array, rate: float, x: jax.Array, broadcast_dims: Sequence[int] = ()
) -> jax.Array:
    """Zeroes each entry of `x` with probability `rate`, scaling the rest by ``1 / (1 - rate)``.

    The same values as ``hk.dropout(rng_key, rate, x, broadcast_dims)``, without a Haiku
    transform; `rate` may be traced. For a layer that keeps its own key, use
    ``pax.nn.Dropout(rate)``.

    Args:
      rng_key: a JAX random key.
      rate: the drop probability, in ``[0, 1)``; 0 returns `x` unchanged.
      x: the input.
      broadcast_dims: axes sharing one mask (e.g. ``(1,)`` for the time axis of ``(N, T, C)``).

    Returns:
      `x` with dropped entries zeroed, the others scaled.

    Raises:
      ValueError: for a (concrete) rate outside ``[0, 1)`` or a broadcast axis `x` lacks.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> y = pax.haiku.dropout(jax.random.PRNGKey(0), 0.5, jnp.ones((1000,)))
      >>> sorted(set(y.tolist()))
      [0.0, 2.0]
    """
    if not isinstance(rate, jax.core.Tracer):
        if not 0 <= rate < 1:
            raise ValueError(
                f"pax.haiku.dropout: rate must be in [0, 1), got {rate!r}. Fix: the drop "
                f"probability, e.g. pax.haiku.dropout(rng_key, 0.1, x)."
            )
        if rate == 0:
            return x
    shape = list(jnp.shape(x))
    for dim in broadcast_dims:
        if not -len(shape) <= dim < len(shape):
            raise ValueError(
                f"pax.haiku.dropout: broadcast axis {dim} does not exist for an input of shape "
                f"{tuple(jnp.shape(x))}. Fix: broadcast_dims=(1,) shares one mask along axis 1."
            )
        shape[dim] = 1
    keep_rate = 1.0 - rate
    keep = jnp.broadcast_to(jax.random.bernoulli(rng_key, keep_rate, shape=shape), jnp.shape(x))
    return keep * x / keep_rate
