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

from pax._src.core import lazy
from pax._src.core._jax_compat import trace_state_clean
from pax._src.core.module import Module
from pax._src.core.registry import MODULE_KINDS, is_module
from pax._src.core.rng import resolve_rng_key

_PENDING = "lazy_init_args"


class LazyLayer(Module):
    """A layer whose input size may be None; subclasses define `_build` and `_input_size`.

    Example:
      >>> import jax.numpy as jnp, pax
      >>> fc = pax.nn.Linear(None, 2)
      >>> fc.weight is None, fc.lazy_init(jnp.ones((1, 5))).weight.shape
      (True, (5, 2))
    """

    in_dim: Any
    lazy_key: jax.Array
    # ``_build(in_dim, key, **init_args)``: validates `in_dim` and registers the parameters and
    # states, drawn from `key` (each subclass names its own initializer arguments).
    _build: Callable[..., None]

    def _input_size(self, *args: Any, **kwargs: Any) -> int:
        """The input size of a call with these arguments (only their shapes are read)."""
        raise NotImplementedError

    def _placeholder_size(self) -> int:
        """An input size that `_build` accepts, used to build the registry of a lazy layer."""
        return 1

    def _draws_random(self, init_args: dict[str, Any]) -> bool:
        """True if building with these initializers reads the key (overridden by layers whose
        default initializers are constants, so they can be built inside a transformation)."""
        return True

    def _setup(self, in_dim: int | None, rng_key: jax.Array | None, **init_args: Any) -> None:
        """Builds the layer, or (`in_dim` None) leaves it waiting for `lazy_init`."""
        if in_dim is not None and rng_key is None and not trace_state_clean():
            if not self._draws_random(init_args):  # built inside jax.jit: constants need no key
                self._build(in_dim, None, **init_args)  # (eagerly a key is still drawn, so the
                return  # global key sequence is the same as a lazy layer's)
        key = resolve_rng_key(rng_key)
        if in_dim is not None:
            self._build(in_dim, key, **init_args)
            return
        self._build(self._placeholder_size(), key, **init_args)
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
        self._build(size, key, **init_args)

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
