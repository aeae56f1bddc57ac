"""LayerNorm, RMSNorm and GroupNorm, numerically as Haiku's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn._lazy import ChannelLayer, Init, LazyLayer
from pax._src.nn.initializers import Initializer


def _abs_axes(cls: str, axes: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    ndim = len(shape)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{cls}: axis {a} is out of range for an input of shape {shape} (rank {ndim})."
            )
    return tuple(sorted({a % ndim for a in axes}))


def statistics_dtype(x: jax.Array) -> Any:
    """The dtype normalization statistics are computed in: at least float32, whatever the
    input (a bfloat16 or float16 variance loses too much)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def output_dtype(x: jax.Array, *params: jax.Array | None) -> Any:
    """The dtype a layer returns: its input's and parameters' promoted dtype."""
    return jnp.result_type(x, *(p for p in params if p is not None))


def _scale_offset(
    module: Module,
    key: jax.Array | None,
    shape: tuple[int, ...],
    create_scale: bool,
    create_offset: bool,
    scale_init: Initializer | None,
    offset_init: Initializer | None,
    *,
    dtype: Any = jnp.float32,
    with_offset: bool = True,
) -> None:
    """Registers `scale` and `offset` (or sets them to None), checking the init arguments.

    Without `with_offset` (RMSNorm) the module has no `offset` attribute at all.
    """
    cls = type(module).__name__
    create_scale = v.boolean(cls, "create_scale", create_scale)
    create_offset = v.boolean(cls, "create_offset", create_offset)
    if not create_scale and scale_init is not None:
        raise ValueError(f"{cls}: scale_init is set but create_scale=False; drop one of them.")
    if not create_offset and offset_init is not None:
        raise ValueError(f"{cls}: offset_init is set but create_offset=False; drop one of them.")
    if key is None and scale_init is None and offset_init is None:
        s_key = o_key = cast(Any, None)  # the default initializers (ones, zeros) read no key
    else:
        s_key, o_key = jax.random.split(resolve_rng_key(key))
    if create_scale:
        scale = (scale_init or initializers.ones)(s_key, shape, dtype)
        module.register_parameter("scale", scale)
    else:
        module.scale = None
    if not with_offset:
        return
    if create_offset:
        offset = (offset_init or initializers.zeros)(o_key, shape, dtype)
        module.register_parameter("offset", offset)
    else:
        module.offset = None


def draws_random(self: LazyLayer, init_args: dict[str, Any]) -> bool:
    """`LazyLayer._draws_random` of the normalization layers: only a given initializer reads
    the key (the defaults are ones and zeros), so they can be built inside `jax.jit`."""
    return init_args.get("scale_init") is not None or init_args.get("offset_init") is not None


