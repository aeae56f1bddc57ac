"""Detecting modules that still hold tracers after the transformation that made them returned."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
from jax._src.core import trace_state_clean

from pax._src.core.layout import EMPTY

if TYPE_CHECKING:
    from pax._src.core.module import Module

Tracer = jax.core.Tracer

_LEAK_FIX = (
    "A module changed inside a transformed function must be returned by it; the object you "
    "passed in is not updated. Fix:\n"
    "    @jax.jit\n"
    "    def step(model, x):\n"
    "        y = model(x)\n"
    "        return y, model      # return the updated model\n"
    "    y, model = step(model, x)"
)


def mark_traced(d: dict) -> None:
    """Flags a module given traced values; flatten then takes its slow, checking path."""
    d["_pax_tracers"] = True
    d.pop("_pax_aux", None)


def check_no_leaked_tracers(module: Module) -> None:
    """Raises if `module` (touched inside a transform) still holds tracers outside of it."""
    if not trace_state_clean():
        return  # inside a transformation: tracers are legitimate here
    d = module.__dict__
    layout = d.get("_pax_layout", EMPTY)
    for name in layout.children:
        for path, leaf in jax.tree_util.tree_leaves_with_path(d[name]):
            if isinstance(leaf, Tracer):
                raise RuntimeError(
                    f"{type(module).__name__}.{name}{jax.tree_util.keystr(path)} holds a JAX "
                    f"tracer from a transformation (jax.jit, jax.grad, jax.vmap, ...) that has "
                    f"already returned: the module was modified inside it and used afterwards. "
                    f"{_LEAK_FIX}"
                )
    del d["_pax_tracers"]


def wrap_call(call: Callable) -> Callable:
    @functools.wraps(call)
    def __call__(self: Module, *args: Any, **kwargs: Any) -> Any:
        if "_pax_tracers" in self.__dict__:
            check_no_leaked_tracers(self)
        return call(self, *args, **kwargs)

    __call__._pax_wrapped = True  # type: ignore[attr-defined]
    return __call__
