"""Convolutions (1-D, 2-D, 3-D) and transposed convolutions, numerically as Haiku's."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn.initializers import Initializer

Padding = str | int | Sequence[int | tuple[int, int]]

_SPATIAL_NAMES = {1: "W", 2: "HW", 3: "DHW"}


def _dimension_numbers(n: int, channels_last: bool, transpose: bool) -> lax.ConvDimensionNumbers:
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


def _transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """Padding of the dilated convolution that implements a transposed one (as jax.lax)."""
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
    else:
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    return pad_a, pad_len - pad_a


class _ConvND(Module):
    """Shared constructor, checks and call of the convolutions."""

    weight: jax.Array
    bias: jax.Array | None
    _num_spatial = 0
    _transpose = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_shape: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        rate: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        data_format: str | None = None,
        feature_group_count: int = 1,
        *,
        rng_key: jax.Array | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        n = self._num_spatial
        self.in_features = v.positive_int(cls, "in_features", in_features)
        self.out_features = v.positive_int(cls, "out_features", out_features)
        self.kernel_shape = v.replicate(cls, "kernel_shape", kernel_shape, n)
        self.stride = v.replicate(cls, "stride", stride, n)
        self.rate = v.replicate(cls, "rate", rate, n)
        self.padding = v.padding_arg(cls, padding, n)
        groups = v.positive_int(cls, "feature_group_count", feature_group_count)
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if size % groups:
                raise ValueError(
                    f"{cls}: {name}={size} must be divisible by feature_group_count={groups}."
                )
        self.feature_group_count = groups
        if data_format is None:
            data_format = "N" + _SPATIAL_NAMES[n] + "C"
        self.data_format = data_format
        self.channels_last = v.channels_last(cls, data_format, n)
        self.with_bias = bool(with_bias)
        in_per_group = self.in_features // groups
        if self._transpose:
            w_shape = (*self.kernel_shape, self.out_features, in_per_group)
        else:
            w_shape = (*self.kernel_shape, in_per_group, self.out_features)
        if w_init is None:
            fan_in = int(np.prod(self.kernel_shape)) * in_per_group
            w_init = initializers.truncated_normal(stddev=1.0 / np.sqrt(fan_in))
        w_key, b_key = jax.random.split(resolve_rng_key(rng_key))
        self.register_parameter("weight", w_init(w_key, w_shape, jnp.float32))
        if self.with_bias:
            b_init = b_init or initializers.zeros
            self.register_parameter("bias", b_init(b_key, (self.out_features,), jnp.float32))
        else:
            self.bias = None

    def _check_input(self, x: jax.Array) -> tuple[jax.Array, bool]:
        cls = type(self).__name__
        n = self._num_spatial
        x = jnp.asarray(x)
        axes = list(_SPATIAL_NAMES[n])
        axes = [*axes, "C"] if self.channels_last else ["C", *axes]
        if x.ndim not in (n + 1, n + 2):
            raise ValueError(
                f"{cls}: expected an input of rank {n + 2} (N, {', '.join(axes)}) or rank "
                f"{n + 1} ({', '.join(axes)}) with C={self.in_features}, got shape {x.shape} "
                f"(rank {x.ndim})."
            )
        unbatched = x.ndim == n + 1
        if unbatched:
            x = x[None]
        channels = x.shape[-1] if self.channels_last else x.shape[1]
        if channels != self.in_features:
            raise ValueError(
                f"{cls}: expected {self.in_features} input channels "
                f"({self.data_format} layout), got shape {x.shape[1:] if unbatched else x.shape} "
                f"with {channels} channels."
            )
        return x, unbatched

    def _add_bias(self, y: jax.Array, unbatched: bool) -> jax.Array:
        if self.with_bias:
            bias = self.bias
            if not self.channels_last:
                bias = bias.reshape((-1,) + (1,) * self._num_spatial)
            y = y + jnp.broadcast_to(bias.astype(y.dtype), y.shape)
        return y[0] if unbatched else y


class _Conv(_ConvND):
    def __call__(self, x: jax.Array, *, precision: lax.Precision | None = None) -> jax.Array:
        x, unbatched = self._check_input(x)
        y = lax.conv_general_dilated(
            x,
            self.weight.astype(x.dtype),
            window_strides=self.stride,
            padding=self.padding,
            rhs_dilation=self.rate,
            dimension_numbers=_dimension_numbers(self._num_spatial, self.channels_last, False),
            feature_group_count=self.feature_group_count,
            precision=precision,
        )
        return self._add_bias(y, unbatched)


def _adjusted_padding(
    cls: str, size: int, out: int, k: int, s: int, padding: str
) -> tuple[int, int]:
    """Padding that makes a transposed convolution produce `out` (Haiku's rule)."""
    if padding == "VALID":
        expected = (out - k + s) // s
        before = 0
    else:
        expected = (out + s - 1) // s
        before = max(0, (size - 1) * s + k - out) // 2
    if size != expected:
        raise ValueError(
            f"{cls}: output_shape size {out} cannot come from an input of size {size} with "
            f"stride {s} and {padding} padding (that needs an input of size {expected})."
        )
    pad_before = k - 1 - before
    return pad_before, out + k - 1 - ((size - 1) * s + 1) - pad_before


class _ConvTranspose(_ConvND):
    _transpose = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_shape: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        rate: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        with_bias: bool = True,
        w_init: Initializer | None = None,
        b_init: Initializer | None = None,
        data_format: str | None = None,
        feature_group_count: int = 1,
        *,
        output_shape: int | Sequence[int] | None = None,
        rng_key: jax.Array | None = None,
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            kernel_shape,
            stride,
            rate,
            padding,
            with_bias,
            w_init,
            b_init,
            data_format,
            feature_group_count,
            rng_key=rng_key,
        )
        cls = type(self).__name__
        if output_shape is not None:
            output_shape = v.replicate(cls, "output_shape", output_shape, self._num_spatial)
            if not isinstance(self.padding, str):
                raise ValueError(
                    f"{cls}: output_shape needs padding='SAME' or 'VALID', got explicit padding "
                    f"{self.padding}."
                )
        self.output_shape = output_shape

    def __call__(self, x: jax.Array, *, precision: lax.Precision | None = None) -> jax.Array:
        x, unbatched = self._check_input(x)
        effective = [(k - 1) * r + 1 for k, r in zip(self.kernel_shape, self.rate)]
        if self.output_shape is not None:
            sizes = x.shape[1:-1] if self.channels_last else x.shape[2:]
            pads = [
                _adjusted_padding(type(self).__name__, i, o, k, s, self.padding)
                for i, o, k, s in zip(sizes, self.output_shape, effective, self.stride)
            ]
        elif isinstance(self.padding, str):
            pads = [_transpose_padding(k, s, self.padding) for k, s in zip(effective, self.stride)]
        else:
            pads = list(self.padding)
        y = lax.conv_general_dilated(
            x,
            self.weight.astype(x.dtype),
            window_strides=(1,) * self._num_spatial,
            padding=pads,
            lhs_dilation=self.stride,
            rhs_dilation=self.rate,
            dimension_numbers=_dimension_numbers(self._num_spatial, self.channels_last, True),
            feature_group_count=self.feature_group_count,
            precision=precision,
        )
        return self._add_bias(y, unbatched)