class LayerNorm(LazyLayer):
    """Layer normalization (Ba et al., 2016), numerically as Haiku's ``hk.LayerNorm``.

    Normalizes over `axis` (by default the last one) and applies a learned `scale` and
    `offset` of shape ``(in_dim,)`` along the last axis.

    Args:
      in_dim: size of the last input axis; None to take it from a first input (see
        `pax.Module.lazy_init`).
      axis: the axis or axes to normalize over.
      create_scale: learn a scale (initialized to ones).
      create_offset: learn an offset (initialized to zeros).
      eps: added to the variance.
      scale_init: initializer of the scale.
      offset_init: initializer of the offset.
      use_fast_variance: compute the variance as ``E[x^2] - E[x]^2``.
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: for a non-positive `in_dim`, a bad `axis`, an init given without its
        parameter, or (at call) an input whose last axis is not `in_dim`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> ln = pax.nn.LayerNorm(4)
      >>> y = ln(jnp.array([[1.0, 2.0, 3.0, 4.0]]))
      >>> round(float(y.mean()), 4), round(float(y.std()), 2)
      (0.0, 1.0)
    """

    scale: jax.Array | None
    offset: jax.Array | None

    _draws_random = draws_random

    def __init__(
        self,
        in_dim: int | None,
        axis: int | Sequence[int] = -1,
        create_scale: bool = True,
        create_offset: bool = True,
        eps: float = 1e-5,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        use_fast_variance: bool = False,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.axis = v.int_tuple(self._cls, "axis", axis, scalar=True, example="-1")
        self.eps = v.positive_float(self._cls, "eps", eps, allow_zero=True)
        self.use_fast_variance = v.boolean(self._cls, "use_fast_variance", use_fast_variance)
        options = {"create_scale": create_scale, "create_offset": create_offset}
        inits = {"scale_init": scale_init, "offset_init": offset_init}
        self._create_params(in_dim, rng_key, param_dtype, options=options, **inits)

    def _build(self, key: jax.Array, **init_args: Any) -> None:
        _scale_offset(self, key, (self.in_dim,), **init_args)

    def __call__(self, x: jax.Array) -> jax.Array:
        self._lazy_check(x)
        cls = type(self).__name__
        x = jnp.asarray(x)
        v.check_last_dim(cls, x, self.in_dim)
        axes = _abs_axes(cls, self.axis, x.shape)
        out_dtype = output_dtype(x, self.scale, self.offset)
        x = x.astype(statistics_dtype(x))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        if self.use_fast_variance:
            variance = jnp.mean(jnp.square(x), axis=axes, keepdims=True) - jnp.square(mean)
        else:
            variance = jnp.var(x, axis=axes, keepdims=True)
        scale = jnp.ones((), x.dtype) if self.scale is None else self.scale.astype(x.dtype)
        offset = jnp.zeros((), x.dtype) if self.offset is None else self.offset.astype(x.dtype)
        scale, offset = jnp.broadcast_to(scale, x.shape), jnp.broadcast_to(offset, x.shape)
        eps = jax.lax.convert_element_type(self.eps, variance.dtype)
        inv = scale * jax.lax.rsqrt(variance + eps)
        return (inv * (x - mean) + offset).astype(out_dtype)


class RMSNorm(LazyLayer):
    """Root-mean-square normalization (Zhang & Sennrich, 2019), as Haiku's ``hk.RMSNorm``.

    ``y = x * scale / sqrt(mean(x^2) + eps)``, the mean over `axis`.

    Args:
      in_dim: size of the last input axis; None to take it from a first input (see
        `pax.Module.lazy_init`).
      axis: the axis or axes to normalize over.
      eps: added to the mean square.
      create_scale: learn a scale of shape ``(in_dim,)`` (initialized to ones).
      scale_init: initializer of the scale.
      rng_key: key for the initializer; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: for a non-positive `in_dim`, a bad `axis`, `scale_init` without
        `create_scale`, or (at call) an input whose last axis is not `in_dim`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> [round(float(y), 3) for y in pax.nn.RMSNorm(2)(jnp.array([3.0, 4.0]))]
      [0.849, 1.131]
    """

    scale: jax.Array | None

    _draws_random = draws_random

    def __init__(
        self,
        in_dim: int | None,
        axis: int | Sequence[int] = -1,
        eps: float = 1e-5,
        create_scale: bool = True,
        scale_init: Initializer | None = None,
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.axis = v.int_tuple(self._cls, "axis", axis, scalar=True, example="-1")
        self.eps = v.positive_float(self._cls, "eps", eps, allow_zero=True)
        options = {"create_scale": create_scale}
        self._create_params(in_dim, rng_key, param_dtype, options=options, scale_init=scale_init)

    def _build(self, key: jax.Array, create_scale: bool, scale_init: Init, dtype: Any) -> None:
        shape = (self.in_dim,)
        _scale_offset(
            self, key, shape, create_scale, False, scale_init, None, dtype=dtype, with_offset=False
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        self._lazy_check(x)
        cls = type(self).__name__
        x = jnp.asarray(x)
        v.check_last_dim(cls, x, self.in_dim)
        axes = _abs_axes(cls, self.axis, x.shape)
        out_dtype = output_dtype(x, self.scale)
        x = x.astype(statistics_dtype(x))
        mean_squared = jnp.mean(jnp.square(x), axis=axes, keepdims=True)
        scale = 1.0 if self.scale is None else jnp.broadcast_to(self.scale.astype(x.dtype), x.shape)
        return (x * scale * jax.lax.rsqrt(mean_squared + self.eps)).astype(out_dtype)


class GroupNorm(ChannelLayer):
    """Group normalization (Wu & He, 2018), numerically as Haiku's ``hk.GroupNorm``.

    Channels are split into `groups`; each example is normalized over its spatial axes and
    the channels of each group. The first axis is the batch axis.

    Args:
      in_dim: number of channels; None to take it from a first input (see
        `pax.Module.lazy_init`).
      groups: number of groups; must divide `in_dim`.
      create_scale: learn a per-channel scale (initialized to ones).
      create_offset: learn a per-channel offset (initialized to zeros).
      eps: added to the variance.
      scale_init: initializer of the scale.
      offset_init: initializer of the offset.
      data_format: ``"channels_last"`` (``N...C``, default) or ``"channels_first"`` (``NC...``).
      rng_key: key for the initializers; default `pax.next_rng_key()`.
      param_dtype: dtype of the parameters (default float32); see README, "Mixed precision".
      name: a name shown by repr and summary.

    Raises:
      ValueError: for bad sizes or formats at construction; at call for an input of rank < 2
        or with the wrong number of channels.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> gn = pax.nn.GroupNorm(4, groups=2)
      >>> gn(jnp.ones((2, 5, 5, 4))).shape
      (2, 5, 5, 4)
    """

    scale: jax.Array | None
    offset: jax.Array | None

    in_features = v.RenamedAttribute("in_dim")

    _draws_random = draws_random

    @v.renamed_kwargs(in_features="in_dim")
    def __init__(
        self,
        in_dim: int | None,
        groups: int,
        create_scale: bool = True,
        create_offset: bool = True,
        eps: float = 1e-5,
        scale_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        data_format: str = "channels_last",
        *,
        rng_key: jax.Array | None = None,
        param_dtype: Any = jnp.float32,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.groups = v.positive_int(self._cls, "groups", groups)
        self.eps = v.positive_float(self._cls, "eps", eps, allow_zero=True)
        self.data_format = v.data_format(self._cls, data_format)
        options = {"create_scale": create_scale, "create_offset": create_offset}
        inits = {"scale_init": scale_init, "offset_init": offset_init}
        self._create_params(in_dim, rng_key, param_dtype, options=options, **inits)

    def _build(self, key: jax.Array, **init_args: Any) -> None:
        if self.in_dim % self.groups:
            raise ValueError(
                f"{type(self).__name__}: in_dim={self.in_dim} must be divisible by "
                f"groups={self.groups}; change in_dim or groups."
            )
        _scale_offset(self, key, (self.in_dim,), **init_args)

    def _placeholder_size(self) -> int:
        return self.groups

    def __call__(self, x: jax.Array) -> jax.Array:
        self._lazy_check(x)
        cls = type(self).__name__
        x = jnp.asarray(x)
        if x.ndim < 2:
            raise ValueError(
                f"{cls}: expected an input of rank >= 2 with a leading batch axis, got shape "
                f"{x.shape}."
            )
        rank = x.ndim
        channels = x.shape[-1] if self.channels_last else x.shape[1]
        if channels != self.in_dim:
            raise ValueError(
                f"{cls}: expected {self.in_dim} channels on axis "
                f"{-1 if self.channels_last else 1}, got shape {x.shape}."
            )
        per_group = channels // self.groups
        if self.channels_last:
            group_shape = (-1, *x.shape[1:-1], self.groups, per_group)
            axes = (*range(1, rank - 1), rank)
        else:
            group_shape = (-1, self.groups, per_group, *x.shape[2:])
            axes = tuple(range(2, rank + 1))
        out_dtype = output_dtype(x, self.scale, self.offset)
        y = x.astype(statistics_dtype(x)).reshape(group_shape)
        mean = jnp.mean(y, axes, keepdims=True)
        var = jnp.var(y, axes, keepdims=True)
        y = ((y - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        param_shape = (-1,) if self.channels_last else (-1,) + (1,) * (rank - 2)
        if self.scale is not None:
            y = y * jnp.broadcast_to(self.scale.astype(y.dtype).reshape(param_shape), y.shape)
        if self.offset is not None:
            y = y + jnp.broadcast_to(self.offset.astype(y.dtype).reshape(param_shape), y.shape)
        return y.astype(out_dtype)
