"""`Mean` and `Sum`: running, optionally weighted, totals of every value seen."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from pax._src.metrics.base import (
    AxisName,
    Metric,
    as_weights,
    check_values,
    weight_count,
    weighted_sum,
)


class Mean(Metric):
    """The running (weighted) mean of every value seen: ``sum(w * x) / sum(w)``.

    Each call adds one batch of values of any shape; every entry counts, with weight 1 unless
    `weights` or `mask` say otherwise. The states are the float32 ``total`` (of ``w * x``) and
    ``count`` (of ``w``). Before any update, and while every weight is 0, the mean is NaN.

    Args:
      axis_name: sum each update over this mapped axis (``jax.shard_map`` / ``jax.pmap``); see
        `pax.metrics.Metric`.

    Raises:
      TypeError: if `axis_name` is not None, a str or a tuple of str.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> loss = pax.metrics.Mean()
      >>> loss(jnp.array([1.0, 2.0, 3.0])).item()
      2.0
      >>> loss(jnp.array([10.0, 99.0]), mask=jnp.array([True, False])).item()  # padded batch
      4.0
      >>> loss.compute().item(), loss.count.item(), loss.reset().count.item()
      (4.0, 4.0, 0.0)
    """

    total: jax.Array
    count: jax.Array

    def __init__(self, axis_name: AxisName = None) -> None:
        super().__init__(axis_name)
        self.register_state("total", jnp.zeros((), jnp.float32))
        self.register_state("count", jnp.zeros((), jnp.float32))

    def __call__(self, values: Any, weights: Any = None, mask: Any = None) -> jax.Array:
        """Folds `values` into the mean and returns the new mean.

        Args:
          values: an array of any shape (a scalar batch mean counts once; pass the batch size
            as `weights` to weigh it by its examples).
          weights: non-negative weights lined up with the leading axes of `values` (shape
            ``(batch,)`` weighs whole examples of values ``(batch, time)``), or None.
          mask: booleans of the same kind of shape: False leaves the entry out (padding).

        Raises:
          ValueError: if `weights` or `mask` does not fit the shape of `values`.
          TypeError: if `values` is not an array of real numbers.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> pax.metrics.Mean()(jnp.array([1.0, 3.0]), weights=jnp.array([3.0, 1.0])).item()
          1.5
        """
        cls = type(self).__name__
        values = check_values(cls, "values", values)
        w = as_weights(cls, values.shape, weights, mask)
        self.accumulate(total=weighted_sum(values, w), count=weight_count(values.shape, w))
        return self.compute()

    def compute(self) -> jax.Array:
        """Returns the mean so far (NaN before any weighted value), a float32 scalar.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> pax.metrics.Mean().compute()
          Array(nan, dtype=float32)
        """
        return self.total / self.count


class Sum(Metric):
    """The running (weighted) sum of every value seen: ``sum(w * x)``.

    The one state is the float32 ``total``; it starts at 0.

    Args:
      axis_name: sum each update over this mapped axis (``jax.shard_map`` / ``jax.pmap``); see
        `pax.metrics.Metric`.

    Raises:
      TypeError: if `axis_name` is not None, a str or a tuple of str.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> tokens = pax.metrics.Sum()
      >>> tokens(jnp.array([3, 4])).item()
      7.0
      >>> tokens(jnp.array([5, 6]), mask=jnp.array([True, False])).item()
      12.0
    """

    total: jax.Array

    def __init__(self, axis_name: AxisName = None) -> None:
        super().__init__(axis_name)
        self.register_state("total", jnp.zeros((), jnp.float32))

    def __call__(self, values: Any, weights: Any = None, mask: Any = None) -> jax.Array:
        """Adds the (weighted) sum of `values` and returns the new total.

        Args:
          values: an array of any shape.
          weights: weights lined up with the leading axes of `values`, or None.
          mask: booleans of the same kind of shape: False leaves the entry out (padding).

        Raises:
          ValueError: if `weights` or `mask` does not fit the shape of `values`.
          TypeError: if `values` is not an array of real numbers.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> pax.metrics.Sum()(jnp.ones((2, 3)), weights=jnp.array([1.0, 0.5])).item()
          4.5
        """
        cls = type(self).__name__
        values = check_values(cls, "values", values)
        self.accumulate(total=weighted_sum(values, as_weights(cls, values.shape, weights, mask)))
        return self.compute()

    def compute(self) -> jax.Array:
        """Returns the sum so far, a float32 scalar.

        Example:
          >>> import pax
          >>> pax.metrics.Sum().compute().item()
          0.0
        """
        return self.total
