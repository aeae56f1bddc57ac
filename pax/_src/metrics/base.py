"""`Metric`, the base class of the metrics, and the argument checks they share.

A metric is a `pax.Module` whose registered states are float32 running totals. Calling it
folds a batch into the totals in place (as `pax.nn.BatchNorm` updates its moving averages) and
returns the current value; `compute()` reads the value and `reset()` returns a zeroed copy.
Both return jax arrays, so nothing waits for the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.describe import describe

T = TypeVar("T", bound="Metric")

AxisName = str | tuple[str, ...] | None


def parse_axis_name(cls: str, axis_name: Any) -> AxisName:
    """Returns `axis_name` as None, a str or a tuple of str; raises a TypeError otherwise.

    Example:
      >>> parse_axis_name("Mean", ["data", "model"])
      ('data', 'model')
    """
    if axis_name is None or isinstance(axis_name, str):
        return axis_name
    if isinstance(axis_name, Sequence) and axis_name and all(isinstance(n, str) for n in axis_name):
        return tuple(axis_name)
    raise TypeError(
        f"{cls}: axis_name must be None, a mapped axis name or a tuple of names, got "
        f"{axis_name!r}. Fix: e.g. axis_name='batch', the name given to jax.shard_map's mesh "
        f"axis or jax.pmap's axis_name."
    )


def as_weights(
    cls: str, shape: tuple[int, ...], weights: Any, mask: Any, what: str = "the values"
) -> jax.Array | None:
    """`weights` times `mask` as float32, broadcast to `shape`; None when both are None.

    Each of them lines up with the leading axes of `shape` (a ``(batch,)`` mask fits values of
    shape ``(batch, time)``); each of its axes has the size of that axis of `shape`, or 1.
    A masked-out entry gets weight 0.

    Example:
      >>> as_weights("Mean", (2, 3), None, jnp.array([True, False])).tolist()
      [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    out = None
    for name, value in (("weights", weights), ("mask", mask)):
        if value is None:
            continue
        value = jnp.asarray(value)
        fits = value.ndim <= len(shape) and all(
            n in (1, m) for n, m in zip(value.shape, shape[: value.ndim])
        )
        if not fits:
            raise ValueError(
                f"{cls}: {name} of shape {value.shape} does not fit {what} of shape {shape}: its "
                f"axes line up with the leading axes of {what}, each of the same size or 1. "
                f"Fix: pass {name} of shape {shape[:1]} (one per example) or {shape}."
            )
        if name == "mask":
            value = value.astype(bool)
        value = value.astype(jnp.float32).reshape(value.shape + (1,) * (len(shape) - value.ndim))
        out = value if out is None else out * value
    return None if out is None else jnp.broadcast_to(out, shape)


def weighted_sum(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """The float32 sum of ``values * weights``; entries of weight 0 add nothing, even NaN."""
    values = values.astype(jnp.float32)
    if weights is None:
        return jnp.sum(values)
    return jnp.sum(jnp.where(weights != 0, values * weights, 0.0))


def weight_count(shape: tuple[int, ...], weights: jax.Array | None) -> jax.Array:
    """The float32 sum of the weights (the number of entries when there are none)."""
    if weights is None:
        return jnp.asarray(float(math.prod(shape)), jnp.float32)
    return jnp.sum(weights)


class Metric(Module):
    """Base class of the metrics: a module whose states are running float32 totals.

    A subclass registers its totals as states initialized to zero, folds each batch into them
    with `accumulate` in ``__call__`` (returning the current value), and defines `compute`.
    Calling a metric changes it in place: inside a jitted function, return it (as any pax
    module) and rebind, ``metric = step(metric, batch)``.

    With `axis_name`, each update is summed over that mapped axis (``jax.shard_map`` or
    ``jax.pmap``) before it is added, so every replica holds the totals of the global batch.
    Under plain `jax.jit` with a sharded batch no axis name is needed: the sums over the batch
    are already global.

    Args:
      axis_name: name (or tuple of names) of a mapped axis to sum each update over.

    Raises:
      TypeError: if `axis_name` is not None, a str or a tuple of str.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> class Count(pax.metrics.Metric):
      ...     def __init__(self):
      ...         super().__init__()
      ...         self.register_state("count", jnp.zeros((), jnp.float32))
      ...     def __call__(self, values):
      ...         self.accumulate(count=jnp.size(values))
      ...         return self.compute()
      ...     def compute(self):
      ...         return self.count
      >>> count = Count()
      >>> count(jnp.ones(3)), count(jnp.ones(2))
      (Array(3., dtype=float32), Array(5., dtype=float32))
      >>> count.reset().compute()
      Array(0., dtype=float32)
    """

    def __init__(self, axis_name: AxisName = None) -> None:
        super().__init__()
        self.axis_name = parse_axis_name(type(self).__name__, axis_name)

    def compute(self) -> Any:
        """Returns the current value, as jax arrays (no host sync).

        Example:
          >>> import jax.numpy as jnp, pax
          >>> pax.metrics.Sum()(jnp.ones(3)).item()
          3.0
        """
        raise NotImplementedError(f"{type(self).__name__} must define compute().")

    def reset(self: T) -> T:
        """Returns a copy whose totals are zero (the metric before any update).

        Example:
          >>> import jax.numpy as jnp, pax
          >>> total = pax.metrics.Sum()
          >>> _ = total(jnp.ones(3))
          >>> total.reset().compute().item(), total.compute().item()
          (0.0, 3.0)
        """
        return jax.tree_util.tree_map(jnp.zeros_like, self)

    def accumulate(self, **deltas: Any) -> None:
        """Adds each of `deltas` to the state of that name, after summing it over `axis_name`.

        Raises:
          NameError: if `axis_name` is not bound here (not inside ``jax.shard_map`` or
            ``jax.pmap`` with that axis).

        Example:
          >>> import jax.numpy as jnp, pax
          >>> total = pax.metrics.Sum()
          >>> total.accumulate(total=jnp.float32(2.5))
          >>> total.compute().item()
          2.5
        """
        names = list(deltas)
        values = [jnp.asarray(deltas[n], jnp.float32) for n in names]
        if self.axis_name is not None:
            try:
                values = jax.lax.psum(values, self.axis_name)
            except NameError as err:
                raise NameError(
                    f"{type(self).__name__}: axis_name={self.axis_name!r} is not a mapped axis "
                    f"here ({err}). Fix: update the metric inside jax.shard_map or jax.pmap "
                    f"over that axis, or build it with axis_name=None under jax.jit (the sums "
                    f"over a sharded batch are already global)."
                ) from err
        for name, value in zip(names, values):
            setattr(self, name, getattr(self, name) + value)


def check_values(cls: str, name: str, value: Any) -> jax.Array:
    """`value` as a jax array of real numbers or booleans; raises a TypeError otherwise."""
    try:
        array = jnp.asarray(value)
    except TypeError as err:
        raise TypeError(
            f"{cls}: {name} must be an array of numbers, got {describe(value)} ({err}). "
            f"Fix: pass a jax or numpy array, e.g. a per-example loss of shape (batch,)."
        ) from err
    if jnp.issubdtype(array.dtype, jnp.complexfloating):
        raise TypeError(
            f"{cls}: {name} must hold real numbers, got {describe(array)}. Fix: pass its real "
            f"part or its magnitude (jnp.abs)."
        )
    return array
