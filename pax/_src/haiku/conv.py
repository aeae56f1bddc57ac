"""`pax.haiku` convolutions: Haiku's ``Conv1D``/``Conv2D`` and their transposes, initialized.

They take pax.nn's argument names (`in_dim`, `out_dim`, `dilation`,
``data_format="channels_last"``) in Pax v0.2's positional order (``input_channels,
output_channels, kernel_shape, stride, rate, padding, with_bias, w_init, b_init, data_format``):
a Pax v0.2 call with positional arguments means the same. The keywords `in_features`,
`out_features`, Pax v0.2's `input_channels`, `output_channels` and `rate` (Haiku's name of the
dilation) and the layouts ``"NWC"``, ``"NHWC"``, ``"NCW"``, ``"NCHW"`` still work, with a
`DeprecationWarning` naming the new spelling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from pax._src.arguments import positive_int, renamed_kwargs, replicate
from pax._src.haiku.layers import (
    InitializerLike,
    IntOrSeq,
    as_haiku_initializer,
    build_layer,
    haiku_layout,
)
from pax._src.haiku.module import HaikuModule

# The keywords renamed by the one pax vocabulary (old -> new), accepted for one release.
RENAMED = {"in_features": "in_dim", "out_features": "out_dim"}
# Pax v0.2's names of the channel counts, also accepted with a warning.
RENAMED.update(input_channels="in_dim", output_channels="out_dim")


def _per_axis(fn: str, arg: str, value: IntOrSeq, n: int) -> tuple[int, ...]:
    """`value` for each of the `n` spatial axes; as in Haiku, one int may stand for all."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 1:
        value = value[0]
    return replicate(fn, arg, value, n)


def _conv(
    fn: str,
    hk_cls: type[hk.Module],
    n: int,
    in_dim: int,
    out_dim: int,
    rng_key: jax.Array | None,
    **kwargs: Any,
) -> HaikuModule:
    """Builds `hk_cls` for the pax.haiku function `fn` (its public name, shown in errors).

    `kwargs` go to Haiku under their own names (``rate`` for the dilation), with the
    initializers adapted, `out_dim` as Haiku's ``output_channels`` and `data_format` as
    Haiku's layout string; `in_dim` gives the dummy input's shape.
    """
    in_dim = positive_int(fn, "in_dim", in_dim)
    kwargs["output_channels"] = positive_int(fn, "out_dim", out_dim)
    kwargs["w_init"] = as_haiku_initializer(fn, "w_init", kwargs["w_init"])
    kwargs["b_init"] = as_haiku_initializer(fn, "b_init", kwargs["b_init"])
    kwargs["data_format"] = layout = haiku_layout(fn, kwargs["data_format"], n)
    # A zero input whose spatial size fits one kernel application (any padding).
    kernel = _per_axis(fn, "kernel_shape", kwargs["kernel_shape"], n)
    dilation = _per_axis(fn, "dilation", kwargs.get("rate", 1), n)
    spatial = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    shape = [1, *spatial, in_dim] if layout.endswith("C") else [1, in_dim, *spatial]
    # Parameters do not depend on output_shape; the dummy input need not produce it.
    init_changes = {"output_shape": None} if kwargs.get("output_shape") is not None else None
    dummy = (jnp.zeros(shape, jnp.float32),)
    return build_layer(hk_cls, kwargs, dummy, rng_key, init_changes=init_changes)


@renamed_kwargs("pax.haiku", **RENAMED, rate="dilation")
def conv_1d(
    in_dim: int,
    out_dim: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    dilation: IntOrSeq = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "channels_last",
    feature_group_count: int = 1,
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv1D`` from `in_dim` to `out_dim` channels, initialized.

    Args:
      in_dim: number of input channels.
      out_dim: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      dilation: kernel dilation, an int or one int per spatial axis (Haiku's ``rate``).
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default, ``(N, W, C)``) or
        ``"channels_first"`` (``(N, C, W)``).
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
        "pax.haiku.conv_1d",
        hk.Conv1D,
        1,
        in_dim,
        out_dim,
        rng_key,
        kernel_shape=kernel_shape,
        stride=stride,
        rate=dilation,
        padding=padding,
        with_bias=with_bias,
        w_init=w_init,
        b_init=b_init,
        data_format=data_format,
        feature_group_count=feature_group_count,
        mask=mask,
        name=name,
    )


@renamed_kwargs("pax.haiku", **RENAMED, rate="dilation")
def conv_2d(
    in_dim: int,
    out_dim: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    dilation: IntOrSeq = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "channels_last",
    feature_group_count: int = 1,
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv2D`` from `in_dim` to `out_dim` channels, initialized.

    Args:
      in_dim: number of input channels.
      out_dim: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      dilation: kernel dilation, an int or one int per spatial axis (Haiku's ``rate``).
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default, ``(N, H, W, C)``) or
        ``"channels_first"`` (``(N, C, H, W)``).
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
        "pax.haiku.conv_2d",
        hk.Conv2D,
        2,
        in_dim,
        out_dim,
        rng_key,
        kernel_shape=kernel_shape,
        stride=stride,
        rate=dilation,
        padding=padding,
        with_bias=with_bias,
        w_init=w_init,
        b_init=b_init,
        data_format=data_format,
        feature_group_count=feature_group_count,
        mask=mask,
        name=name,
    )


@renamed_kwargs("pax.haiku", **RENAMED)
def conv_1d_transpose(
    in_dim: int,
    out_dim: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    output_shape: IntOrSeq | None = None,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "channels_last",
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv1DTranspose`` from `in_dim` to `out_dim` channels, initialized.

    Args:
      in_dim: number of input channels.
      out_dim: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      output_shape: the spatial output shape, to pick among the shapes a stride allows.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default, ``(N, W, C)``) or
        ``"channels_first"`` (``(N, C, W)``).
      mask: optional mask multiplied into the weight (static; compared by content).
      name: the Haiku module name (see `pax.haiku.load_haiku_params`).
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.haiku.conv_1d_transpose(3, 5, 3, stride=2)(jnp.ones((2, 4, 3))).shape
      (2, 8, 5)
    """
    return _conv(
        "pax.haiku.conv_1d_transpose",
        hk.Conv1DTranspose,
        1,
        in_dim,
        out_dim,
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


@renamed_kwargs("pax.haiku", **RENAMED)
def conv_2d_transpose(
    in_dim: int,
    out_dim: int,
    kernel_shape: IntOrSeq,
    stride: IntOrSeq = 1,
    output_shape: IntOrSeq | None = None,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    data_format: str = "channels_last",
    mask: jax.Array | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Conv2DTranspose`` from `in_dim` to `out_dim` channels, initialized.

    Args:
      in_dim: number of input channels.
      out_dim: number of output channels (Haiku's ``output_channels``).
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis.
      output_shape: the spatial output shape, to pick among the shapes a stride allows.
      padding: ``"SAME"``, ``"VALID"`` or explicit ``(low, high)`` pairs per spatial axis.
      with_bias: add a bias.
      w_init: weight initializer (Haiku's or pax's convention); default as Haiku.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default, ``(N, H, W, C)``) or
        ``"channels_first"`` (``(N, C, H, W)``).
      mask: optional mask multiplied into the weight (static; compared by content).
      name: the Haiku module name (see `pax.haiku.load_haiku_params`).
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pax.haiku.conv_2d_transpose(3, 5, 3, stride=2)(jnp.ones((2, 4, 4, 3))).shape
      (2, 8, 8, 5)
    """
    return _conv(
        "pax.haiku.conv_2d_transpose",
        hk.Conv2DTranspose,
        2,
        in_dim,
        out_dim,
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
