"""Tracer marking: detecting modules that still hold tracers after their transformation returned.

Assigning a traced value to a registered attribute marks the module (`registry.mark_traced`).
A marked module takes a checking path in flatten and in ``__call__``: outside any
transformation, a tracer left in it means the module was changed inside a transformed function
and not returned from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from pax._src.core import registry
from pax._src.core._jax_compat import Tracer, trace_state_clean

LEAK_FIX = (
    "A module changed inside a transformed function must be returned by it; the object you "
    "passed in is not updated. Fix:\n"
    "    @jax.jit\n"
    "    def step(model, x):\n"
    "        y = model(x)\n"
    "        return y, model      # return the updated model\n"
    "    y, model = step(model, x)"
)


def check_no_leaked_tracers(module: Any) -> None:
    """Raises if `module` (touched inside a transform) still holds tracers outside of it."""
    if not trace_state_clean():
        return  # inside a transformation: tracers are legitimate here
    d = module.__dict__
    for name in registry.layout_in(d).children:
        for path, leaf in jax.tree_util.tree_leaves_with_path(d[name]):
            if isinstance(leaf, Tracer):
                raise RuntimeError(
                    f"{type(module).__name__}.{name}{jax.tree_util.keystr(path)} holds a JAX "
                    f"tracer from a transformation (jax.jit, jax.grad, jax.vmap, ...) that has "
                    f"already returned: the module was modified inside it and used afterwards. "
                    f"{LEAK_FIX}"
                )
    registry.clear_traced(d)


def wrap_call(call: Callable) -> Callable:
    """Wraps a module's ``__call__`` so that a module holding leaked tracers raises first."""
    key = registry.TRACERS_KEY

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if key in self.__dict__:
            check_no_leaked_tracers(self)
        return call(self, *args, **kwargs)

    __call__.__leak_checked__ = True  # type: ignore[attr-defined]
    return __call__


def is_wrapped(call: Any) -> bool:
    """True if `call` was made by `wrap_call`."""
    return getattr(call, "__leak_checked__", False)