_ARGS_DOC = """
    Args:
      in_features: number of input channels.
      out_features: number of output channels.
      kernel_shape: an int or one int per spatial axis.
      stride: an int or one int per spatial axis (default 1).
      rate: dilation of the kernel, an int or one int per spatial axis (default 1).
      padding: ``"SAME"``, ``"VALID"``, an int (the same on both sides of every axis) or one
        ``(low, high)`` pair per spatial axis.
      with_bias: whether to add a bias.
      w_init: weight initializer; default (as Haiku) a normal truncated at 2 std
        with std parameter ``1 / sqrt(fan_in)``.
      b_init: bias initializer; default zeros.
      data_format: {formats}.
      feature_group_count: number of groups; `in_features` and `out_features` must be divisible
        by it.
      rng_key: key for the initializers; default `pax.next_rng_key()`.{extra}

    The weight has shape ``{wshape}``
    and the bias ``(out_features,)``. Inputs may be batched (one leading batch axis) or not.

    Raises:
      ValueError: at construction for non-positive sizes, an unknown padding or data format, or
        channel counts not divisible by `feature_group_count`; at call for an input of the wrong
        rank or channel count.
"""


_OUTPUT_SHAPE_DOC = """
      output_shape: (transposed only, keyword) the spatial output size, an int or one per
        axis; with "SAME" or "VALID" padding the padding is adjusted to produce it (as Haiku)."""


def _doc(cls: type, summary: str, formats: str, wshape: str, example: str) -> None:
    extra = _OUTPUT_SHAPE_DOC if cls._transpose else ""
    cls.__doc__ = (
        summary
        + "\n"
        + _ARGS_DOC.format(formats=formats, wshape=wshape, extra=extra)
        + "\n    Example:\n"
        + example
    )


class Conv1D(_Conv):
    _num_spatial = 1


class Conv2D(_Conv):
    _num_spatial = 2


class Conv3D(_Conv):
    _num_spatial = 3


class Conv1DTranspose(_ConvTranspose):
    _num_spatial = 1


class Conv2DTranspose(_ConvTranspose):
    _num_spatial = 2


class Conv3DTranspose(_ConvTranspose):
    _num_spatial = 3


_FORMAT_DOC = {
    1: '``"NWC"`` (default) or ``"NCW"``',
    2: '``"NHWC"`` (default) or ``"NCHW"``',
    3: '``"NDHWC"`` (default) or ``"NCDHW"``',
}
_EXAMPLE_INPUT = {1: "(2, 16, 3)", 2: "(2, 8, 8, 3)", 3: "(2, 4, 4, 4, 3)"}
_EXAMPLE_OUTPUT = {
    False: {1: "(2, 8, 5)", 2: "(2, 4, 4, 5)", 3: "(2, 2, 2, 2, 5)"},
    True: {1: "(2, 32, 5)", 2: "(2, 16, 16, 5)", 3: "(2, 8, 8, 8, 5)"},
}

for _cls in (Conv1D, Conv2D, Conv3D, Conv1DTranspose, Conv2DTranspose, Conv3DTranspose):
    _n = _cls._num_spatial
    _t = _cls._transpose
    _kernel = "*kernel_shape"
    _doc(
        _cls,
        (
            f"A {_n}-D transposed convolution (Haiku's ``hk.{_cls.__name__}``), also known as "
            "a fractionally strided convolution."
            if _t
            else f"A {_n}-D convolution, numerically as Haiku's ``hk.{_cls.__name__}``."
        ),
        _FORMAT_DOC[_n],
        (
            f"({_kernel}, out_features, in_features // feature_group_count)"
            if _t
            else f"({_kernel}, in_features // feature_group_count, out_features)"
        ),
        "      >>> import jax.numpy as jnp, pax\n"
        f"      >>> conv = pax.nn.{_cls.__name__}(3, 5, kernel_shape=3, stride=2)\n"
        f"      >>> conv(jnp.ones({_EXAMPLE_INPUT[_n]})).shape\n"
        f"      {_EXAMPLE_OUTPUT[_t][_n]}\n",
    )


del _cls, _n, _t, _kernel
