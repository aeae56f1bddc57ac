"""Flatten and Reshape: shape changes as modules, for `Sequential`.

A ``lambda x: x.reshape(...)`` inside `Sequential` works, but the lambda is a static value of
the model: every build of the same model holds a *different* function object, so two builds
have different treedefs. ``model.update(other)``, loading a checkpoint into a freshly built
model, or reusing a `jax.jit` compilation across builds then fail or retrace. `Flatten` and
`Reshape` keep only ints in the treedef, so equal models have equal treedefs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax

from pax._src.core.module import Module
from pax._src.describe import describe
from pax._src.nn import _validate as v


def _target_shape(cls: str, value: Any) -> tuple[int, ...]:
    shape = v.int_tuple(cls, "output_shape", value, scalar=True, example="(7, 7, 64)")
    if any(d < -1 or d == 0 for d in shape) or shape.count(-1) > 1:
        raise ValueError(
            f"{cls}: output_shape must hold positive sizes and at most one -1, got "
            f"{value!r}; e.g. output_shape=(7, 7, -1)."
        )
    return shape


class Reshape(Module):
    """Reshapes all axes but the first `preserve_dims` to `output_shape` (``hk.Reshape``).

    Args:
      output_shape: the new shape of the trailing axes; one entry may be -1 (inferred).
      preserve_dims: how many leading axes (the batch axes) to keep as they are.

    Raises:
      ValueError: for a bad `output_shape` or `preserve_dims`; at call, for an input with
        fewer than `preserve_dims` axes or whose size does not fit `output_shape`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.Reshape((7, 7, -1))(jnp.ones((2, 98))).shape
      (2, 7, 7, 2)
      >>> pax.nn.Reshape((7, 7, 2)) .summary().splitlines()[1].split()[:3]
      ['Reshape', 'Reshape', '0']
    """

    def __init__(
        self, output_shape: int | Sequence[int], preserve_dims: int = 1, *, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        self.output_shape = _target_shape(cls, output_shape)
        self.preserve_dims = v.positive_int(cls, "preserve_dims", preserve_dims, allow_zero=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        cls, kept = type(self).__name__, self.preserve_dims
        if x.ndim < kept:
            raise ValueError(
                f"{cls}: the input {describe(x)} has fewer than preserve_dims={kept} axes; pass "
                f"an input with its batch axes, or a smaller preserve_dims."
            )
        rest = math.prod(x.shape[kept:])
        known = math.prod(d for d in self.output_shape if d != -1)
        fits = rest % known == 0 if -1 in self.output_shape else rest == known
        if not fits:
            raise ValueError(
                f"{cls}: cannot reshape the input {describe(x)} (its last {x.ndim - kept} axes "
                f"hold {rest} values) to output_shape={self.output_shape}; fix output_shape "
                f"(one -1 is inferred) or preserve_dims={kept}."
            )
        return x.reshape(x.shape[:kept] + self.output_shape)


class Flatten(Module):
    """Flattens all axes but the first `preserve_dims` into one (``hk.Flatten``).

    An input with at most `preserve_dims` axes is returned unchanged. Prefer it to a
    ``lambda x: x.reshape(x.shape[0], -1)`` in a `Sequential`: see this file's docstring (a
    lambda makes every build of the same model a different pytree).

    Args:
      preserve_dims: how many leading axes (the batch axes) to keep.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nn.Sequential(pax.nn.Conv2D(1, 2, 3), pax.nn.Flatten(), pax.nn.Linear(32, 1))
      >>> net(jnp.ones((5, 4, 4, 1))).shape
      (5, 1)
      >>> pax.nn.Flatten(preserve_dims=2)(jnp.ones((2, 3, 4, 5))).shape
      (2, 3, 20)
    """

    def __init__(self, preserve_dims: int = 1, *, name: str | None = None) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        self.preserve_dims = v.positive_int(cls, "preserve_dims", preserve_dims, allow_zero=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim <= self.preserve_dims:
            return x
        return x.reshape(x.shape[: self.preserve_dims] + (-1,))
