"""`hk_init`: initialize every `pax.from_haiku` module of a model from dummy inputs."""

from __future__ import annotations

from typing import Any, cast

import jax

from pax._src.core import tracing
from pax._src.core.module import Module
from pax._src.core.rng import resolve_rng_key
from pax._src.core.validate import ARRAY_TYPES
from pax._src.haiku.module import HaikuModule, initialize_on_first_call

# `fold_in` data for modules reached by the forward pass that are not in the model tree.
_STRAY = 0xFFFFFFFF

_STRAY_MODULE = (
    "hk_init: the forward pass called {module}, which is not part of the model passed to "
    "hk_init (the forward pass built it, or copied it, e.g. through jax.lax.scan or "
    "pax.dynamic_unroll), so its parameters could not be kept. Fix: store the module as an "
    "attribute of the model, and initialize a cell that is unrolled by a scan before "
    "unrolling it: cell = cell.hk_init(x[0], cell.initial_state(batch_size)), or build it "
    "with pax.haiku (e.g. pax.haiku.lstm(in_dim, hidden_dim)), which needs no dummy input."
)


def is_haiku_module(x: Any) -> bool:
    return isinstance(x, HaikuModule)


def haiku_modules_with_path(model: Any) -> list[tuple[str, HaikuModule]]:
    """Every `HaikuModule` of `model` (flatten order) with its key path, e.g. ``.layers[0]``."""
    pairs = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_haiku_module)[0]
    return [
        (jax.tree_util.keystr(path), leaf) for path, leaf in pairs if isinstance(leaf, HaikuModule)
    ]


def _initialize_in_forward(
    model: Module, base_key: jax.Array, args: tuple, kwargs: dict
) -> dict[int, tuple]:
    """Calls a copy of `model`; returns ``{index: (params, state, rng_key)}`` of new modules."""
    model = model.copy()
    index_of = {
        id(m): i for i, (_, m) in enumerate(haiku_modules_with_path(model)) if not m.is_initialized
    }
    records: dict[int, tuple] = {}

    def initialize(module: HaikuModule, call_args: tuple, call_kwargs: dict) -> None:
        index = index_of.get(id(module))
        if index is None:
            raise RuntimeError(_STRAY_MODULE.format(module=module._describe()))
        module._hk_initialize(jax.random.fold_in(base_key, index), call_args, call_kwargs)
        records[index] = (module.params, module.state, getattr(module, "rng_key", None))

    with initialize_on_first_call(initialize):
        cast(Any, model)(*args, **kwargs)
    return records


def _initialize_in_jit(
    model: Module, base_key: jax.Array, args: tuple, kwargs: dict
) -> dict[int, tuple]:
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if isinstance(leaf, ARRAY_TYPES)]

    def run(model: Module, key: jax.Array, values: list) -> dict[int, tuple]:
        full = list(leaves)
        for i, value in zip(dynamic, values):
            full[i] = value
        call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, full)
        return _initialize_in_forward(model, key, call_args, call_kwargs)

    with tracing.discarding():  # the traced copy of the model is thrown away on purpose
        return jax.jit(run)(model, base_key, [leaves[i] for i in dynamic])


def hk_init(
    module: Module,
    *args: Any,
    enable_jit: bool = False,
    rng_key: jax.Array | None = None,
    **kwargs: Any,
) -> Module:
    """Returns a copy of `module` where every uninitialized `pax.from_haiku` module is initialized.

    Calls (a throwaway copy of) `module` on the dummy inputs; each wrapped Haiku module that
    has no parameters yet runs Haiku's ``init`` on the inputs it receives. The forward pass
    leaves no other trace: states and keys of the returned model are those of `module` plus the
    fresh Haiku parameters and initial states. The keys come from `rng_key` (default
    `pax.next_rng_key()`), folded with each wrapped module's position in the model, so the
    result does not depend on the order of the calls. Also available as the method
    ``module.hk_init(*dummy_inputs)``.

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
    pending = [path for path, m in haiku_modules_with_path(module) if not m.is_initialized]
    if not pending:
        return module.copy()
    base_key = resolve_rng_key(rng_key)
    run = _initialize_in_jit if enable_jit else _initialize_in_forward
    records = run(module, base_key, args, kwargs)
    result = module.copy()
    unreached = []
    for index, (path, target) in enumerate(haiku_modules_with_path(result)):
        if index in records:
            target._hk_set(*records[index])
        elif not target.is_initialized:
            unreached.append(f"{path or '<the model>'} ({target.hk_config!r})")
    if unreached:
        raise ValueError(
            f"hk_init: the forward pass on the dummy inputs did not call {len(unreached)} "
            f"pax.from_haiku module(s), so they are still uninitialized: "
            f"{', '.join(unreached)}. Fix: make sure the dummy call reaches every module "
            f"(e.g. pass the arguments that enable every branch), or initialize such a module "
            f"on its own: model.part = model.part.hk_init(dummy_input)."
        )
    return result
