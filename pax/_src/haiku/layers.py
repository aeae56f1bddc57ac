"""`pax.haiku.*`: Haiku layers built from shapes known from their arguments (no dummy input).

The layers take pax.nn's argument names and its parsers (`pax._src.arguments`): `in_dim`,
`out_dim`, `stride`, `decay`, ``data_format="channels_last"`` / ``"channels_first"``, and
keyword-only `rng_key`; Haiku still receives its own names (``strides``, ``decay_rate``,
``"NHWC"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from pax._src.arguments import CHANNELS_LAST, int_tuple, positive_int, renamed_kwargs
from pax._src.arguments import data_format as parse_data_format
from pax._src.core.rng import resolve_rng_key
from pax._src.haiku.compat_args import channel_axis_format
from pax._src.haiku.module import HaikuModule
from pax._src.nn.initializer_forms import takes_key_first

InitializerLike = Callable[..., jax.Array]
IntOrSeq = int | Sequence[int]


class _KeyedInitializer:
    """Adapts a pax initializer ``init(key, shape, dtype)`` to Haiku's ``init(shape, dtype)``."""

    __slots__ = ("init",)

    def __init__(self, init: InitializerLike) -> None:
        self.init = init

    def __call__(self, shape: Sequence[int], dtype: Any) -> jax.Array:
        return self.init(hk.next_rng_key(), shape, dtype)

    def __eq__(self, other: object) -> bool:
        return type(other) is _KeyedInitializer and other.init is self.init

    def __hash__(self) -> int:
        return hash(("keyed", id(self.init)))

    def __repr__(self) -> str:
        return getattr(self.init, "__name__", repr(self.init))


def as_haiku_initializer(fn: str, arg: str, init: InitializerLike | None) -> InitializerLike | None:
    """Accepts both Haiku's ``init(shape, dtype)`` and pax's ``init(key, shape, dtype)``.

    `fn` is the public name shown in the error, e.g. ``"pax.haiku.linear"``; the forms and
    errors are those of the native layers (`pax._src.nn.initializer_forms.resolve`).
    """
    if init is None:
        return None
    return _KeyedInitializer(init) if takes_key_first(fn, arg, init) else init


def build_layer(
    hk_cls: type[hk.Module],
    kwargs: dict[str, Any],
    dummy: tuple,
    rng_key: jax.Array | None,
    *,
    pass_is_training: bool = False,
    init_changes: dict[str, Any] | None = None,
) -> HaikuModule:
    module = HaikuModule(hk_cls, (), kwargs, pass_is_training=pass_is_training)
    config = module.hk_config.replace(**init_changes) if init_changes else None
    call_kwargs = module._with_is_training("__call__", {})
    module._hk_initialize(resolve_rng_key(rng_key), dummy, call_kwargs, config)
    return module


_SPATIAL_AXES = {1: "W", 2: "HW", 3: "DHW"}


def haiku_layout(fn: str, value: Any, num_spatial: int) -> str:
    """`data_format` parsed as in pax.nn, spelled for Haiku: ``"NHWC"``, ``"NCW"``, ...

    Haiku gets the layout string its own default uses, so a layer built with the default
    ``"channels_last"`` has the same Haiku configuration as before the one vocabulary.
    """
    axes = _SPATIAL_AXES[num_spatial]
    last = parse_data_format(fn, value, num_spatial) == CHANNELS_LAST
    return f"N{axes}C" if last else f"NC{axes}"


