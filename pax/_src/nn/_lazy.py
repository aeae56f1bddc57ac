"""`LazyLayer`: the native layers whose input size may be left as None until `lazy_init`.

The native side of `pax/_src/core/lazy.py`. A layer built with its input size None draws its key
as the eager layer would, builds itself once with a placeholder size (so that its registry and
static attributes are those of the eager layer), then sets every registered parameter and state
to None and keeps the key (state ``lazy_key``) and the initializers (static
``lazy_init_args``). `Module.lazy_init` calls `_lazy_initialize` with the first call's
arguments: the layer reads its input size from their shapes, drops the two entries and builds
itself with the kept key, so it ends equal to the layer built with that size and key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from pax._src.core import lazy
from pax._src.core._jax_compat import trace_state_clean
from pax._src.core.module import Module
from pax._src.core.registry import MODULE_KINDS, is_module
from pax._src.core.rng import resolve_rng_key
from pax._src.nn import _validate as v
from pax._src.nn import initializers
from pax._src.nn.initializers import Initializer, layer_init_args

_PENDING = "lazy_init_args"

Init = Initializer | None  # an initializer argument: None for the layer's default


class LazyLayer(Module):
    """A layer whose input size may be None; subclasses define `_build`.

    The constructor of a subclass is written once here: ``super().__init__(name=name)`` (which
    sets ``in_dim = None``), the checks of the layer's own arguments, then
    ``self._create_params(in_dim, rng_key, param_dtype, w_init=w_init, ...)``, which checks the
    initializers and `param_dtype`, and builds the layer (or leaves it waiting for `lazy_init`).

    Example:
      >>> import jax.numpy as jnp, pax
      >>> fc = pax.nn.Linear(None, 2)
      >>> fc.weight is None, fc.lazy_init(jnp.ones((1, 5))).weight.shape
      (True, (5, 2))
    """

    in_dim: Any
    lazy_key: jax.Array
    # ``_build(key, **init_args)``: registers the parameters and states for ``self.in_dim``
    # (already checked), drawn from `key` (each subclass names its own initializer arguments).
    _build: Callable[..., None]

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.in_dim = None  # set by `_create_params` (or by `lazy_init`)

    @property
    def _cls(self) -> str:
        """The class name that errors show (``"Conv2D"``)."""
        return type(self).__name__

    def _create_params(
        self,
        in_dim: int | None,
        rng_key: jax.Array | None,
        param_dtype: Any,
        *,
        options: dict[str, Any] | None = None,
        **inits: Any,
    ) -> None:
        """The last step of a constructor: checks the initializers `inits` (``w_init=...``) and
        `param_dtype`, then builds the layer with them and `options` (``create_scale=...``)."""
        init_args = layer_init_args(type(self).__name__, param_dtype, **inits)
        self._setup(in_dim, rng_key, **(options or {}), **init_args)

    def _input_size(self, x: Any, *args: Any, **kwargs: Any) -> int:
        """The input size of a call with these arguments (only their shapes are read): by
        default the last axis of the first argument."""
        return int(jnp.shape(x)[-1])

    def _placeholder_size(self) -> int:
        """An input size that `_build` accepts, used to build the registry of a lazy layer."""
        return 1

    def _draws_random(self, init_args: dict[str, Any]) -> bool:
        """True if building with these initializers reads the key (overridden by layers whose
        default initializers are constants, so they can be built inside a transformation)."""
        return True

    def _build_sized(self, in_dim: int, key: jax.Array | None, init_args: dict[str, Any]) -> None:
        self.in_dim = v.positive_int(self._cls, "in_dim", in_dim)
        self._build(key, **init_args)

    def _setup(self, in_dim: int | None, rng_key: jax.Array | None, **init_args: Any) -> None:
        """Builds the layer, or (`in_dim` None) leaves it waiting for `lazy_init`."""
        if in_dim is not None and rng_key is None and not trace_state_clean():
            if not self._draws_random(init_args):  # built inside jax.jit: constants need no key
                self._build_sized(in_dim, None, init_args)  # (eagerly a key is still drawn, so
                return  # the global key sequence is the same as a lazy layer's)
        key = resolve_rng_key(rng_key)
        if in_dim is not None:
            self._build_sized(in_dim, key, init_args)
            return
        self._build_sized(self._placeholder_size(), key, init_args)
        _clear(self)
        self.in_dim = None
        self.register_state("lazy_key", key)
        setattr(self, _PENDING, tuple(init_args.items()))

    def _lazy_pending(self) -> bool:
        return _PENDING in self.__dict__

    def _lazy_check(self, *args: Any, **kwargs: Any) -> None:
        """At the start of ``__call__``: initializes (within `lazy_init`) or raises."""
        if _PENDING in self.__dict__:
            lazy.first_call(self, args, kwargs)

    def _lazy_initialize(self, args: tuple, kwargs: dict) -> None:
        size = self._input_size(*args, **kwargs)
        init_args = dict(getattr(self, _PENDING))
        key = self.lazy_key
        delattr(self, _PENDING)
        del self.lazy_key
        self._build_sized(size, key, init_args)

    def _lazy_describe(self) -> str:
        sizes = [f"{n}={getattr(self, n)!r}" for n in ("out_dim", "hidden_dim") if hasattr(self, n)]
        return f"{type(self).__name__}({', '.join(['in_dim=None', *sizes])})"


def _clear(module: Module) -> None:
    """Sets every registered parameter and state of `module` and its submodules to None."""
    for name, kind in module.registry.items():
        if kind in MODULE_KINDS:
            for child in jax.tree_util.tree_leaves(getattr(module, name), is_leaf=is_module):
                _clear(child)
        else:
            setattr(module, name, None)


class ChannelLayer(LazyLayer):
    """A `LazyLayer` with a `data_format`: its input size is the channel count (axis 1 of a
    channels-first input of rank 2 or more, else the last axis)."""

    data_format: str

    @property
    def channels_last(self) -> bool:
        """Whether the channels are on the last axis (``data_format == "channels_last"``)."""
        return self.data_format == v.CHANNELS_LAST

    def _input_size(self, x: Any, *args: Any, **kwargs: Any) -> int:
        shape = jnp.shape(x)
        return int(shape[-1] if self.channels_last or len(shape) < 2 else shape[1])


def weight_and_bias(
    layer: Any,
    key: jax.Array,
    shape: tuple[int, ...],
    w_init: Initializer,
    b_init: Init,
    dtype: Any,
) -> None:
    """Registers ``weight`` of `shape` and (``layer.with_bias``) ``bias`` of shape
    ``(layer.out_dim,)``, default zeros, from two halves of `key` (Linear and the convolutions)."""
    w_key, b_key = jax.random.split(key)
    layer.register_parameter("weight", w_init(w_key, shape, dtype))
    if layer.with_bias:
        b_init = b_init or initializers.zeros
        layer.register_parameter("bias", b_init(b_key, (layer.out_dim,), dtype))
    else:
        layer.bias = None
