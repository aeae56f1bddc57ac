"""`pax.haiku` convolutions: Haiku's ``Conv1D``/``Conv2D`` and their transposes, initialized."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from pax._src.haiku.layers import (
    InitializerLike,
    IntOrSeq,
    as_haiku_initializer,
    build_layer,
    channel_index,
    positive_int,
)
from pax._src.haiku.module import HaikuModule


def _per_axis(fn: str, arg: str, value: IntOrSeq, n: int) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else ()
    if len(values) == 1:
        values = values * n
    if len(values) != n or not all(isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"pax.haiku.{fn}: {arg} must be an int or {n} ints, got {value!r}.")
    return tuple(int(v) for v in values)


def _conv_dummy(
    fn: str, n: int, in_features: int, kernel: IntOrSeq, rate: IntOrSeq, data_format: str
) -> tuple[jax.Array]:
    """A zero input whose spatial size fits one kernel application (any padding)."""
    kernel = _per_axis(fn, "kernel_shape", kernel, n)
    rate = _per_axis(fn, "rate", rate, n)
    spatial = [max(1, (k - 1) * r + 1) for k, r in zip(kernel, rate)]
    if channel_index(fn, data_format, n + 2) == 1:
        shape = [1, in_features, *spatial]
    else:
        shape = [1, *spatial, in_features]
    return (jnp.zeros(shape, jnp.float32),)


def _conv(
    fn: str,
    hk_cls: type[hk.Module],
    n: int,
    in_features: int,
    out_features: int,
    rng_key: jax.Array | None,
    **kwargs: Any,
) -> HaikuModule:
    """Builds `hk_cls` for the pax.haiku function `fn`.

    `kwargs` go to Haiku under their own names, with the initializers adapted and
    `out_features` as Haiku's ``output_channels``; `in_features` gives the dummy input's shape.
    """
    in_features = positive_int(fn, "in_features", in_features)
    kwargs["output_channels"] = positive_int(fn, "out_features", out_features)
    kwargs["w_init"] = as_haiku_initializer(fn, "w_init", kwargs["w_init"])
    kwargs["b_init"] = as_haiku_initializer(fn, "b_init", kwargs["b_init"])
    kernel, fmt = kwargs["kernel_shape"], kwargs["data_format"]
    dummy = _conv_dummy(fn, n, in_features, kernel, kwargs.get("rate", 1), fmt)
    # Parameters do not depend on output_shape; the dummy input need not produce it.
    init_changes = {"output_shape": None} if kwargs.get("output_shape") is not None else None
    return build_layer(hk_cls, kwargs, dummy, rng_key, init_changes=init_changes)


def conv_1d(
    in_features: int,
    out_features: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    rate: IntOrSeq = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "NWC",
    feature_group_count: int = 1,
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv1D`` from `in_features` to `out_features` channels, initialized.

    Args:
      in_features: number of input channels.
      out_features: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      rate: dilation rate, an int or one int per spatial axis.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"NWC"`` (channels last) or ``"NCW"``.
      feature_group_count: number of input channel groups (grouped convolution).
      mask: optional mask multiplied into the weight (static; compared by content).
      name: the Haiku module name (see `pax.haiku.load_haiku_params`).
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.haiku.conv_1d(3, 5, kernel_shape=3)(jnp.ones((2, 7, 3))).shape
      (2, 7, 5)
    """
    return _conv(
        "conv_1d",
        hk.Conv1D,
        1,
        in_features,
        out_features,
        rng_key,
        kernel_shape=kernel_shape,
        stride=stride,
        rate=rate,
        padding=padding,
        with_bias=with_bias,
        w_init=w_init,
        b_init=b_init,
        data_format=data_format,
        feature_group_count=feature_group_count,
        mask=mask,
        name=name,
    )


def conv_2d(
    in_features: int,
    out_features: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    rate: IntOrSeq = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "NHWC",
    feature_group_count: int = 1,
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv2D`` from `in_features` to `out_features` channels, initialized.

    Args:
      in_features: number of input channels.
      out_features: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      rate: dilation rate, an int or one int per spatial axis.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"NHWC"`` (channels last) or ``"NCHW"``.
      feature_group_count: number of input channel groups (grouped convolution).
      mask: optional mask multiplied into the weight (static; compared by content).
      name: the Haiku module name (see `pax.haiku.load_haiku_params`).
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.haiku.conv_2d(3, 5, kernel_shape=3, stride=2)(jnp.ones((2, 8, 8, 3))).shape
      (2, 4, 4, 5)
    """
    return _conv(
        "conv_2d",
        hk.Conv2D,
        2,
        in_features,
        out_features,
        rng_key,
        kernel_shape=kernel_shape,
        stride=stride,
        rate=rate,
        padding=padding,
        with_bias=with_bias,
        w_init=w_init,
        b_init=b_init,
        data_format=data_format,
        feature_group_count=feature_group_count,
        mask=mask,
        name=name,
    )


def conv_1d_transpose(
    in_features: int,
    out_features: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    output_shape: IntOrSeq | None = None,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "NWC",
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv1DTranspose`` from `in_features` to `out_features` channels, initialized.

    Args:
      in_features: number of input channels.
      out_features: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      output_shape: the spatial output shape, to pick among the shapes a stride allows.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"NWC"`` (channels last) or ``"NCW"``.
      mask: optional mask multiplied into the weight (static; compared by content).
      name: the Haiku module name (see `pax.haiku.load_haiku_params`).
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.haiku.conv_1d_transpose(3, 5, 3, stride=2)(jnp.ones((2, 4, 3))).shape
      (2, 8, 5)
    """
    return _conv(
        "conv_1d_transpose",
        hk.Conv1DTranspose,
        1,
        in_features,
        out_features,
        rng_key,
        kernel_shape=kernel_shape,
        stride=stride,
        output_shape=output_shape,
        padding=padding,
        with_bias=with_bias,
        w_init=w_init,
        b_init=b_init,
        data_format=data_format,
        mask=mask,
        name=name,
    )


def conv_2d_transpose(
    in_features: int,
    out_features: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    output_shape: IntOrSeq | None = None,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "NHWC",
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv2DTranspose`` from `in_features` to `out_features` channels, initialized.

    Args:
      in_features: number of input channels.
      out_features: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      output_shape: the spatial output shape, to pick among the shapes a stride allows.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"NHWC"`` (channels last) or ``"NCHW"``.
      mask: optional mask multiplied into the weight (static; compared by content).
      name: the Haiku module name (see `pax.haiku.load_haiku_params`).
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.haiku.conv_2d_transpose(3, 5, 3, stride=2)(jnp.ones((2, 4, 4, 3))).shape
      (2, 8, 8, 5)
    """
    return _conv(
        "conv_2d_transpose",
        hk.Conv2DTranspose,
        2,
        in_features,
        out_features,
        rng_key,
        kernel_shape=kernel_shape,
        stride=stride,
        output_shape=output_shape,
        padding=padding,
        with_bias=with_bias,
        w_init=w_init,
        b_init=b_init,
        data_format=data_format,
        mask=mask,
        name=name,
    )
