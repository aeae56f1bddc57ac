"""The Haiku names of the native `pax.nn` layers that have a Haiku twin.

One table, `HAIKU_NAMES`, gives each twin's Haiku module name (``pax.nn.Linear`` is Haiku's
``linear``), and `native_slots` lists, for one layer, every Haiku ``(module, leaf)`` entry it
holds with how to read it from the layer and write it back:

================================  ==============================================================
pax layer (attributes)            Haiku entries (relative to the layer's Haiku name ``n``)
================================  ==============================================================
Linear (weight, bias)             ``n``: ``w`` ``(in, out)``, ``b`` ``(out,)``
Conv1D/2D/3D (weight, bias)       ``n``: ``w`` ``(*kernel, in, out)`` (HWIO, as stored), ``b``
Conv1D/2D/3DTranspose             ``n``: ``w`` ``(*kernel, out, in)`` (as stored), ``b``
BatchNorm[1D/2D] (scale, offset)  ``n``: ``scale``, ``offset`` of Haiku's shape ``(1, ..., C)``
  mean_ema / var_ema (EMA)        ``n/~/mean_ema``, ``n/~/var_ema``: ``counter``, ``hidden``,
                                  ``average`` (Haiku's ExponentialMovingAverage, zero-debiased)
LayerNorm, RMSNorm                ``n``: ``scale``, ``offset`` ``(C,)``
GroupNorm                         ``n``: ``scale``, ``offset`` ``(C,)`` (``(C, 1, ...)`` channels
                                  first)
Embed (weight)                    ``n``: ``embeddings`` ``(vocab, dim)``
LSTM (weight_ih, weight_hh, bias) ``n/linear``: ``w = concat([weight_ih, weight_hh])``, ``b``
GRU (weight_ih, weight_hh, bias)  ``n``: ``w_i``, ``w_h``, ``b``
VanillaRNN                        ``n/linear`` (weight_ih, bias), ``n/linear_1`` (weight_hh,
                                  bias_hh)
MultiHeadAttention                ``n/query``, ``n/key``, ``n/value``, ``n/linear`` (out_proj)
MLP (layers[i])                   ``n/~/linear_i``
EMA (counter, hidden, average)    ``n``: ``counter``, ``hidden``, ``average``
================================  ==============================================================

Haiku's BatchNorm (and GroupNorm with channels first) keeps its arrays in a shape that depends
on the rank of its input (``(1, 1, 1, C)`` for images); pax keeps ``(C,)``. Loading accepts any
such shape; exporting uses the rank of the layer's class (4 for ``BatchNorm2D``, 2 for the
others) unless told otherwise (``input_ranks`` of `pax.haiku.to_haiku_params`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from pax._src.core.module import Module
from pax._src.nn.attention import MultiHeadAttention
from pax._src.nn.batch_norm import BatchNorm, BatchNorm1D, BatchNorm2D
from pax._src.nn.conv import Conv1D, Conv2D, Conv3D
from pax._src.nn.conv_transpose import Conv1DTranspose, Conv2DTranspose, Conv3DTranspose
from pax._src.nn.ema import EMA
from pax._src.nn.embed import Embed
from pax._src.nn.linear import Linear
from pax._src.nn.norm import GroupNorm, LayerNorm, RMSNorm
from pax._src.nn.recurrent import GRU, LSTM, VanillaRNN
from pax._src.nn.sequential import MLP

HAIKU_NAMES: dict[type, str] = {
    Linear: "linear",
    Conv1D: "conv1_d",
    Conv2D: "conv2_d",
    Conv3D: "conv3_d",
    Conv1DTranspose: "conv1_d_transpose",
    Conv2DTranspose: "conv2_d_transpose",
    Conv3DTranspose: "conv3_d_transpose",
    BatchNorm: "batch_norm",
    BatchNorm1D: "batch_norm",
    BatchNorm2D: "batch_norm",
    LayerNorm: "layer_norm",
    GroupNorm: "group_norm",
    RMSNorm: "rms_norm",
    Embed: "embed",
    LSTM: "lstm",
    GRU: "gru",
    VanillaRNN: "vanilla_rnn",
    MultiHeadAttention: "multi_head_attention",
    MLP: "mlp",
    EMA: "exponential_moving_average",
}

# The default input rank used to export the rank-dependent shapes of Haiku's BatchNorm.
_DEFAULT_RANK: dict[type, int] = {BatchNorm2D: 4}


class Slot(NamedTuple):
    """One Haiku entry ``what[module][leaf]`` held by a pax layer.

    Attributes:
      what: ``"params"`` or ``"state"``.
      inner: the Haiku module name relative to the layer's own (``""`` for the layer itself,
        ``"~/mean_ema"``, ``"linear"``).
      leaf: the Haiku leaf name (``"w"``).
      read: returns the array in Haiku's layout.
      write: stores an array given in Haiku's layout (accepted by `accepts`).
      accepts: whether a Haiku array of that shape fits (None: exactly the shape of `read()`).
      pax: the pax attribute(s) it is stored in, relative to the layer (``".weight"``).
    """

    what: str
    inner: str
    leaf: str
    read: Callable[[], Any]
    write: Callable[[Any], None]
    accepts: Callable[[tuple[int, ...]], bool] | None
    pax: str


def twin_name(module: Any) -> str | None:
    """The Haiku module name of `module`'s twin (``"linear"``), or None if it has none."""
    if isinstance(module, EMA) and not hasattr(module.hidden, "shape"):
        return None  # an EMA of a pytree: Haiku's averages one array
    if isinstance(module, BatchNorm) and module.running_stats:
        return None  # PyTorch's running statistics: Haiku's BatchNorm has none
    for cls in type(module).__mro__:  # subclasses too (e.g. a mixed-precision Linear)
        if cls in HAIKU_NAMES:
            return HAIKU_NAMES[cls]
    return None


