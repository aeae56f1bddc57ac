"""Max and average pooling, as functions and modules (numerically as Haiku's)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pax._src.core.module import Module
from pax._src.nn import _validate as v

_AXES = {1: "W", 2: "HW", 3: "DHW"}


def _num_spatial(
    window_shape: int | Sequence[int], stride: int | Sequence[int] | None, data_format: str
) -> int:
    """Spatial axes: an old layout string's, else the length of a sequence argument, else 2."""
    legacy = v.legacy_spatial_axes(data_format)
    if legacy:
        return legacy
    for arg in (window_shape, stride):
        if isinstance(arg, Sequence) and not isinstance(arg, str) and len(arg) > 0:
            return len(arg)
    return 2


def _check_args(
    name: str,
    window_shape: int | Sequence[int],
    stride: int | Sequence[int] | None,
    padding: str,
    data_format: str,
) -> tuple[tuple[int, ...], tuple[int, ...], str, str]:
    """Validates the arguments; returns the spatial window and stride, the padding, the format."""
    n = _num_spatial(window_shape, stride, data_format)
    also = ""
    if isinstance(window_shape, int) and _num_spatial(window_shape, stride, "") != n:
        also = f"` and `window_shape={(window_shape,) * n!r}"  # the new spelling needs a tuple
    data_format = v.data_format(name, data_format, n, also)
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"{name}: unknown padding {padding!r}; use 'SAME' or 'VALID'.")
    window = v.replicate(name, "window_shape", window_shape, n)
    stride = window if stride is None else v.replicate(name, "stride", stride, n)
    return window, stride, padding.upper(), data_format


def _window(
    name: str,
    x: jax.Array,
    window_shape: int | Sequence[int],
    stride: int | Sequence[int] | None,
    padding: str,
    data_format: str,
) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """The full-rank window and strides for `x` (ones on batch and channel axes)."""
    window, stride, padding, data_format = _check_args(
        name, window_shape, stride, padding, data_format
    )
    n = len(window)
    channels_last = data_format == v.CHANNELS_LAST
    if x.ndim < n + 1:
        axes = (*_AXES.get(n, "S" * n), "C") if channels_last else ("C", *_AXES.get(n, "S" * n))
        raise ValueError(
            f"{name}: expected an input of rank >= {n + 1} (({', '.join(axes)}) with optional "
            f"leading batch axes, {data_format}), got shape {x.shape}."
        )
    if channels_last:
        lead = (1,) * (x.ndim - n - 1)
        return (*lead, *window, 1), (*lead, *stride, 1), padding
    lead = (1,) * (x.ndim - n)
    return (*lead, *window), (*lead, *stride), padding


@v.renamed_kwargs(strides="stride")
def max_pool(
    x: jax.Array,
    window_shape: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: str = "VALID",
    data_format: str = "channels_last",
) -> jax.Array:
    """Max pooling over the spatial axes of `x`.

    The number of spatial axes is the length of `window_shape` (or of `stride`) when either
    is a sequence, else 2 (images): ``max_pool(x, 2)`` pools ``(N, H, W, C)`` images and
    ``max_pool(x, (2,))`` sequences ``(N, W, C)``.

    Args:
      x: input; any number of leading batch axes (zero included), then the spatial axes and
        the channel axis in the order of `data_format`.
      window_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis; default `window_shape`.
      padding: ``"VALID"`` or ``"SAME"``.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Returns:
      The pooled array (the same as ``hk.max_pool`` with the full-rank window).

    Raises:
      ValueError: for a bad window, stride, padding or data format, or an input with fewer
        axes than the spatial axes plus the channel axis.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> pax.nn.max_pool(x, 2)[0, ..., 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
      >>> pax.nn.max_pool(jnp.ones((2, 3, 8)), (2,), data_format="channels_first").shape
      (2, 3, 4)
    """
    x = jnp.asarray(x)
    window, stride, padding = _window("max_pool", x, window_shape, stride, padding, data_format)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, stride, padding)


@v.renamed_kwargs(strides="stride")
def avg_pool(
    x: jax.Array,
    window_shape: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: str = "VALID",
    data_format: str = "channels_last",
) -> jax.Array:
    """Average pooling over the spatial axes of `x`.

    With ``"SAME"`` padding each output is the mean of the input entries inside its window
    (padding is not counted), as ``hk.avg_pool``.

    Args:
      x: input; any number of leading batch axes (zero included), then the spatial axes and
        the channel axis in the order of `data_format`.
      window_shape: an int or one int per spatial axis (their number as for `max_pool`).
      stride: an int or one int per spatial axis; default `window_shape`.
      padding: ``"VALID"`` or ``"SAME"``.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Returns:
      The pooled array (the same as ``hk.avg_pool`` with the full-rank window).

    Raises:
      ValueError: as `max_pool`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> pax.nn.avg_pool(x, 2)[0, ..., 0].tolist()
      [[2.5, 4.5], [10.5, 12.5]]
    """
    x = jnp.asarray(x)
    window, stride, padding = _window("avg_pool", x, window_shape, stride, padding, data_format)
    pooled = lax.reduce_window(x, 0.0, lax.add, window, stride, padding)
    if padding == "VALID":
        return pooled / np.prod(window)
    shape = [d if w != 1 else 1 for d, w in zip(x.shape, window)]
    counts = lax.reduce_window(jnp.ones(shape, x.dtype), 0.0, lax.add, window, stride, padding)
    return pooled / counts


class _Pool(Module):
    strides = v.RenamedAttribute("stride")

    @v.renamed_kwargs(strides="stride")
    def __init__(
        self,
        window_shape: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: str = "VALID",
        data_format: str = "channels_last",
        *,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        window, stride, padding, data_format = _check_args(
            cls, window_shape, stride, padding, data_format
        )
        self.window_shape = window
        self.stride = stride
        self.padding = padding
        self.data_format = data_format


class MaxPool(_Pool):
    """Module form of `max_pool` (same arguments, checked at construction).

    Args:
      window_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis; default `window_shape`.
      padding: ``"VALID"`` or ``"SAME"``.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.MaxPool(2)(jnp.ones((1, 8, 8, 3))).shape
      (1, 4, 4, 3)
      >>> pax.nn.MaxPool((2,))(jnp.ones((1, 8, 3))).shape
      (1, 4, 3)
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(x, self.window_shape, self.stride, self.padding, self.data_format)


class AvgPool(_Pool):
    """Module form of `avg_pool` (same arguments, checked at construction).

    Args:
      window_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis; default `window_shape`.
      padding: ``"VALID"`` or ``"SAME"``.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.nn.AvgPool(2, padding="SAME")(jnp.ones((1, 5, 5, 3))).shape
      (1, 3, 3, 3)
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        return avg_pool(x, self.window_shape, self.stride, self.padding, self.data_format)
