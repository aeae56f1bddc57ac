"""Initialization from example inputs: the protocol behind `Module.hk_init`.

Some modules create their parameters from the shape of a first input (the Haiku wrappers of
`pax.from_haiku`). The core does not know them: an integration that defines such modules
registers one `LazyInitializer` with `set_initializer`, and `Module.hk_init` calls it. Until
one is registered, no such module can exist, so initializing a model just copies it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

LazyInitializer = Callable[..., Any]
"""``initializer(model, *args, enable_jit=..., **kwargs) -> model``: returns a copy of `model`
whose lazily-initialized modules were initialized by calling it on the example inputs."""


_initializer: LazyInitializer | None = None


def set_initializer(initializer: LazyInitializer) -> None:
    """Registers the function `Module.hk_init` calls (one integration owns it: pax.haiku).

    Example:
      >>> import pax._src.haiku  # registers the Haiku initializer
      >>> current_initializer() is not None
      True
    """
    global _initializer
    if _initializer is not None and _initializer is not initializer:
        raise RuntimeError(
            "pax: an initializer for Module.hk_init is already registered "
            f"({_initializer!r}); only one integration may provide it."
        )
    _initializer = initializer


def current_initializer() -> LazyInitializer | None:
    """The registered initializer, or None while no integration defined lazy modules."""
    return _initializer


def initialize(model: T, *args: Any, enable_jit: bool = False, **kwargs: Any) -> T:
    """Initializes the lazily-initialized modules of `model` from example inputs.

    Returns a copy of `model` (the model itself is never changed).
    """
    if _initializer is None:
        return model.copy()  # type: ignore[attr-defined]
    return _initializer(model, *args, enable_jit=enable_jit, **kwargs)