def linear(
    in_dim: int,
    out_dim: int,
    with_bias: bool = True,
    w_init: InitializerLike | None = None,
    b_init: InitializerLike | None = None,
    *,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Linear(out_dim)`` for inputs of size `in_dim`, initialized.

    Initializers may follow Haiku's ``init(shape, dtype)`` (``hk.initializers.*``) or pax's
    ``init(key, shape, dtype)`` convention. `name` is the Haiku module name (see
    `load_haiku_params`); `rng_key` defaults to `pax.next_rng_key()`. The same holds for every
    `pax.haiku` layer.

    Args:
      in_dim: size of the last input axis.
      out_dim: size of the last output axis (Haiku's ``output_size``).
      with_bias: add a bias.
      w_init: weight initializer; default (as Haiku) truncated normal, std ``1/sqrt(in_dim)``.
      b_init: bias initializer; default zeros.
      name: the Haiku module name (see `pax.haiku.load_haiku_params`).
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> fc = pax.haiku.linear(3, 4)
      >>> fc(jnp.ones((2, 3))).shape
      (2, 4)
    """
    fn = "pax.haiku.linear"
    kwargs = dict(
        output_size=positive_int(fn, "out_dim", out_dim),
        with_bias=with_bias,
        w_init=as_haiku_initializer(fn, "w_init", w_init),
        b_init=as_haiku_initializer(fn, "b_init", b_init),
        name=name,
    )
    dummy = (jnp.zeros((1, positive_int(fn, "in_dim", in_dim)), jnp.float32),)
    return build_layer(hk.Linear, kwargs, dummy, rng_key)


@renamed_kwargs("pax.haiku", num_channels="in_dim")
def layer_norm(
    in_dim: int,
    axis: int | Sequence[int] = -1,
    *,
    create_scale: bool = True,
    create_offset: bool = True,
    eps: float = 1e-5,
    scale_init: InitializerLike | None = None,
    offset_init: InitializerLike | None = None,
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.LayerNorm`` normalizing over `axis`, with scale and offset of shape ``(in_dim,)``.

    The scale and offset apply to the last axis, of size `in_dim` (Haiku's default
    ``param_axis=-1``). The positional arguments are Pax v0.2's ``(num_channels, axis)``
    (`num_channels` is a deprecated spelling of `in_dim`); the others are keyword-only.

    Args:
      in_dim: size of the last input axis.
      axis: the axis or axes to normalize over.
      create_scale: learn a scale.
      create_offset: learn an offset.
      eps: added to the variance.
      scale_init: scale initializer; default ones.
      offset_init: offset initializer; default zeros.
      name: the Haiku module name.
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> ln = pax.haiku.layer_norm(4)
      >>> ln(jnp.arange(8.0).reshape(2, 4)).std(axis=-1).round(2).tolist()
      [1.0, 1.0]
    """
    fn = "pax.haiku.layer_norm"
    in_dim = positive_int(fn, "in_dim", in_dim)
    axes = int_tuple(fn, "axis", axis, scalar=True, example="-1")
    rank = max(2, *(a + 1 if a >= 0 else -a for a in axes))
    kwargs = dict(
        axis=axis,
        create_scale=create_scale,
        create_offset=create_offset,
        eps=eps,
        scale_init=as_haiku_initializer(fn, "scale_init", scale_init),
        offset_init=as_haiku_initializer(fn, "offset_init", offset_init),
        name=name,
    )
    dummy = (jnp.zeros((1,) * (rank - 1) + (in_dim,), jnp.float32),)
    return build_layer(hk.LayerNorm, kwargs, dummy, rng_key)


@renamed_kwargs("pax.haiku", in_features="in_dim", num_channels="in_dim", decay_rate="decay")
def batch_norm_2d(
    in_dim: int,
    axis: int = -1,
    decay: float = 0.99,
    cross_replica_axis: str | Sequence[str] | None = None,
    *,
    create_scale: bool = True,
    create_offset: bool = True,
    eps: float = 1e-5,
    scale_init: InitializerLike | None = None,
    offset_init: InitializerLike | None = None,
    data_format: str = "channels_last",
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.BatchNorm`` for 4-D inputs with `in_dim` channels (``is_training`` from the mode).

    The positional arguments and defaults are Pax v0.2's: ``(num_channels, axis=-1,
    decay_rate=0.99, cross_replica_axis=None)``; the others are keyword-only. The moving
    averages are Haiku state, updated in training mode only (``model.eval()`` freezes them).
    `num_channels`, `in_features`, `decay_rate` and the layouts ``"NHWC"`` / ``"NCHW"`` are
    deprecated spellings of `in_dim`, `decay` and the two `data_format` values.

    Args:
      in_dim: number of channels.
      axis: the channel axis: -1 (or 3) for ``(N, H, W, C)`` inputs, 1 (or -3) for
        ``(N, C, H, W)``; another value than -1 sets the layout (`data_format` then must agree
        or be left at its default).
      decay: decay of the moving averages (Haiku's ``decay_rate``; default 0.99 as Pax v0.2).
      cross_replica_axis: named axis (``jax.pmap``/``shard_map``) to average the batch
        statistics over.
      create_scale: learn a scale.
      create_offset: learn an offset.
      eps: added to the variance.
      scale_init: scale initializer; default ones.
      offset_init: offset initializer; default zeros.
      data_format: ``"channels_last"`` (default, ``(N, H, W, C)``) or ``"channels_first"``.
      name: the Haiku module name.
      rng_key: key for the initializers; default `pax.next_rng_key()`.

    Raises:
      ValueError: for another `axis`, or an `axis` and a `data_format` that disagree.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> bn = pax.haiku.batch_norm_2d(3)
      >>> bn(jnp.ones((2, 5, 5, 3))).shape
      (2, 5, 5, 3)
      >>> pax.haiku.batch_norm_2d(3, 1, 0.9)(jnp.ones((2, 3, 5, 5))).shape  # channels first
      (2, 3, 5, 5)
    """
    fn = "pax.haiku.batch_norm_2d"
    in_dim = positive_int(fn, "in_dim", in_dim)
    layout = haiku_layout(fn, channel_axis_format(fn, axis, data_format), 2)
    shape = [1, 1, 1, in_dim] if layout == "NHWC" else [1, in_dim, 1, 1]
    kwargs = dict(
        create_scale=create_scale,
        create_offset=create_offset,
        decay_rate=decay,
        eps=eps,
        scale_init=as_haiku_initializer(fn, "scale_init", scale_init),
        offset_init=as_haiku_initializer(fn, "offset_init", offset_init),
        data_format=layout,
        cross_replica_axis=cross_replica_axis,
        name=name,
    )
    init_changes = {"cross_replica_axis": None} if cross_replica_axis is not None else None
    dummy = (jnp.zeros(shape, jnp.float32),)
    return build_layer(
        hk.BatchNorm, kwargs, dummy, rng_key, pass_is_training=True, init_changes=init_changes
    )


def embed(
    vocab_size: int,
    embed_dim: int,
    w_init: InitializerLike | None = None,
    *,
    lookup_style: str = "ARRAY_INDEX",
    name: str | None = None,
    rng_key: jax.Array | None = None,
) -> HaikuModule:
    """``hk.Embed(vocab_size, embed_dim)``, initialized (Pax v0.2's positional arguments).

    Args:
      vocab_size: number of rows (ids ``0 .. vocab_size - 1``).
      embed_dim: size of each vector.
      w_init: initializer of the table; default (as Haiku) truncated normal, std 1.
      lookup_style: Haiku's ``"ARRAY_INDEX"`` or ``"ONE_HOT"``.
      name: the Haiku module name.
      rng_key: key for the initializer; default `pax.next_rng_key()`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> emb = pax.haiku.embed(10, 4)
      >>> emb(jnp.array([[1, 2, 3]])).shape
      (1, 3, 4)
    """
    fn = "pax.haiku.embed"
    kwargs = dict(
        vocab_size=positive_int(fn, "vocab_size", vocab_size),
        embed_dim=positive_int(fn, "embed_dim", embed_dim),
        w_init=as_haiku_initializer(fn, "w_init", w_init),
        lookup_style=lookup_style,
        name=name,
    )
    return build_layer(hk.Embed, kwargs, (jnp.zeros((1,), jnp.int32),), rng_key)


def _pool(hk_cls: type, kwargs: dict) -> HaikuModule:
    module = HaikuModule(hk_cls, (), kwargs)
    module._hk_set({}, {}, None)  # pooling creates no parameter and no state
    return module


@renamed_kwargs("pax.haiku", strides="stride")
def avg_pool(
    window_shape: IntOrSeq,
    stride: IntOrSeq,
    padding: str,
    channel_axis: int | None = -1,
    *,
    name: str | None = None,
) -> HaikuModule:
    """``hk.AvgPool``: average pooling (no parameters).

    Args:
      window_shape: the window, an int or one int per input axis.
      stride: the step of the window, an int or one int per input axis (Haiku's ``strides``;
        `strides` is a deprecated spelling).
      padding: ``"SAME"`` or ``"VALID"``.
      channel_axis: the channel axis (not pooled when the window is an int); None for none.
      name: the Haiku module name.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pool = pax.haiku.avg_pool((1, 2, 2, 1), (1, 2, 2, 1), "VALID")
      >>> pool(jnp.ones((1, 4, 4, 3))).shape
      (1, 2, 2, 3)
    """
    kwargs = dict(window_shape=window_shape, strides=stride, padding=padding)
    return _pool(hk.AvgPool, dict(kwargs, channel_axis=channel_axis, name=name))


@renamed_kwargs("pax.haiku", strides="stride")
def max_pool(
    window_shape: IntOrSeq,
    stride: IntOrSeq,
    padding: str,
    channel_axis: int | None = -1,
    *,
    name: str | None = None,
) -> HaikuModule:
    """``hk.MaxPool``: max pooling (no parameters).

    Args:
      window_shape: the window, an int or one int per input axis.
      stride: the step of the window, an int or one int per input axis (Haiku's ``strides``;
        `strides` is a deprecated spelling).
      padding: ``"SAME"`` or ``"VALID"``.
      channel_axis: the channel axis (not pooled when the window is an int); None for none.
      name: the Haiku module name.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> pool = pax.haiku.max_pool(2, 2, "SAME")
      >>> pool(jnp.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
    """
    kwargs = dict(window_shape=window_shape, strides=stride, padding=padding)
    return _pool(hk.MaxPool, dict(kwargs, channel_axis=channel_axis, name=name))
