"""Convolutions (1-D, 2-D, 3-D), numerically as Haiku's; the shared base of the transposed ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn._lazy import ChannelLayer, Init, weight_and_bias
from pax._src.nn.initializers import Initializer

Padding = str | int | Sequence[int | tuple[int, int]]

# The keywords renamed by the one pax.nn vocabulary (old -> new), accepted for one release.
RENAMED = {"in_features": "in_dim", "out_features": "out_dim", "rate": "dilation"}

_SPATIAL_NAMES = {1: "W", 2: "HW", 3: "DHW"}


def dimension_numbers(n: int, channels_last: bool, transpose: bool) -> lax.ConvDimensionNumbers:
    """``lax`` dimension numbers of an `n`-D convolution (kernel ``[*spatial, in, out]``)."""
    nd = n + 2
    if channels_last:
        image = (0, nd - 1, *range(1, nd - 1))
    else:
        image = (0, 1, *range(2, nd))
    if transpose:
        kernel = (nd - 2, nd - 1, *range(nd - 2))
    else:
        kernel = (nd - 1, nd - 2, *range(nd - 2))
    return lax.ConvDimensionNumbers(lhs_spec=image, rhs_spec=kernel, out_spec=image)


class ConvND(ChannelLayer):
    """Shared constructor, checks and bias of the convolutions and transposed convolutions."""

    weight: jax.Array
    bias: jax.Array | None
    _num_spatial = 0
    _transpose = False

    in_features = v.RenamedAttribute("in_dim")
    out_features = v.RenamedAttribute("out_dim")
    rate = v.RenamedAttribute("dilation")

    @v.renamed_kwargs(**RENAMED)
    def __init__(
        self,
        in_dim: int | None,
        out_dim: int,
        kernel_shape: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        data_format: str = "channels_last",
        feature_group_count: int = 1,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        n = self._num_spatial
        self.out_dim = v.positive_int(self._cls, "out_dim", out_dim)
        self.kernel_shape = v.replicate(self._cls, "kernel_shape", kernel_shape, n)
        self.stride = v.replicate(self._cls, "stride", stride, n)
        self.dilation = v.replicate(self._cls, "dilation", dilation, n)
        self.padding = v.padding_arg(self._cls, padding, n)
        self.feature_group_count = v.positive_int(
            self._cls, "feature_group_count", feature_group_count
        )
        self._check_groups("out_dim", self.out_dim)
        self.data_format = v.data_format(self._cls, data_format, n)
        self.with_bias = v.boolean(self._cls, "with_bias", with_bias)
        self._create_params(in_dim, rng_key, param_dtype, w_init=w_init, b_init=b_init)

    def _check_groups(self, name: str, size: int) -> None:
        groups = self.feature_group_count
        if size % groups:
            raise ValueError(
                f"{type(self).__name__}: {name}={size} must be divisible by "
                f"feature_group_count={groups}; change {name} or feature_group_count."
            )

    def _placeholder_size(self) -> int:
        return self.feature_group_count

    def _input_size(self, x: Any, *args: Any, **kwargs: Any) -> int:
        shape = jnp.shape(x)
        if self.channels_last or len(shape) != self._num_spatial + 2:
            return int(shape[-1] if self.channels_last else shape[0])
        return int(shape[1])

    def _build(self, key: jax.Array, w_init: Init, b_init: Init, dtype: Any) -> None:
        self._check_groups("in_dim", self.in_dim)
        in_per_group = self.in_dim // self.feature_group_count
        if self._transpose:
            w_shape = (*self.kernel_shape, self.out_dim, in_per_group)
        else:
            w_shape = (*self.kernel_shape, in_per_group, self.out_dim)
        if w_init is None:
            fan_in = int(np.prod(self.kernel_shape)) * in_per_group
            w_init = initializers.truncated_normal(stddev=1.0 / np.sqrt(fan_in))
        weight_and_bias(self, key, w_shape, w_init, b_init, dtype)

    def _check_input(self, x: jax.Array) -> tuple[jax.Array, jax.Array, bool]:
        """The input (batched) and weight, both in their promoted dtype, and whether the
        input was unbatched."""
        self._lazy_check(x)
        cls = type(self).__name__
        n = self._num_spatial
        x = jnp.asarray(x)
        axes = list(_SPATIAL_NAMES[n])
        axes = [*axes, "C"] if self.channels_last else ["C", *axes]
        if x.ndim not in (n + 1, n + 2):
            raise ValueError(
                f"{cls}: expected an input of rank {n + 2} (N, {', '.join(axes)}) or rank "
                f"{n + 1} ({', '.join(axes)}) with C={self.in_dim}, got shape {x.shape} "
                f"(rank {x.ndim})."
            )
        unbatched = x.ndim == n + 1
        if unbatched:
            x = x[None]
        channels = x.shape[-1] if self.channels_last else x.shape[1]
        if channels != self.in_dim:
            raise ValueError(
                f"{cls}: expected {self.in_dim} input channels "
                f"({self.data_format}), got shape {x.shape[1:] if unbatched else x.shape} "
                f"with {channels} channels."
            )
        dtype = jnp.result_type(x, self.weight)
        return x.astype(dtype), self.weight.astype(dtype), unbatched

    def _add_bias(self, y: jax.Array, unbatched: bool) -> jax.Array:
        bias = self.bias
        if bias is not None:
            if not self.channels_last:
                bias = bias.reshape((-1,) + (1,) * self._num_spatial)
            y = y + jnp.broadcast_to(bias.astype(y.dtype), y.shape)
        return y[0] if unbatched else y


class _Conv(ConvND):
    def __call__(self, x: jax.Array, *, precision: lax.Precision | None = None) -> jax.Array:
        x, weight, unbatched = self._check_input(x)
        y = lax.conv_general_dilated(
            x,
            weight,
            window_strides=self.stride,
            padding=self.padding,
            rhs_dilation=self.dilation,
            dimension_numbers=dimension_numbers(self._num_spatial, self.channels_last, False),
            feature_group_count=self.feature_group_count,
            precision=precision,
        )
        return self._add_bias(y, unbatched)


class Conv1D(_Conv):
    """A 1-D convolution, numerically as Haiku's ``hk.Conv1D``.

    Inputs are ``(N, W, C)`` (channels last) or ``(N, C, W)`` (channels first), with or without
    the batch axis. The weight has shape ``(k, in_dim // feature_group_count, out_dim)`` and
    the bias ``(out_dim,)``.

    Args:
      in_dim: number of input channels; None to take it from a first input (then
        ``model = model.lazy_init(example_input)`` initializes the layer).
      out_dim: number of output channels.
      kernel_shape: the kernel width, an int or a 1-tuple.
      stride: an int or a 1-tuple (default 1).
      dilation: dilation of the kernel (Haiku's ``rate``), an int or a 1-tuple (default 1).
      padding: ``"SAME"``, ``"VALID"``, an int (the same on both sides) or one
        ``(low, high)`` pair.
      with_bias: whether to add a bias.
      w_init: weight initializer; default (as Haiku) a normal truncated at 2 std with std
        parameter ``1 / sqrt(fan_in)``, ``fan_in = k * in_dim // feature_group_count``.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      feature_group_count: number of groups; `in_dim` and `out_dim` must be divisible by it.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: at construction for non-positive sizes, an unknown padding or data format, or
        channel counts not divisible by `feature_group_count`; at call for an input of the wrong
        rank or channel count.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> conv = pax.nn.Conv1D(in_dim=3, out_dim=5, kernel_shape=3, stride=2)
      >>> conv(jnp.ones((2, 16, 3))).shape
      (2, 8, 5)
      >>> conv.weight.shape
      (3, 3, 5)
    """

    _num_spatial = 1


class Conv2D(_Conv):
    """A 2-D convolution, numerically as Haiku's ``hk.Conv2D``.

    Inputs are ``(N, H, W, C)`` (channels last) or ``(N, C, H, W)`` (channels first), with or
    without the batch axis. The weight has shape
    ``(kh, kw, in_dim // feature_group_count, out_dim)`` and the bias ``(out_dim,)``.

    Args:
      in_dim: number of input channels; None to take it from a first input (then
        ``model = model.lazy_init(example_input)`` initializes the layer).
      out_dim: number of output channels.
      kernel_shape: an int or a pair ``(kh, kw)``.
      stride: an int or a pair (default 1).
      dilation: dilation of the kernel (Haiku's ``rate``), an int or a pair (default 1).
      padding: ``"SAME"``, ``"VALID"``, an int (the same on both sides of every axis) or two
        ``(low, high)`` pairs.
      with_bias: whether to add a bias.
      w_init: weight initializer; default (as Haiku) a normal truncated at 2 std with std
        parameter ``1 / sqrt(fan_in)``, ``fan_in = kh * kw * in_dim // feature_group_count``.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      feature_group_count: number of groups; `in_dim` and `out_dim` must be divisible by it.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: at construction for non-positive sizes, an unknown padding or data format, or
        channel counts not divisible by `feature_group_count`; at call for an input of the wrong
        rank or channel count.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> conv = pax.nn.Conv2D(in_dim=3, out_dim=5, kernel_shape=3, stride=2)
      >>> conv(jnp.ones((2, 8, 8, 3))).shape
      (2, 4, 4, 5)
      >>> conv.weight.shape
      (3, 3, 3, 5)
      >>> pax.nn.Conv2D(3, 5, 3, data_format="channels_first")(jnp.ones((2, 3, 8, 8))).shape
      (2, 5, 8, 8)
    """

    _num_spatial = 2


class Conv3D(_Conv):
    """A 3-D convolution, numerically as Haiku's ``hk.Conv3D``.

    Inputs are ``(N, D, H, W, C)`` (channels last) or ``(N, C, D, H, W)`` (channels first),
    with or without the batch axis. The weight has shape
    ``(kd, kh, kw, in_dim // feature_group_count, out_dim)`` and the bias ``(out_dim,)``.

    Args:
      in_dim: number of input channels; None to take it from a first input (then
        ``model = model.lazy_init(example_input)`` initializes the layer).
      out_dim: number of output channels.
      kernel_shape: an int or a triple ``(kd, kh, kw)``.
      stride: an int or a triple (default 1).
      dilation: dilation of the kernel (Haiku's ``rate``), an int or a triple (default 1).
      padding: ``"SAME"``, ``"VALID"``, an int (the same on both sides of every axis) or three
        ``(low, high)`` pairs.
      with_bias: whether to add a bias.
      w_init: weight initializer; default (as Haiku) a normal truncated at 2 std with std
        parameter ``1 / sqrt(fan_in)``, ``fan_in = kd * kh * kw * in_dim //
        feature_group_count``.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      feature_group_count: number of groups; `in_dim` and `out_dim` must be divisible by it.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: at construction for non-positive sizes, an unknown padding or data format, or
        channel counts not divisible by `feature_group_count`; at call for an input of the wrong
        rank or channel count.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> conv = pax.nn.Conv3D(in_dim=3, out_dim=5, kernel_shape=3, stride=2)
      >>> conv(jnp.ones((2, 4, 4, 4, 3))).shape
      (2, 2, 2, 2, 5)
      >>> conv.weight.shape
      (3, 3, 3, 3, 5)
    """

    _num_spatial = 3