def is_pending(module: Module) -> bool:
    """Whether a native layer (or one inside it) still waits for `lazy_init`."""
    layers = [module] + (
        [module.query_proj, module.key_proj, module.value_proj, module.out_proj]
        if isinstance(module, MultiHeadAttention)
        else list(module.layers)
        if isinstance(module, MLP)
        else []
    )
    return any(getattr(m, "in_dim", 0) is None for m in layers)


def _attr(owner: Module, name: str, what: str, inner: str, leaf: str, pax: str = "") -> Slot:
    return Slot(
        what,
        inner,
        leaf,
        lambda: getattr(owner, name),
        lambda a: setattr(owner, name, a),
        None,
        f"{pax}.{name}",
    )


def _channel_slot(
    owner: Module, name: str, what: str, inner: str, leaf: str, shape: tuple[int, ...], pax: str
) -> Slot:
    """An array stored ``(*lead, C)`` in pax and ``(*lead, *shape)`` in Haiku (one axis is C)."""

    def lead() -> tuple[int, ...]:
        return tuple(np.shape(getattr(owner, name))[:-1])

    def accepts(given: tuple[int, ...]) -> bool:
        n = len(lead())
        rest = given[n:]
        channels = int(np.shape(getattr(owner, name))[-1])
        return (
            tuple(given[:n]) == lead()
            and int(np.prod(rest)) == channels
            and sum(d != 1 for d in rest) <= 1
        )

    return Slot(
        what,
        inner,
        leaf,
        lambda: jnp.reshape(getattr(owner, name), lead() + shape),
        lambda a: setattr(owner, name, jnp.reshape(a, (*lead(), -1))),
        accepts,
        f"{pax}.{name}",
    )


def _linear(m: Any, inner: str, pax: str, w: str = "w") -> list[Slot]:
    slots = [_attr(m, "weight", "params", inner, w, pax)]
    if m.bias is not None:
        slots.append(_attr(m, "bias", "params", inner, "b", pax))
    return slots


