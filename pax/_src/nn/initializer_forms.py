"""The initializer forms a layer accepts, and `resolve`, which turns each into pax's form.

pax calls initializers as ``init(key, shape, dtype) -> array`` (`pax.initializers`,
`jax.nn.initializers`). Haiku and Pax v0.2 call them as ``init(shape, dtype)``: Haiku's
initializer objects (``hk.initializers.TruncatedNormal(0.1)``) and plain functions of that form
draw their randomness from ``hk.next_rng_key()``. `resolve` runs such an initializer inside a
Haiku transform keyed by the key pax gives it, so it draws exactly what a Haiku program
initialized with that key draws for its first parameter (Haiku's first ``hk.next_rng_key()`` of a
transform keyed by ``key`` is ``jax.random.split(key)[1]``).

This file imports no Haiku: the Haiku side (`pax/_src/haiku/compat_init.py`) registers the
adapter with `register_haiku_adapter` when it is imported. When a layer meets an initializer of
Haiku's form before that, `resolve` loads that file by name (as ``pax.haiku`` is loaded on first
use); without Haiku installed, a ``(shape, dtype)`` function cannot draw from Haiku and is called
as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax

from pax._src.arguments import float_dtype
from pax._src.describe import describe, is_array_like

Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]
HaikuAdapter = Callable[[Callable[..., Any], str], Initializer]

_ADAPTER: list[HaikuAdapter] = []
_HAIKU_SIDE = "pax._src.haiku.compat_init"
_KEY_NAMES = ("key", "rng", "rng_key", "prng_key")
_FACTORIES = (
    "constant",
    "truncated_normal",
    "random_normal",
    "random_uniform",
    "variance_scaling",
    "glorot_uniform",
    "glorot_normal",
    "lecun_normal",
    "he_normal",
    "he_uniform",
    "uniform_scaling",
    "identity",
    "orthogonal",
)

_FORMS = (
    "an initializer init(key, shape, dtype) -> array (pax.initializers.*, "
    "jax.nn.initializers.*), a Haiku initializer (hk.initializers.TruncatedNormal(0.1)) or a "
    "function init(shape, dtype) -> array"
)


def register_haiku_adapter(adapter: HaikuAdapter) -> None:
    """Installs the function that turns a Haiku-form initializer into pax's form.

    ``adapter(init, where)`` returns the adapted initializer; `where` (``"Linear: w_init"``)
    names the argument in its errors. Called once by `pax/_src/haiku/compat_init.py` when it is
    imported; a second call replaces the first.
    """
    _ADAPTER[:] = [adapter]


def check_result(where: str, value: Any, shape: Sequence[int]) -> jax.Array:
    """`value` if it is an array of `shape`, else a TypeError naming `where`."""
    if getattr(value, "shape", None) != tuple(shape):
        raise TypeError(
            f"{where} returned {describe(value)} for the shape {tuple(shape)}; an initializer "
            f"init(shape, dtype) must return an array of that shape. Fix: pass an initializer "
            "instance, not its factory (e.g. hk.initializers.TruncatedNormal(0.1) or "
            "pax.initializers.truncated_normal(0.1))."
        )
    return value


def _haiku_form(init: Callable[..., Any], where: str) -> Initializer:
    """`init(shape, dtype)` as ``(key, shape, dtype) -> array`` (drawing from Haiku with `key`)."""
    if not _ADAPTER and importlib.util.find_spec("haiku") is not None:
        # The Haiku integration is a plugin of this layer: loaded by name, it registers itself.
        importlib.import_module(_HAIKU_SIDE)
    if _ADAPTER:
        return _ADAPTER[0](init, where)

    def shape_dtype_init(key: jax.Array, shape: Sequence[int], dtype: Any = None) -> jax.Array:
        del key  # without Haiku there is no hk.next_rng_key() for `init` to draw from
        return check_result(where, init(tuple(shape), dtype), shape)

    return shape_dtype_init


def _error(owner: str, arg: str, init: Any, why: str) -> TypeError:
    shown = describe(init) if is_array_like(init) else repr(init)[:80]
    return TypeError(
        f"{owner}: {arg}={shown} {why}. {arg} must be {_FORMS}. "
        f"Fix: e.g. {owner}(..., {arg}=pax.initializers.truncated_normal(0.1))."
    )


def resolve(owner: str, arg: str, init: Any) -> Initializer | None:
    """`init` as a pax initializer ``(key, shape, dtype) -> array``, or None for None.

    A pax-form callable (three positional arguments, the first not named ``shape``) is returned
    unchanged. A Haiku initializer object, or a function whose positional arguments are
    ``(shape, dtype)`` (two of them, or a first one named ``shape``), is adapted: it runs inside a
    Haiku transform keyed by the key pax passes, so its ``hk.next_rng_key()`` calls work.

    Args:
      owner: the class name of the layer, for messages (``"Linear"``).
      arg: the argument name, for messages (``"w_init"``).
      init: the initializer given by the user, or None.

    Returns:
      None for None, else an initializer of pax's form.

    Raises:
      TypeError: naming `owner` and `arg`, for anything that is not an initializer of one of
        these forms (a class, an uncalled factory such as ``pax.initializers.truncated_normal``,
        a function of another arity, an array, ...).

    Example:
      >>> import jax, jax.numpy as jnp, pax
      >>> from pax._src.nn.initializers import resolve
      >>> resolve("Linear", "w_init", pax.initializers.zeros) is pax.initializers.zeros
      True
      >>> ones = resolve("Linear", "b_init", lambda shape, dtype: jnp.ones(shape, dtype))
      >>> ones(jax.random.PRNGKey(0), (2,), jnp.float32).tolist()
      [1.0, 1.0]
    """
    if init is None:
        return None
    return init if takes_key_first(owner, arg, init) else _haiku_form(init, f"{owner}: {arg}")


def takes_key_first(owner: str, arg: str, init: Any) -> bool:
    """True for pax's form ``init(key, shape, dtype)``, False for Haiku's ``init(shape, dtype)``.

    The rules and errors of `resolve` (which see); `pax.haiku` layers use it to adapt the other
    way.

    Raises:
      TypeError: naming `owner` and `arg`, for anything that is neither.

    Example:
      >>> import haiku as hk, pax
      >>> takes_key_first("Linear", "w_init", pax.initializers.zeros)
      True
      >>> takes_key_first("Linear", "w_init", hk.initializers.TruncatedNormal(0.1))
      False
    """
    if isinstance(init, type):
        raise _error(owner, arg, init, "is a class, not an initializer; create an instance")
    if not callable(init):
        raise _error(owner, arg, init, "is not callable")
    if type(init).__module__.split(".")[0] == "haiku":
        return False
    module, name = getattr(init, "__module__", None), getattr(init, "__name__", None)
    if module == "pax._src.nn.initializers" and name in _FACTORIES:
        raise _error(owner, arg, init, f"is a factory; call it: pax.initializers.{name}(...)")
    try:
        signature = inspect.signature(init)
    except (TypeError, ValueError):
        raise _error(owner, arg, init, "has no signature to tell its form from") from None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = signature.parameters.values()
    positional = [p for p in params if p.kind in kinds]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    if positional and positional[0].name == "shape" and len(required) <= 2:
        return False
    if len(positional) >= 3 and len(required) <= 3:
        return True
    if len(positional) == 2 and positional[0].name not in _KEY_NAMES:
        return False
    names = ", ".join(p.name for p in positional)
    raise _error(owner, arg, init, f"takes the positional arguments ({names})")


def from_haiku_initializer(init: Any) -> Initializer:
    """A Haiku initializer (``init(shape, dtype)``) as a pax one, ``init(key, shape, dtype)``.

    Layers do this themselves (``w_init=hk.initializers.TruncatedNormal(0.1)`` works); this is
    for calling one directly, as Pax v0.2's function of this name. The Haiku initializer runs
    inside a Haiku transform keyed by the given key: it draws what a Haiku program initialized
    with that key draws for its first parameter. A pax-form initializer is returned unchanged.

    Args:
      init: a Haiku initializer object or a function ``init(shape, dtype) -> array``.

    Raises:
      TypeError: for anything that is not an initializer (see `resolve`).

    Example:
      >>> import haiku as hk, jax, pax
      >>> init = pax.initializers.from_haiku_initializer(hk.initializers.Constant(2.0))
      >>> init(jax.random.PRNGKey(0), (2,), "float32").tolist()
      [2.0, 2.0]
    """
    resolved = resolve("pax.initializers.from_haiku_initializer", "init", init)
    if resolved is None:
        raise _error("pax.initializers.from_haiku_initializer", "init", init, "is None")
    return resolved


def layer_init_args(owner: str, param_dtype: Any, **inits: Any) -> dict[str, Any]:
    """A layer's initialization arguments: every initializer in pax's form (`resolve`, None
    kept for the layer's default) and ``dtype``, the checked ``param_dtype``.

    Example:
      >>> import jax.numpy as jnp
      >>> from pax._src.nn.initializers import layer_init_args
      >>> sorted(layer_init_args("Linear", jnp.bfloat16, w_init=None).items())
      [('dtype', dtype(bfloat16)), ('w_init', None)]
    """
    args = {name: resolve(owner, name, init) for name, init in inits.items()}
    args["dtype"] = float_dtype(owner, "param_dtype", param_dtype)
    return args
