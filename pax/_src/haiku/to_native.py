"""`pax.haiku.to_native`: replace wrapped Haiku modules by their native `pax.nn` twins."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import haiku as hk
import jax
import numpy as np

from pax._src.core.module import Module
from pax._src.haiku.config import haiku_class_name, module_name
from pax._src.haiku.haiku_names import where
from pax._src.haiku.module import HaikuModule
from pax._src.haiku.native_names import twin_name
from pax._src.haiku.porting import load_haiku_params
from pax._src.haiku.programs import HaikuProgram
from pax._src.haiku.to_native_rnn import NoTwin, deep_rnn, is_deep_rnn
from pax._src.nets.resnet import ResNet, ResNet18, ResNet34, ResNet50
from pax._src.nn.attention import MultiHeadAttention
from pax._src.nn.batch_norm import BatchNorm, BatchNorm1D, BatchNorm2D
from pax._src.nn.conv import Conv1D, Conv2D, Conv3D
from pax._src.nn.conv_transpose import Conv1DTranspose, Conv2DTranspose, Conv3DTranspose
from pax._src.nn.embed import Embed
from pax._src.nn.linear import Linear
from pax._src.nn.norm import GroupNorm, LayerNorm, RMSNorm
from pax._src.nn.recurrent import GRU, LSTM, DeepRNN, VanillaRNN
from pax._src.nn.reshape import Flatten, Reshape
from pax._src.nn.sequential import MLP

T = TypeVar("T")
Args = dict[str, Any]


class NativeReport(NamedTuple):
    """What `to_native` did.

    Attributes:
      converted: ``"path: hk.Linear -> pax.nn.Linear"`` for every replaced module.
      kept: ``"path: hk.nets.ResNet18 (why)"`` for every wrapped module left wrapped.

    Example:
      >>> import haiku as hk, jax.numpy as jnp, pax
      >>> net = pax.nn.Sequential(pax.from_haiku(hk.Linear)(3)).hk_init(jnp.ones((1, 2)))
      >>> native, report = pax.haiku.to_native(net)
      >>> type(native.modules[0]).__name__, len(report.converted), report.kept
      ('Linear', 1, ())
    """

    converted: tuple[str, ...]
    kept: tuple[str, ...]


class _NoTwin(Exception):
    """Why a wrapped module stays wrapped."""


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise _NoTwin(why)


def _shape(params: dict, leaf: str) -> tuple[int, ...]:
    for leaves in params.values():
        if leaf in leaves:
            return tuple(np.shape(leaves[leaf]))
    raise _NoTwin(f"its parameters have no {leaf!r}")


def _channels_last(value: Any) -> bool:
    if value in ("channels_last", "channels_first"):
        return bool(value == "channels_last")
    return isinstance(value, str) and value.endswith("C")


def _format(value: Any) -> str:
    return "channels_last" if _channels_last(value) else "channels_first"


def _conv(cls: type, transpose: bool) -> Callable[[Args, HaikuModule], Module]:
    def build(a: Args, m: HaikuModule) -> Module:
        _require(a.get("mask") is None, "it has a weight mask")
        _require(not callable(a["padding"]), "its padding is a function")
        w = _shape(m.params or {}, "w")
        groups = 1 if transpose else a["feature_group_count"]
        extra = {"output_shape": a["output_shape"]} if transpose else {"dilation": a["rate"]}
        in_dim = w[-1] if transpose else w[-2] * groups
        return cls(
            in_dim,
            a["output_channels"],
            a["kernel_shape"],
            stride=a["stride"],
            padding=a["padding"],
            with_bias=a["with_bias"],
            data_format=_format(a["data_format"]),
            feature_group_count=groups,
            **extra,
        )

    return build


def _size(m: HaikuModule, *leaves: str) -> int:
    for leaf in leaves:
        for values in (m.params or {}).values():
            if leaf in values:
                return int(np.size(values[leaf]))
    raise _NoTwin("it has no parameter to take its size from (no scale or offset)")


def _batch_norm(a: Args, m: HaikuModule) -> Module:
    _require(
        m.pass_is_training, "it is called with is_training (build it with pass_is_training=True)"
    )
    _require(a["axis"] is None, "it normalizes over a custom axis")
    state = m.state or {}
    averages = [v["average"] for k, v in state.items() if k.endswith("mean_ema")]
    _require(len(averages) == 1, "its moving averages were not found")
    channels = [int(np.size(averages[0]))]
    # Haiku's arrays have the rank of the input: keep it in the class (to_haiku_params uses it)
    cls = {4: BatchNorm2D, 2: BatchNorm1D}.get(np.ndim(averages[0]), BatchNorm)
    return cls(
        channels[0],
        a["create_scale"],
        a["create_offset"],
        decay=a["decay_rate"],
        eps=a["eps"],
        data_format=_format(a["data_format"]),
        cross_replica_axis=a["cross_replica_axis"],
        cross_replica_axis_index_groups=a["cross_replica_axis_index_groups"],
    )


def _layer_norm(a: Args, m: HaikuModule) -> Module:
    _require(a.get("param_axis") in (None, -1), "its parameters are on another axis")
    _require(not isinstance(a["axis"], slice), "its axis is a slice")
    return LayerNorm(
        _size(m, "scale", "offset"),
        a["axis"],
        a["create_scale"],
        a["create_offset"],
        a["eps"],
        use_fast_variance=a["use_fast_variance"],
    )


def _group_norm(a: Args, m: HaikuModule) -> Module:
    _require(a["axis"] == slice(1, None), "it normalizes over a custom axis")
    return GroupNorm(
        _size(m, "scale", "offset"),
        a["groups"],
        a["create_scale"],
        a["create_offset"],
        a["eps"],
        data_format=_format(a["data_format"]),
    )


def _rms_norm(a: Args, m: HaikuModule) -> Module:
    _require(a.get("param_axis") in (None, -1), "its parameters are on another axis")
    _require(not isinstance(a["axis"], slice), "its axis is a slice")
    return RMSNorm(_size(m, "scale"), a["axis"], a["eps"], a["create_scale"])


def _mha(a: Args, m: HaikuModule) -> Module:
    params = m.params or {}

    def rows(inner: str) -> int:
        return next(int(v["w"].shape[0]) for k, v in params.items() if k.endswith("/" + inner))

    return MultiHeadAttention(
        rows("query"),
        a["num_heads"],
        a["key_size"],
        a["value_size"],
        a["model_size"],
        a["with_bias"],
        key_in_dim=rows("key"),
        value_in_dim=rows("value"),
    )


def _embed(shape: tuple[int, ...]) -> Module:
    vocab_size, embed_dim = shape
    return Embed(vocab_size, embed_dim)


def _resnet(cls: type[ResNet]) -> Callable[[Args, HaikuModule], Module]:
    def build(a: Args, m: HaikuModule) -> Module:
        _require(m.pass_is_training, "it is called with is_training (pass_is_training=True)")
        _require(not a.get("logits_config"), "it has a logits_config")
        _require(not a.get("initial_conv_config"), "it has an initial_conv_config")
        bn = dict(a.get("bn_config") or {})
        _require(set(bn) <= {"decay_rate", "eps"}, f"its bn_config has {sorted(bn)}")
        w = _shape(m.params or {}, "w")  # the first conv (HWIO)
        kw: Args = {"bn_config": bn, "resnet_v2": a["resnet_v2"], "strides": a["strides"]}
        kw["in_dim"] = w[2] if len(w) == 4 else 3
        if cls is ResNet:
            for arg in ("blocks_per_group", "bottleneck", "channels_per_group", "use_projection"):
                kw[arg] = a[arg]
        kw["name"] = module_name(m.hk_config)
        return cls(num_classes=a["num_classes"], **kw)

    return build


BUILDERS: dict[type, Callable[[Args, HaikuModule], Module]] = {
    hk.nets.ResNet: _resnet(ResNet),
    hk.nets.ResNet18: _resnet(ResNet18),
    hk.nets.ResNet34: _resnet(ResNet34),
    hk.nets.ResNet50: _resnet(ResNet50),
    hk.Linear: lambda a, m: Linear(
        _shape(m.params or {}, "w")[0], a["output_size"], a["with_bias"]
    ),
    hk.Conv1D: _conv(Conv1D, False),
    hk.Conv2D: _conv(Conv2D, False),
    hk.Conv3D: _conv(Conv3D, False),
    hk.Conv1DTranspose: _conv(Conv1DTranspose, True),
    hk.Conv2DTranspose: _conv(Conv2DTranspose, True),
    hk.Conv3DTranspose: _conv(Conv3DTranspose, True),
    hk.BatchNorm: _batch_norm,
    hk.LayerNorm: _layer_norm,
    hk.GroupNorm: _group_norm,
    hk.RMSNorm: _rms_norm,
    hk.Embed: lambda a, m: _embed(_shape(m.params or {}, "embeddings")),
    hk.LSTM: lambda a, m: LSTM(_shape(m.params or {}, "w")[0] - a["hidden_size"], a["hidden_size"]),
    hk.GRU: lambda a, m: GRU(_shape(m.params or {}, "w_i")[0], a["hidden_size"]),
    hk.VanillaRNN: lambda a, m: VanillaRNN(
        _shape(m.params or {}, "w")[0], a["hidden_size"], a["double_bias"]
    ),
    hk.MultiHeadAttention: _mha,
    hk.Flatten: lambda a, m: Flatten(a["preserve_dims"]),
    hk.Reshape: lambda a, m: Reshape(a["output_shape"], a["preserve_dims"]),
    hk.nets.MLP: lambda a, m: MLP(
        output_sizes=list(a["output_sizes"]),
        in_dim=_shape(m.params or {}, "w")[0],
        activation=a["activation"],
        activate_final=a["activate_final"],
        with_bias=a["with_bias"],
    ),
}


def _arguments(module: HaikuModule) -> Args:
    """The constructor arguments of the wrapped class by name, defaults included."""
    config = module.hk_config
    bound = inspect.signature(config.hk_cls).bind(*config.args, **config.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _convert(module: HaikuModule) -> Module:
    """The native twin of `module` with its weights and state, or `_NoTwin`."""
    _require(not isinstance(module, HaikuProgram), "it is a whole program (no single twin)")
    build = BUILDERS.get(module.hk_cls)
    if is_deep_rnn(module.hk_cls):
        build = lambda a, m: deep_rnn(m.hk_config, m.params or {})
    _require(build is not None, "no native twin")
    _require(not module.use_rng, "it draws random numbers (use_rng=True)")
    _require(module.is_initialized, "it is not initialized (hk_init first)")
    arguments = _arguments(module)
    try:
        try:
            native = build(arguments, module)  # type: ignore[misc]
        except NoTwin as why:
            raise _NoTwin(str(why)) from None
        base = module_name(module.hk_config)
        if arguments.get("name") is not None and not isinstance(native, DeepRNN):
            native.name = arguments["name"]
        if isinstance(native, (ResNet, DeepRNN)):  # named by its Haiku scopes already
            native = load_haiku_params(native, module.params or {}, module.state)
        elif twin_name(native) is not None:  # Flatten and Reshape hold no arrays
            native = load_haiku_params(native, module.params or {}, module.state, names={"": base})
    except (TypeError, ValueError) as err:  # an argument the native layer does not take
        raise _NoTwin(f"the native layer refused its configuration: {err}") from None
    return native if module.training else native.eval()


def to_native(model: T, *, strict: bool = False) -> tuple[T, NativeReport]:
    """Replaces every wrapped Haiku module that has a native twin by that `pax.nn` layer.

    Each `pax.from_haiku` / `pax.haiku.*` module whose Haiku class has a native twin
    (``hk.Linear``, the convolutions and transposes, ``hk.BatchNorm``, ``hk.LayerNorm``,
    ``hk.GroupNorm``, ``hk.RMSNorm``, ``hk.Embed``, ``hk.LSTM``, ``hk.GRU``,
    ``hk.VanillaRNN``, ``hk.MultiHeadAttention``, ``hk.nets.MLP``, ``hk.nets.ResNet`` /
    ``ResNet18`` / ``34`` / ``50`` (as `pax.nets.ResNet18`, ...), a ``hk.DeepRNN`` class (also
    with skip connections) of LSTM / GRU / VanillaRNN cores and functions (as a native
    ``DeepRNN``), and the array-free
    ``hk.Flatten`` and ``hk.Reshape``) becomes the native layer
    with the same configuration, weights and state (same outputs and gradients) and the same
    training mode; its Haiku ``name=`` becomes the layer's ``name``, so `haiku_module_names`
    and `to_haiku_params` give the same names before and after. The others (no twin, a
    configuration the native layer does not support, whole programs) stay wrapped and are
    listed in the report.

    Args:
      model: the model.
      strict: raise if any wrapped module stays wrapped.

    Returns:
      ``(model, NativeReport(converted, kept))``.

    Raises:
      ValueError: with `strict`, naming every module that stays wrapped and why.

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> net = pax.nn.Sequential(pax.haiku.linear(2, 4), jax.nn.relu, pax.haiku.linear(4, 1))
      >>> native, report = pax.haiku.to_native(net)
      >>> type(native.modules[0]).__name__, report.converted[0], report.kept
      ('Linear', '.modules[0]: hk.Linear -> pax.nn.Linear', ())
      >>> x = jnp.ones((3, 2))
      >>> bool(jnp.allclose(native(x), net(x)))
      True
    """
    if not isinstance(model, Module):
        raise TypeError(f"to_native expects a pax.Module, got {type(model).__name__}.")
    converted: list[str] = []
    kept: list[str] = []

    def replace(path: Any, x: Any) -> Any:
        if not isinstance(x, HaikuModule):
            return x
        at = where(jax.tree_util.keystr(path))
        name = "a program" if isinstance(x, HaikuProgram) else haiku_class_name(x.hk_cls)
        try:
            native = _convert(x)
        except _NoTwin as why:
            kept.append(f"{at}: {name} ({why})")
            return x.copy()  # the result shares no module object with `model`
        where_ = "pax.nets" if isinstance(native, ResNet) else "pax.nn"
        converted.append(f"{at}: {name} -> {where_}.{type(native).__name__}")
        return native

    result = jax.tree_util.tree_map_with_path(
        replace, model, is_leaf=lambda x: isinstance(x, HaikuModule)
    )
    if strict and kept:
        raise ValueError(
            "to_native: some wrapped Haiku modules stay wrapped:\n  "
            + "\n  ".join(kept)
            + "\nFix: keep them wrapped (strict=False), or rebuild those parts from pax.nn "
            "layers and load their weights with pax.haiku.load_haiku_params."
        )
    return result, NativeReport(tuple(converted), tuple(kept))
