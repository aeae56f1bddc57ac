"""`Metric`, the base class of the metrics, and the argument checks they share.

A metric is a `pax.Module` whose registered states are float32 running totals. Calling it
folds a batch into the totals in place (as `pax.nn.BatchNorm` updates its moving averages) and
returns the current value; `compute()` reads the value and `reset()` zeroes the totals, in
place too (it also returns the metric). Both return jax arrays, so nothing waits for the device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.describe import describe
from pax._src.metrics.mapped import PMAP_DEFAULT_AXIS, unreduced_axes

T = TypeVar("T", bound="Metric")
M = TypeVar("M", bound=Module)

AxisName = str | tuple[str, ...] | None

NOTHING: Any = object()


def parse_axis_name(cls: str, axis_name: Any) -> AxisName:
    """Returns `axis_name` as None, a str or a tuple of str; raises a TypeError otherwise.

    Example:
      >>> parse_axis_name("Mean", ["data", "model"])
      ('data', 'model')
    """
    if axis_name is None or (isinstance(axis_name, str) and axis_name):
        return axis_name
    if (
        isinstance(axis_name, Sequence)
        and not isinstance(axis_name, str)
        and axis_name
        and all(isinstance(n, str) and n for n in axis_name)
    ):
        return tuple(axis_name)
    shown = describe(axis_name) if hasattr(axis_name, "shape") else repr(axis_name)
    raise TypeError(
        f"{cls}: axis_name must be None, a mapped axis name or a tuple of names, got "
        f"{shown}. Fix: e.g. axis_name='batch', the name given to jax.shard_map's mesh axis "
        f"or jax.pmap's axis_name."
    )


def concrete(x: Any) -> np.ndarray | None:
    """`x` as a numpy array when its value is known here (not traced by jit), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except Exception:  # e.g. an array spread over several processes: treat as unknown
        return None


def _number_array(cls: str, name: str, value: Any, fix: str) -> jax.Array:
    """`value` as a jax array of real numbers or booleans; raises a TypeError naming `name`."""
    try:
        array = jnp.asarray(value) if value is not None else None
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{cls}: {name} must be an array of numbers, got {describe(value)} ({err}). Fix: {fix}"
        ) from err
    if array is None:
        raise TypeError(f"{cls}: {name} must be an array of numbers, got None. Fix: {fix}")
    if jnp.issubdtype(array.dtype, jnp.complexfloating):
        raise TypeError(
            f"{cls}: {name} must hold real numbers, got {describe(array)}. Fix: pass its real "
            f"part or its magnitude (jnp.abs)."
        )
    return array


def check_values(
    cls: str, name: str, value: Any, example: str = "a per-example loss of shape (batch,)"
) -> jax.Array:
    """`value` as a jax array of real numbers or booleans; raises a TypeError otherwise.

    Example:
      >>> check_values("Mean", "values", [1, 2]).tolist()
      [1, 2]
    """
    return _number_array(cls, name, value, f"pass a jax or numpy array, e.g. {example}.")


def _check_weights(cls: str, weights: jax.Array) -> jax.Array:
    """Refuses negative or non-finite weights known now; under jit (values unknown) such
    weights make the metric NaN instead of silently wrong."""
    known = concrete(weights)
    if known is None:
        return jnp.where(jnp.any(weights < 0), jnp.nan, weights)
    bad = ~np.isfinite(known) | (known < 0)
    if np.any(bad):
        first = tuple(int(i) for i in np.argwhere(bad)[0]) if known.ndim else ()
        raise ValueError(
            f"{cls}: weights must be finite and non-negative, got {float(known[first])!r} at "
            f"index {first} of {describe(weights)}. Fix: pass weights "
            f">= 0 (e.g. jnp.abs(weights)); to leave an entry out use mask= or a weight of 0."
        )
    return weights


