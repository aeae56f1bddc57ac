"""ResNets from native `pax.nn` layers, with the module names of Haiku's ``hk.nets.ResNet``.

Each block, block group and the network itself is a `pax.Module` built with ``name=``, so the
Haiku names of its layers are those of ``hk.nets.ResNet`` (``res_net18/~/block_group_0/~/
block_0/~/conv_0``): `pax.haiku.load_haiku_params` loads the ``params`` / ``state`` of
``hk.nets.ResNet18`` with no renaming, and `pax.haiku.to_haiku_params` exports them back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from pax._src.core.module import Module
from pax._src.nn.batch_norm import BatchNorm2D
from pax._src.nn.conv import Conv2D
from pax._src.nn.initializers import zeros
from pax._src.nn.linear import Linear
from pax._src.nn.pool import max_pool

CONFIGS: dict[int, dict[str, Any]] = {
    18: {"blocks": (2, 2, 2, 2), "bottleneck": False, "channels": (64, 128, 256, 512)},
    34: {"blocks": (3, 4, 6, 3), "bottleneck": False, "channels": (64, 128, 256, 512)},
    50: {"blocks": (3, 4, 6, 3), "bottleneck": True, "channels": (256, 512, 1024, 2048)},
}
_BN_KEYS = ("decay", "decay_rate", "eps", "running_stats")


def _bn_config(cls: str, bn_config: Mapping[str, Any] | None) -> dict[str, Any]:
    config = dict(bn_config or {})
    unknown = sorted(set(config) - set(_BN_KEYS))
    if unknown:
        raise ValueError(
            f"{cls}: bn_config takes the keys {list(_BN_KEYS)}, got {unknown}. Fix: e.g. "
            f"{cls}(10, bn_config={{'decay': 0.9, 'eps': 1e-5}})."
        )
    config["decay"] = config.pop("decay_rate", config.get("decay", 0.9))
    config.setdefault("eps", 1e-5)
    return config


def _padding(kernel: int, padding: str) -> Any:
    if padding == "SAME":
        return "SAME"
    return [(kernel // 2, kernel // 2)] * 2  # PyTorch's symmetric padding


class _Net(Module):
    data_format: str = "channels_last"

    def _conv(self, cin: int, cout: int, k: int, stride: int, pad: str, name: str) -> Conv2D:
        return Conv2D(
            cin, cout, k, stride, padding=_padding(k, pad), with_bias=False,
            data_format=self.data_format, name=name,
        )  # fmt: skip

    def _bn(self, c: int, config: dict[str, Any], name: str, **kw: Any) -> BatchNorm2D:
        return BatchNorm2D(c, data_format=self.data_format, name=name, **config, **kw)


class ResNetBlock(_Net):
    """One residual block of `ResNet` (Haiku's ``BlockV1`` / ``BlockV2``).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> block = pax.nets.ResNetBlock(4, 8, 2, use_projection=True, bottleneck=False)
      >>> block(jnp.ones((1, 6, 6, 4))).shape
      (1, 3, 3, 8)
    """

    def __init__(
        self,
        in_dim: int,
        channels: int,
        stride: int,
        use_projection: bool,
        bottleneck: bool,
        bn_config: Mapping[str, Any] | None = None,
        resnet_v2: bool = False,
        data_format: str = "channels_last",
        padding: str = "SAME",
        *,
        name: str = "block_0",
    ) -> None:
        super().__init__(name=name)
        self.data_format, self.resnet_v2 = data_format, resnet_v2
        config = _bn_config("ResNetBlock", bn_config)
        mid = channels // 4 if bottleneck else channels
        if use_projection:
            self.proj_conv = self._conv(in_dim, channels, 1, stride, padding, "shortcut_conv")
            if not resnet_v2:
                self.proj_batchnorm = self._bn(channels, config, "shortcut_batchnorm")
        if bottleneck:
            shapes = [(in_dim, mid, 1, 1), (mid, mid, 3, stride), (mid, channels, 1, 1)]
        else:
            shapes = [(in_dim, mid, 3, stride), (mid, channels, 3, 1)]
        self.convs = [self._conv(*s, padding, f"conv_{i}") for i, s in enumerate(shapes)]
        bn_dims = [s[0] if resnet_v2 else s[1] for s in shapes]
        zero_last = {} if resnet_v2 else {"scale_init": zeros}  # Haiku's BlockV1: bn_2 at 0
        self.batchnorms = [
            self._bn(c, config, f"batchnorm_{i}", **(zero_last if i == 2 else {}))
            for i, c in enumerate(bn_dims)
        ]
        self.use_projection = use_projection

    def __call__(self, x: jax.Array, *, test_local_stats: bool = False) -> jax.Array:
        out = shortcut = x
        last = len(self.convs) - 1
        if self.resnet_v2:
            for i, (conv, bn) in enumerate(zip(self.convs, self.batchnorms, strict=True)):
                out = jax.nn.relu(bn(out, test_local_stats=test_local_stats))
                if i == 0 and self.use_projection:
                    shortcut = self.proj_conv(out)
                out = conv(out)
            return out + shortcut
        if self.use_projection:
            shortcut = self.proj_conv(shortcut)
            shortcut = self.proj_batchnorm(shortcut, test_local_stats=test_local_stats)
        for i, (conv, bn) in enumerate(zip(self.convs, self.batchnorms, strict=True)):
            out = bn(conv(out), test_local_stats=test_local_stats)
            if i < last:
                out = jax.nn.relu(out)
        return jax.nn.relu(out + shortcut)


class ResNetBlockGroup(Module):
    """A group of `ResNetBlock` (Haiku's ``BlockGroup``); the first one strides.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> group = pax.nets.ResNetBlockGroup(4, 4, 2, 1, bottleneck=False, use_projection=False)
      >>> group(jnp.ones((1, 6, 6, 4))).shape
      (1, 6, 6, 4)
    """

    def __init__(
        self,
        in_dim: int,
        channels: int,
        num_blocks: int,
        stride: int,
        bottleneck: bool,
        use_projection: bool,
        bn_config: Mapping[str, Any] | None = None,
        resnet_v2: bool = False,
        data_format: str = "channels_last",
        padding: str = "SAME",
        *,
        name: str = "block_group_0",
    ) -> None:
        super().__init__(name=name)
        self.blocks = [
            ResNetBlock(
                in_dim if i == 0 else channels, channels, 1 if i else stride,
                i == 0 and use_projection, bottleneck, bn_config, resnet_v2, data_format,
                padding, name=f"block_{i}",
            )
            for i in range(num_blocks)
        ]  # fmt: skip

    def __call__(self, x: jax.Array, *, test_local_stats: bool = False) -> jax.Array:
        for block in self.blocks:
            x = block(x, test_local_stats=test_local_stats)
        return x


class ResNet(_Net):
    """A ResNet (He et al., 2016) from native layers, named as Haiku's ``hk.nets.ResNet``.

    The layers, their order, arguments and Haiku names are those of ``hk.nets.ResNet`` (v1 or
    v2), so ``pax.haiku.load_haiku_params(net, params, state)`` loads the dicts of
    ``hk.transform_with_state(lambda x, t: hk.nets.ResNet18(n)(x, t))`` exactly (BatchNorm
    moving averages included); training mode is the module's (``net.eval()`` is Haiku's
    ``is_training=False``).

    Args:
      blocks_per_group: number of blocks in each of the 4 groups.
      num_classes: size of the output.
      bn_config: arguments of the BatchNorm layers: ``decay`` (``decay_rate``, default 0.9),
        ``eps`` (default 1e-5), ``running_stats`` (PyTorch's running mean/var, see
        `pax.nn.BatchNorm`).
      resnet_v2: Haiku's pre-activation ResNet v2.
      bottleneck: bottleneck blocks (1x1, 3x3, 1x1 convolutions).
      channels_per_group: output channels of each group.
      use_projection: whether the first block of each group projects its shortcut.
      strides: stride of the first block of each group.
      in_dim: number of input channels (default 3).
      data_format: ``"channels_last"`` (``NHWC``, Haiku's) or ``"channels_first"`` (``NCHW``).
      padding: ``"SAME"`` (Haiku's, default) or ``"symmetric"`` (PyTorch's ``k // 2`` on both
        sides, as torchvision's ResNets: use it for torchvision weights).
      name: the Haiku scope of the network (Haiku's default ``res_net``).

    Raises:
      ValueError: for a group setting that does not have 4 entries, a bad `padding` or
        `bn_config` key.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nets.ResNet18(10, channels_per_group=(64, 8, 8, 16))
      >>> net(jnp.ones((2, 16, 16, 3))).shape
      (2, 10)
    """

    def __init__(
        self,
        blocks_per_group: Sequence[int],
        num_classes: int,
        bn_config: Mapping[str, Any] | None = None,
        resnet_v2: bool = False,
        bottleneck: bool = True,
        channels_per_group: Sequence[int] = (256, 512, 1024, 2048),
        use_projection: Sequence[bool] = (True, True, True, True),
        strides: Sequence[int] = (1, 2, 2, 2),
        *,
        in_dim: int = 3,
        data_format: str = "channels_last",
        padding: str = "SAME",
        name: str = "res_net",
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__
        for arg, value in (
            ("blocks_per_group", blocks_per_group),
            ("channels_per_group", channels_per_group),
            ("use_projection", use_projection),
            ("strides", strides),
        ):
            if len(value) != 4:
                raise ValueError(
                    f"{cls}: {arg} must have 4 entries (one per block group), got {value!r}. "
                    f"Fix: e.g. {arg}={tuple(value[:1]) * 4!r}."
                )
        if padding not in ("SAME", "symmetric"):
            raise ValueError(
                f"{cls}: padding must be 'SAME' (Haiku's) or 'symmetric' (PyTorch's), got "
                f"{padding!r}. Fix: {cls}(..., padding='symmetric') for torchvision weights."
            )
        self.data_format, self.resnet_v2, self.padding = data_format, resnet_v2, padding
        config = _bn_config(cls, bn_config)
        self.initial_conv = self._conv(in_dim, 64, 7, 2, padding, "initial_conv")
        if not resnet_v2:
            self.initial_batchnorm = self._bn(64, config, "initial_batchnorm")
        groups, c = [], 64
        for i in range(4):
            groups.append(
                ResNetBlockGroup(
                    c, channels_per_group[i], blocks_per_group[i], strides[i], bottleneck,
                    use_projection[i], config, resnet_v2, data_format, padding,
                    name=f"block_group_{i}",
                )
            )  # fmt: skip
            c = channels_per_group[i]
        self.block_groups = groups
        if resnet_v2:
            self.final_batchnorm = self._bn(c, config, "final_batchnorm")
        self.logits = Linear(c, num_classes, w_init=zeros, name="logits")

    def __call__(self, x: jax.Array, *, test_local_stats: bool = False) -> jax.Array:
        """The logits of images `x` (``NHWC``, or ``NCHW`` channels first).

        Args:
          x: the images.
          test_local_stats: in ``eval()`` mode, normalize with the batch statistics.
        """
        first = self.data_format == "channels_first"
        out = self.initial_conv(x)
        if not self.resnet_v2:
            out = self.initial_batchnorm(out, test_local_stats=test_local_stats)
            out = jax.nn.relu(out)
        if self.padding == "SAME":
            out = max_pool(out, 3, 2, "SAME", self.data_format)
        else:  # PyTorch's MaxPool2d(3, 2, padding=1)
            pads = ((0, 0), (0, 0), (1, 1), (1, 1)) if first else ((0, 0), (1, 1), (1, 1), (0, 0))
            out = jnp.pad(out, pads, constant_values=-jnp.inf)
            out = max_pool(out, 3, 2, "VALID", self.data_format)
        for group in self.block_groups:
            out = group(out, test_local_stats=test_local_stats)
        if self.resnet_v2:
            out = jax.nn.relu(self.final_batchnorm(out, test_local_stats=test_local_stats))
        out = jnp.mean(out, axis=(2, 3) if first else (1, 2))
        return self.logits(out)


def _resnet(depth: int) -> type[ResNet]:
    config = CONFIGS[depth]

    class Net(ResNet):
        def __init__(
            self,
            num_classes: int,
            bn_config: Mapping[str, Any] | None = None,
            resnet_v2: bool = False,
            channels_per_group: Sequence[int] = config["channels"],
            strides: Sequence[int] = (1, 2, 2, 2),
            *,
            in_dim: int = 3,
            data_format: str = "channels_last",
            padding: str = "SAME",
            name: str = f"res_net{depth}",
        ) -> None:
            use_projection = (True,) * 4 if config["bottleneck"] else (False, True, True, True)
            super().__init__(
                config["blocks"], num_classes, bn_config, resnet_v2, config["bottleneck"],
                channels_per_group, use_projection, strides, in_dim=in_dim,
                data_format=data_format, padding=padding, name=name,
            )  # fmt: skip

    Net.__name__ = Net.__qualname__ = f"ResNet{depth}"
    Net.__doc__ = f"""ResNet{depth}: `ResNet` with Haiku's ``hk.nets.ResNet{depth}`` settings.

    Same arguments as `ResNet` but the group settings (``channels_per_group`` may be changed,
    as for a small test network); the Haiku scope is ``res_net{depth}``.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> net = pax.nets.ResNet{depth}(10)
      >>> sorted(pax.haiku.haiku_module_names(net).values())[0]
      'res_net{depth}/~/block_group_0/~/block_0/~/batchnorm_0'
    """
    return Net


ResNet18 = _resnet(18)
ResNet34 = _resnet(34)
ResNet50 = _resnet(50)