def _norm_shape(m: Any, rank: int | None) -> tuple[int, ...]:
    c = int(m.in_dim)
    first = getattr(m, "data_format", "channels_last") == "channels_first"
    if isinstance(m, GroupNorm):
        return (c, *(1,) * ((rank or 4) - 2)) if first else (c,)
    if isinstance(m, BatchNorm):
        rank = rank or _DEFAULT_RANK.get(type(m), 2)
        return (1, c, *(1,) * (rank - 2)) if first else (*(1,) * (rank - 1), c)
    return (c,)


def _ema(m: EMA, inner: str, shape: tuple[int, ...] | None, pax: str) -> list[Slot]:
    slots = [_attr(m, "counter", "state", inner, "counter", pax)]
    for name in ("hidden", "average"):
        if shape is None:
            slots.append(_attr(m, name, "state", inner, name, pax))
        else:
            slots.append(_channel_slot(m, name, "state", inner, name, shape, pax))
    return slots


def _lstm(m: LSTM) -> list[Slot]:
    def read() -> Any:
        return jnp.concatenate([m.weight_ih, m.weight_hh], axis=-2)

    def write(a: Any) -> None:
        n = int(m.in_dim)
        m.weight_ih = jnp.asarray(a)[..., :n, :]
        m.weight_hh = jnp.asarray(a)[..., n:, :]

    w = Slot("params", "linear", "w", read, write, None, ".weight_ih, .weight_hh")
    return [w, _attr(m, "bias", "params", "linear", "b")]


def native_slots(module: Module, rank: int | None = None) -> list[Slot]:
    """The Haiku entries of a native twin layer (see the module docstring for the table).

    Args:
      module: a layer whose type is in `HAIKU_NAMES`.
      rank: the input rank used for Haiku's rank-dependent BatchNorm/GroupNorm shapes.
    """
    m: Any = module
    if isinstance(m, (Linear, Conv1D, Conv2D, Conv3D)):
        return _linear(m, "", "")
    if isinstance(m, (Conv1DTranspose, Conv2DTranspose, Conv3DTranspose)):
        return _linear(m, "", "")
    if isinstance(m, Embed):
        return [_attr(m, "weight", "params", "", "embeddings")]
    if isinstance(m, (BatchNorm, LayerNorm, GroupNorm, RMSNorm)):
        shape = _norm_shape(m, rank)
        slots = [
            _channel_slot(m, name, "params", "", name, shape, "")
            for name in ("scale", "offset")
            if getattr(m, name, None) is not None
        ]
        if isinstance(m, BatchNorm):
            slots += _ema(m.mean_ema, "~/mean_ema", shape, ".mean_ema")
            slots += _ema(m.var_ema, "~/var_ema", shape, ".var_ema")
        return slots
    if isinstance(m, LSTM):
        return _lstm(m)
    if isinstance(m, GRU):
        return [
            _attr(m, "weight_ih", "params", "", "w_i"),
            _attr(m, "weight_hh", "params", "", "w_h"),
            _attr(m, "bias", "params", "", "b"),
        ]
    if isinstance(m, VanillaRNN):
        slots = [
            _attr(m, "weight_ih", "params", "linear", "w"),
            _attr(m, "bias", "params", "linear", "b"),
            _attr(m, "weight_hh", "params", "linear_1", "w"),
        ]
        if m.bias_hh is not None:
            slots.append(_attr(m, "bias_hh", "params", "linear_1", "b"))
        return slots
    if isinstance(m, MultiHeadAttention):
        projections = (("query", "query_proj"), ("key", "key_proj"), ("value", "value_proj"))
        slots = []
        for inner, name in (*projections, ("linear", "out_proj")):
            slots += _linear(getattr(m, name), inner, f".{name}")
        return slots
    if isinstance(m, MLP):
        slots = []
        for i, layer in enumerate(m.layers):
            slots += _linear(layer, f"~/linear_{i}", f".layers[{i}]")
        return slots
    if isinstance(m, EMA):
        return _ema(m, "", None, "")
    raise TypeError(f"native_slots: {type(m).__name__} has no Haiku twin.")
