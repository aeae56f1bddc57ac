"""Transposed convolutions (1-D, 2-D, 3-D), numerically as Haiku's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pax._src.nn import _validate as v
from pax._src.nn.conv import RENAMED, ConvND, Padding, dimension_numbers
from pax._src.nn.initializers import Initializer


def _transpose_padding(k: int, s: int, padding: str) -> tuple[int, int]:
    """Padding of the dilated convolution that implements a transposed one (as jax.lax)."""
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
    else:
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    return pad_a, pad_len - pad_a


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


class _ConvTranspose(ConvND):
    _transpose = True

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
        output_shape: int | Sequence[int] | None = None,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(
            in_dim,
            out_dim,
            kernel_shape,
            stride,
            dilation,
            padding,
            with_bias,
            w_init,
            b_init,
            data_format,
            feature_group_count,
            rng_key=rng_key,
            param_dtype=param_dtype,
            name=name,
        )
        cls = type(self).__name__
        if output_shape is not None:
            output_shape = v.replicate(cls, "output_shape", output_shape, self._num_spatial)
            if not isinstance(self.padding, str):
                raise ValueError(
                    f"{cls}: output_shape needs padding='SAME' or 'VALID', got explicit padding "
                    f"{self.padding}; drop output_shape or use a string padding."
                )
        self.output_shape = output_shape

    def __call__(self, x: jax.Array, *, precision: lax.Precision | None = None) -> jax.Array:
        x, weight, unbatched = self._check_input(x)
        effective = [(k - 1) * r + 1 for k, r in zip(self.kernel_shape, self.dilation)]
        if self.output_shape is not None:
            sizes = x.shape[1:-1] if self.channels_last else x.shape[2:]
            pads = [
                _adjusted_padding(type(self).__name__, i, o, k, s, cast(str, self.padding))
                for i, o, k, s in zip(sizes, self.output_shape, effective, self.stride)
            ]
        elif isinstance(self.padding, str):
            pads = [_transpose_padding(k, s, self.padding) for k, s in zip(effective, self.stride)]
        else:
            pads = list(self.padding)
        y = lax.conv_general_dilated(
            x,
            weight,
            window_strides=(1,) * self._num_spatial,
            padding=pads,
            lhs_dilation=self.stride,
            rhs_dilation=self.dilation,
            dimension_numbers=dimension_numbers(self._num_spatial, self.channels_last, True),
            feature_group_count=self.feature_group_count,
            precision=precision,
        )
        return self._add_bias(y, unbatched)


class Conv1DTranspose(_ConvTranspose):
    """A 1-D transposed (fractionally strided) convolution, as Haiku's ``hk.Conv1DTranspose``.

    Inputs are ``(N, W, C)`` (channels last) or ``(N, C, W)`` (channels first), with or without
    the batch axis. The weight has shape ``(k, out_dim, in_dim // feature_group_count)`` and
    the bias ``(out_dim,)``.

    Args:
      in_dim: number of input channels; None to take it from a first input (then
        ``model = model.lazy_init(example_input)`` initializes the layer).
      out_dim: number of output channels.
      kernel_shape: the kernel width, an int or a 1-tuple.
      stride: the upsampling factor, an int or a 1-tuple (default 1).
      dilation: dilation of the kernel (Haiku's ``rate``), an int or a 1-tuple (default 1).
      padding: ``"SAME"``, ``"VALID"``, an int (the same on both sides) or one
        ``(low, high)`` pair.
      with_bias: whether to add a bias.
      w_init: weight initializer; default (as Haiku) a normal truncated at 2 std with std
        parameter ``1 / sqrt(fan_in)``, ``fan_in = k * in_dim // feature_group_count``.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      feature_group_count: number of groups; `in_dim` and `out_dim` must be divisible by it.
      output_shape: (keyword) the output width, an int or a 1-tuple; with ``"SAME"`` or
        ``"VALID"`` padding the padding is adjusted to produce it (as Haiku).
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: at construction for non-positive sizes, an unknown padding or data format,
        channel counts not divisible by `feature_group_count`, or `output_shape` with explicit
        padding; at call for an input of the wrong rank or channel count, or one that cannot
        give `output_shape`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> conv = pax.nn.Conv1DTranspose(in_dim=3, out_dim=5, kernel_shape=3, stride=2)
      >>> conv(jnp.ones((2, 16, 3))).shape
      (2, 32, 5)
      >>> conv.weight.shape
      (3, 5, 3)
    """

    _num_spatial = 1


class Conv2DTranspose(_ConvTranspose):
    """A 2-D transposed (fractionally strided) convolution, as Haiku's ``hk.Conv2DTranspose``.

    Inputs are ``(N, H, W, C)`` (channels last) or ``(N, C, H, W)`` (channels first), with or
    without the batch axis. The weight has shape
    ``(kh, kw, out_dim, in_dim // feature_group_count)`` and the bias ``(out_dim,)``.

    Args:
      in_dim: number of input channels; None to take it from a first input (then
        ``model = model.lazy_init(example_input)`` initializes the layer).
      out_dim: number of output channels.
      kernel_shape: an int or a pair ``(kh, kw)``.
      stride: the upsampling factors, an int or a pair (default 1).
      dilation: dilation of the kernel (Haiku's ``rate``), an int or a pair (default 1).
      padding: ``"SAME"``, ``"VALID"``, an int (the same on both sides of every axis) or two
        ``(low, high)`` pairs.
      with_bias: whether to add a bias.
      w_init: weight initializer; default (as Haiku) a normal truncated at 2 std with std
        parameter ``1 / sqrt(fan_in)``, ``fan_in = kh * kw * in_dim // feature_group_count``.
      b_init: bias initializer; default zeros.
      data_format: ``"channels_last"`` (default) or ``"channels_first"``.
      feature_group_count: number of groups; `in_dim` and `out_dim` must be divisible by it.
      output_shape: (keyword) the spatial output size, an int or a pair; with ``"SAME"`` or
        ``"VALID"`` padding the padding is adjusted to produce it (as Haiku).
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: at construction for non-positive sizes, an unknown padding or data format,
        channel counts not divisible by `feature_group_count`, or `output_shape` with explicit
        padding; at call for an input of the wrong rank or channel count, or one that cannot
        give `output_shape`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> conv = pax.nn.Conv2DTranspose(in_dim=3, out_dim=5, kernel_shape=3, stride=2)
      >>> conv(jnp.ones((2, 8, 8, 3))).shape
      (2, 16, 16, 5)
      >>> conv.weight.shape
      (3, 3, 5, 3)
      >>> up = pax.nn.Conv2DTranspose(3, 5, 3, stride=2, output_shape=(15, 16))
      >>> up(jnp.ones((8, 8, 3))).shape
      (15, 16, 5)
    """

    _num_spatial = 2


class Conv3DTranspose(_ConvTranspose):
    """A 3-D transposed (fractionally strided) convolution, as Haiku's ``hk.Conv3DTranspose``.

    Inputs are ``(N, D, H, W, C)`` (channels last) or ``(N, C, D, H, W)`` (channels first),
    with or without the batch axis. The weight has shape
    ``(kd, kh, kw, out_dim, in_dim // feature_group_count)`` and the bias ``(out_dim,)``.

    Args:
      in_dim: number of input channels; None to take it from a first input (then
        ``model = model.lazy_init(example_input)`` initializes the layer).
      out_dim: number of output channels.
      kernel_shape: an int or a triple ``(kd, kh, kw)``.
      stride: the upsampling factors, an int or a triple (default 1).
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
      output_shape: (keyword) the spatial output size, an int or a triple; with ``"SAME"`` or
        ``"VALID"`` padding the padding is adjusted to produce it (as Haiku).
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: at construction for non-positive sizes, an unknown padding or data format,
        channel counts not divisible by `feature_group_count`, or `output_shape` with explicit
        padding; at call for an input of the wrong rank or channel count, or one that cannot
        give `output_shape`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> conv = pax.nn.Conv3DTranspose(in_dim=3, out_dim=5, kernel_shape=3, stride=2)
      >>> conv(jnp.ones((2, 4, 4, 4, 3))).shape
      (2, 8, 8, 8, 5)
      >>> conv.weight.shape
      (3, 3, 3, 5, 3)
    """

    _num_spatial = 3
