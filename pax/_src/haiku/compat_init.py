"""Haiku-form initializers (``init(shape, dtype)`` drawing from ``hk.next_rng_key()``) for pax.

Importing this file registers `adapt` with `pax/_src/nn/initializer_forms.py`,
which loads it by name the first time a layer is given an initializer of Haiku's form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from pax._src.nn.initializer_forms import Initializer, check_result, register_haiku_adapter


def adapt(init: Callable[..., Any], where: str = "initializer") -> Initializer:
    """A Haiku initializer ``init(shape, dtype)`` as a pax one ``init(key, shape, dtype)``.

    The Haiku initializer runs inside ``hk.transform`` applied with the given key, so it draws
    what a Haiku program initialized with that key draws for its first parameter. Layers call
    this through ``resolve``: passing a Haiku initializer as ``w_init`` is enough.

    Args:
      init: a Haiku initializer object, or any function ``init(shape, dtype) -> array`` (it may
        call ``hk.next_rng_key()``).
      where: how errors name the argument (``"Linear: w_init"``).

    Returns:
      An initializer ``(key, shape, dtype=jnp.float32) -> array``.

    Raises:
      TypeError: at call, if `init` does not return an array of the requested shape.

    Example:
      >>> import haiku as hk, jax
      >>> init = adapt(hk.initializers.TruncatedNormal(0.1))
      >>> init(jax.random.PRNGKey(0), (3, 4)).shape
      (3, 4)
    """
    transformed = hk.transform(lambda shape, dtype: init(shape, dtype))

    def haiku_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        return check_result(where, transformed.apply({}, key, shape, dtype), shape)

    haiku_init.__qualname__ = f"from_haiku_initializer({init!r})"
    return haiku_init


register_haiku_adapter(adapt)
