"""`to_native` for Haiku's ``hk.DeepRNN`` and ``hk.deep_rnn_with_skip_connections``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import haiku as hk
import numpy as np
from haiku._src.recurrent import _DeepRNN

from pax._src.core.module import Module
from pax._src.nn.recurrent import GRU, LSTM, DeepRNN, VanillaRNN


class NoTwin(Exception):
    """Why a wrapped module stays wrapped."""


def is_deep_rnn(hk_cls: Any) -> bool:
    """Whether the wrapped class is a ``hk.DeepRNN`` (or Haiku's skip-connection variant)."""
    return isinstance(hk_cls, type) and issubclass(hk_cls, _DeepRNN)


def _w(params: dict, prefix: str, leaf: str) -> tuple[int, ...]:
    for key, leaves in params.items():
        if (key == prefix or key.startswith(prefix + "/")) and leaf in leaves:
            return tuple(np.shape(leaves[leaf]))
    raise NoTwin(f"the parameters of its layer {prefix!r} have no {leaf!r}")


def _cell(layer: hk.Module, params: dict, name: str) -> Module:
    full = layer.module_name
    if type(layer) is hk.LSTM:
        return LSTM(_w(params, full, "w")[0] - layer.hidden_size, layer.hidden_size, name=name)
    if type(layer) is hk.GRU:
        return GRU(_w(params, full, "w_i")[0], layer.hidden_size, name=name)
    if type(layer) is hk.VanillaRNN:
        in_dim = _w(params, full, "w")[0]
        return VanillaRNN(in_dim, layer.hidden_size, layer.double_bias, name=name)
    raise NoTwin(f"its layer {full!r} ({type(layer).__name__}) has no native twin")


def deep_rnn(config: Any, params: dict) -> DeepRNN:
    """The native `DeepRNN` of a wrapped ``hk.DeepRNN`` class (its Haiku names kept).

    Its layers are read by building the Haiku module once (inside ``hk.transform``): LSTM,
    GRU and VanillaRNN cores become `pax.nn` cells named as Haiku named them, plain functions
    stay functions; any other layer keeps the whole core wrapped (`NoTwin`).
    """

    def read() -> Any:
        core = config.build()
        return SimpleNamespace(
            name=core.module_name,
            skip=core.skip_connections,
            layers=list(core.layers),
            names=[getattr(x, "module_name", None) for x in core.layers],
        )

    info = hk.transform(read).apply({}, None)
    scope = info.name + "/~/"
    inside = [n for n in info.names if n is not None and n.startswith(scope)]
    outside = [n for n in info.names if n is not None and not n.startswith(scope)]
    if inside and outside:
        raise NoTwin("some of its layers were created inside its scope and some outside")
    cut = len(scope) if inside else 0
    layers: list[Any] = []
    for layer, full in zip(info.layers, info.names):
        if full is None:  # a plain function
            layers.append(layer)
        elif "/" in full[cut:]:
            raise NoTwin(f"its layer {full!r} was created inside another module's scope")
        else:
            layers.append(_cell(layer, params, full[cut:]))
    return DeepRNN(layers, skip_connections=info.skip, name=info.name if inside else None)
