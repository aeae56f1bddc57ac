"""`hk_init`, and the `pax.from_haiku` modules as a family of lazy modules of the core."""

from __future__ import annotations

from typing import Any

import jax

from pax._src.core import lazy
from pax._src.core.module import Module
from pax._src.haiku.module import HaikuModule, initialize_on_first_call


def is_haiku_module(x: Any) -> bool:
    return isinstance(x, HaikuModule)


def haiku_modules_with_path(model: Any) -> list[tuple[str, HaikuModule]]:
    """Every `HaikuModule` of `model` (flatten order) with its key path, e.g. ``.layers[0]``."""
    pairs = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_haiku_module)[0]
    return [
        (jax.tree_util.keystr(path), leaf) for path, leaf in pairs if isinstance(leaf, HaikuModule)
    ]


def _initialize(module: HaikuModule, key: jax.Array, args: tuple, kwargs: dict) -> tuple:
    module._hk_initialize(key, args, kwargs)
    return module.params, module.state, getattr(module, "rng_key", None)


def _finish(module: HaikuModule, key: jax.Array, record: Any, specs: lazy.Specs) -> None:
    if record is not None:
        module._hk_set(*record)
    else:  # abstract forward pass: run Haiku's init on zeros of the recorded shapes
        args, kwargs = lazy.materialize(specs)
        module._hk_initialize(key, args, kwargs)


HAIKU = lazy.LazyKind(
    cls=HaikuModule,
    pending=lambda m: not m.is_initialized,
    initialize=_initialize,
    finish=_finish,
    on_first_call=initialize_on_first_call,
    describe=lambda m: repr(m.hk_config),
)


def hk_init(
    module: Module,
    *args: Any,
    enable_jit: bool = False,
    rng_key: jax.Array | None = None,
    **kwargs: Any,
) -> Module:
    """Returns a copy of `module` where every uninitialized `pax.from_haiku` module is initialized.

    Calls (a throwaway copy of) `module` on the dummy inputs; each wrapped Haiku module that
    has no parameters yet runs Haiku's ``init`` on the inputs it receives (and so does each
    native layer built without its input size: see `pax.Module.lazy_init`, which shares this
    mechanism but runs the forward pass abstractly). The forward pass leaves no other trace:
    states and keys of the returned model are those of `module` plus the fresh Haiku parameters
    and initial states. The keys come from `rng_key` (default `pax.next_rng_key()`), folded with
    each wrapped module's position in the model, so the result does not depend on the order of
    the calls. Also available as the method ``module.hk_init(*dummy_inputs)``.

    Args:
      module: the model.
      *args: dummy positional inputs of ``module(...)`` (only their shapes and dtypes matter).
      enable_jit: run the dummy forward pass under `jax.jit` (nothing is computed eagerly:
        faster for big models, costs a compilation).
      rng_key: key for the initializers; keyword-only, so the name is reserved.
      **kwargs: dummy keyword inputs of ``module(...)``.

    Returns:
      The initialized model.

    Raises:
      ValueError: if some wrapped modules were not reached by the forward pass.
      RuntimeError: if the forward pass reached a wrapped module that is not in the model tree.

    Example:
      >>> import haiku as hk, jax, jax.numpy as jnp, pax
      >>> net = pax.nn.Sequential(
      ...     pax.from_haiku(hk.Linear)(8), jax.nn.relu, pax.from_haiku(hk.Linear)(2)
      ... )
      >>> net = net.hk_init(jnp.zeros((1, 5)))
      >>> net(jnp.ones((3, 5))).shape
      (3, 2)
    """
    if not isinstance(module, Module):
        raise TypeError(f"hk_init expects a pax.Module, got {type(module).__name__}.")
    mode = "jit" if enable_jit else "eager"
    return lazy.initialize(module, args, kwargs, mode=mode, who="hk_init", rng_key=rng_key)
