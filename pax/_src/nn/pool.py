"""Max and average pooling, as functions and modules (numerically as Haiku's)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pax._src.core.module import Module
from pax._src.nn import _validate as v

_SPATIAL = {"NWC": 1, "NCW": 1, "NHWC": 2, "NCHW": 2, "NDHWC": 3, "NCDHW": 3}


def _check_args(
    name: str,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: str,
    data_format: str,
) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Validates the arguments; returns the spatial window, the spatial strides, the padding."""
    if data_format not in _SPATIAL:
        raise ValueError(
            f"{name}: unknown data_format {data_format!r}; use one of {sorted(_SPATIAL)}."
        )
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"{name}: unknown padding {padding!r}; use 'SAME' or 'VALID'.")
    n = _SPATIAL[data_format]
    window = v.replicate(name, "window_shape", window_shape, n)
    stride = window if strides is None else v.replicate(name, "strides", strides, n)
    return window, stride, padding.upper()


def _window(
    name: str,
    x: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: str,
    data_format: str,
) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """The full-rank window and strides for `x` (ones on batch and channel axes)."""
    window, stride, padding = _check_args(name, window_shape, strides, padding, data_format)
    n = len(window)
    if x.ndim < n + 1:
        raise ValueError(
            f"{name}: expected an input of rank >= {n + 1} ({data_format} with optional batch "
            f"axes), got shape {x.shape}."
        )
    if data_format.endswith("C"):
        lead = (1,) * (x.ndim - n - 1)
        return (*lead, *window, 1), (*lead, *stride, 1), padding
    lead = (1,) * (x.ndim - n)
    return (*lead, *window), (*lead, *stride), padding


def max_pool(
    x: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str = "VALID",
    data_format: str = "NHWC",
) -> jax.Array:
    """Max pooling over the spatial axes named by `data_format`.

    Args:
      x: input; any number of leading batch axes (zero included), then the layout of
        `data_format` without its ``N``.
      window_shape: an int or one int per spatial axis.
      strides: an int or one int per spatial axis; default `window_shape`.
      padding: ``"VALID"`` or ``"SAME"``.
      data_format: ``"NWC"``, ``"NCW"``, ``"NHWC"`` (default), ``"NCHW"``, ``"NDHWC"`` or
        ``"NCDHW"``.

    Returns:
      The pooled array (the same as ``hk.max_pool`` with the full-rank window).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> pax.nn.max_pool(x, 2)[0, ..., 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
    """
    x = jnp.asarray(x)
    window, stride, padding = _window("max_pool", x, window_shape, strides, padding, data_format)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, stride, padding)


def avg_pool(
    x: jax.Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: str = "VALID",
    data_format: str = "NHWC",
) -> jax.Array:
    """Average pooling over the spatial axes named by `data_format`.

    With ``"SAME"`` padding each output is the mean of the input entries inside its window
    (padding is not counted), as ``hk.avg_pool``. Arguments as `max_pool`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> pax.nn.avg_pool(x, 2)[0, ..., 0].tolist()
      [[2.5, 4.5], [10.5, 12.5]]
    """
    x = jnp.asarray(x)
    window, stride, padding = _window("avg_pool", x, window_shape, strides, padding, data_format)
    pooled = lax.reduce_window(x, 0.0, lax.add, window, stride, padding)
    if padding == "VALID":
        return pooled / np.prod(window)
    shape = [d if w != 1 else 1 for d, w in zip(x.shape, window)]
    counts = lax.reduce_window(jnp.ones(shape, x.dtype), 0.0, lax.add, window, stride, padding)
    return pooled / counts


class _Pool(Module):
    def __init__(
        self,
        window_shape: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        padding: str = "VALID",
        data_format: str = "NHWC",
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        window, stride, padding = _check_args(cls, window_shape, strides, padding, data_format)
        self.window_shape = window
        self.strides = stride
        self.padding = padding
        self.data_format = data_format


class MaxPool(_Pool):
    """Module form of `max_pool` (same arguments, checked at construction).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.MaxPool(2, data_format="NWC")(jnp.ones((1, 8, 3))).shape
      (1, 4, 3)
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(x, self.window_shape, self.strides, self.padding, self.data_format)


class AvgPool(_Pool):
    """Module form of `avg_pool` (same arguments, checked at construction).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.AvgPool(2, padding="SAME")(jnp.ones((1, 5, 5, 3))).shape
      (1, 3, 3, 3)
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool(x, self.window_shape, self.strides, self.padding, self.data_format)