def as_weights(
    cls: str, shape: tuple[int, ...], weights: Any, mask: Any, what: str = "the values"
) -> jax.Array | None:
    """`weights` times `mask` as float32, broadcast to `shape`; None when both are None.

    Each of them lines up with the leading axes of `shape` (a ``(batch,)`` mask fits values of
    shape ``(batch, time)``); each of its axes has the size of that axis of `shape`, or 1.
    A masked-out entry gets weight 0. Weights must be finite and non-negative: refused when
    their values are known (outside jit); under jit a negative weight makes the result NaN.

    Example:
      >>> as_weights("Mean", (2, 3), None, jnp.array([True, False])).tolist()
      [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    out = None
    for name, value in (("weights", weights), ("mask", mask)):
        if value is None:
            continue
        example = "jnp.array([1.0, 0.5, 2.0])" if name == "weights" else "labels >= 0"
        value = _number_array(cls, name, value, f"pass {name} as an array, e.g. {example}.")
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
        else:
            value = _check_weights(cls, value.astype(jnp.float32))
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


def refuse_values_update(
    module: Module, other: Any, rest: tuple, values: dict, call: str = "values"
) -> None:
    """Raises when `update` (the functional view of `pax.Module`, which merges a tree of the
    module's structure) is given a metric's inputs, as ``metric.update(values)`` (Flax NNX).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> refuse_values_update(pax.metrics.Sum(), jnp.ones(2), (), {})
      Traceback (most recent call last):
      TypeError: Sum.update got f32[2]...
    """
    cls = type(module).__name__
    trees = [t for t in (other, *rest) if t is not NOTHING]
    odd = [t for t in trees if not isinstance(t, Module)]
    if not values and trees and not odd:
        return
    if values:
        got = "keyword arguments " + ", ".join(f"{k}={describe(v)}" for k, v in values.items())
        call = ", ".join(f"{k}=..." for k in values)
    else:
        got = ", ".join(describe(t) for t in odd) if odd else "no tree"
    raise TypeError(
        f"{cls}.update got {got}: `update` is pax.Module's functional view (it returns a copy "
        f"merged with a tree of the same structure, e.g. {cls.lower()}.states()); it does not "
        f"add values to the metric. Fix: call the metric, `value = {cls.lower()}({call})`: it "
        f"updates the totals in place and returns the current value."
    )


class Metric(Module):
    """Base class of the metrics: a module whose states are running float32 totals.

    A subclass registers its totals as states initialized to zero, folds each batch into them
    with `accumulate` in ``__call__`` (returning the current value), and defines `compute`.
    Calling a metric changes it in place: inside a jitted function, return it (as any pax
    module) and rebind, ``metric = step(metric, batch)``. `reset` zeroes it in place.

    With `axis_name`, each update is summed over that mapped axis (``jax.shard_map`` or
    ``jax.pmap``) before it is added, so every replica holds the totals of the global batch.
    Without it, an update inside ``jax.shard_map`` / ``jax.pmap`` (that may differ per device)
    warns: each device would hold only its own share. Under plain `jax.jit` with a sharded
    batch no axis name is needed: the sums over the batch are already global.

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
        """Zeroes the totals in place (the metric before any update) and returns the metric.

        Both ``metric.reset()`` and ``metric = metric.reset()`` work. Inside a jitted
        function, return the metric as after any call. For a zeroed copy that leaves the
        original alone: ``metric.copy().reset()``.

        Example:
          >>> import jax.numpy as jnp, pax
          >>> total = pax.metrics.Sum()
          >>> _ = total(jnp.ones(3))
          >>> total.copy().reset().compute().item(), total.compute().item()
          (0.0, 3.0)
          >>> _ = total.reset()
          >>> total.compute().item()
          0.0
        """
        zeroed = jax.tree_util.tree_map(jnp.zeros_like, self)
        for name in self.registry:
            child = getattr(self, name)
            if isinstance(child, Metric):
                child.reset()  # in place, so that other references to it see the reset
            else:
                setattr(self, name, getattr(zeroed, name))
        return self

    def update(self: T, other: Any = NOTHING, *rest: Any, **values: Any) -> T:
        """Returns a copy merged with trees of this metric's structure (`pax.Module.update`).

        It does not add values: call the metric for that, ``metric(values)``.

        Raises:
          TypeError: if given values (an array, keyword arguments) instead of trees of this
            metric's structure.

        Example:
          >>> import jax, jax.numpy as jnp, pax
          >>> total = pax.metrics.Sum()
          >>> _ = total(jnp.ones(3))
          >>> doubled = jax.tree_util.tree_map(lambda x: 2 * x, total.states())
          >>> total.update(doubled).compute().item()
          6.0
        """
        refuse_values_update(self, other, rest, values)
        return super().update(other, *rest)

    def accumulate(self, **deltas: Any) -> None:
        """Adds each of `deltas` to the state of that name, after summing it over `axis_name`.

        Without `axis_name`, inside ``jax.shard_map`` / ``jax.pmap`` with deltas that may
        differ per device (and totals that do not), it warns: see `pax.metrics.Metric`.

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
        else:
            self._warn_if_unreduced(values, [getattr(self, n) for n in names])
        for name, value in zip(names, values):
            setattr(self, name, getattr(self, name) + value)

    def _warn_if_unreduced(self, deltas: list[jax.Array], states: list[Any]) -> None:
        axes = unreduced_axes(deltas, states)
        if not axes:
            return
        cls = type(self).__name__
        shown = [a for a in axes if a != PMAP_DEFAULT_AXIS]
        name = str(shown[0]) if shown else "batch"
        also = "" if shown else f" and jax.pmap(..., axis_name={name!r})"
        warnings.warn(
            f"{cls}: updated inside jax.shard_map / jax.pmap over the mapped axes "
            f"{tuple(shown) or '(unnamed pmap axis)'} without axis_name: each device adds only "
            f"its own share of the batch, so the metric reports one device's value. Fix: "
            f"pax.metrics.{cls}(..., axis_name={name!r}){also} (each update is then summed "
            f"over the axis), or update it under plain jax.jit with a sharded batch.",
            UserWarning,
            stacklevel=4,
        )
