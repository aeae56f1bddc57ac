"""The static configuration of a wrapped Haiku module (hashable, compared by content).

A `HaikuConfig` is the Haiku class plus its constructor arguments. It is a static attribute of
`HaikuModule`, so it is part of the treedef: two modules built from the same class and the same
arguments must compare equal (and hash equally) even when the arguments are unhashable values
such as lists or arrays, or Haiku initializer objects built twice.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any

import haiku as hk
import jax
import numpy as np

from pax._src.describe import describe

_MAX_DEPTH = 32
_MAX_CONTENT_SIZE = 4096  # bigger arrays (e.g. an embedding_matrix) compare by identity


class _ByIdentity:
    """An unhashable value compared by identity (and kept alive)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is _ByIdentity and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)


# `object.__eq__`, typed loosely: compared by identity with a class's inherited `__eq__`.
_OBJECT_EQ: Any = object.__eq__


def _compare_by_content(x: Any) -> bool:
    """Haiku's own objects (initializers, ...) with the default identity `__eq__`."""
    cls = type(x)
    return (
        cls.__module__.split(".")[0] == "haiku"
        and cls.__eq__ is _OBJECT_EQ
        and hasattr(x, "__dict__")
    )


def freeze(x: Any, depth: int = 0) -> Any:
    """Returns a hashable snapshot of `x` that compares equal for equal content.

    Containers and small arrays are compared by content (arrays of more than 4096 elements,
    such as a pretrained ``embedding_matrix``, by identity), Haiku objects (such as
    ``hk.initializers.VarianceScaling(2.0)``) by type and attributes, `functools.partial` by
    function and arguments; other hashable values as they are, unhashable ones by identity.
    """
    if depth > _MAX_DEPTH:
        return _ByIdentity(x)
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes, type)):
        return (type(x), x)
    if isinstance(x, (list, tuple)):
        return (type(x), tuple(freeze(v, depth + 1) for v in x))
    if isinstance(x, dict):
        items = [(repr(k), freeze(k, depth + 1), freeze(v, depth + 1)) for k, v in x.items()]
        return ("dict", tuple(sorted(items, key=lambda item: item[0])))
    if isinstance(x, (set, frozenset)):
        return ("set", frozenset(freeze(v, depth + 1) for v in x))
    if isinstance(x, jax.core.Tracer):
        raise TypeError(
            "pax.from_haiku: a constructor argument is a traced value (a jax.jit / jax.grad "
            "tracer); constructor arguments are static configuration and must be concrete. Fix: "
            "build the module outside the transformed function."
        )
    if isinstance(x, (np.ndarray, np.generic, jax.Array)):
        if np.size(x) > _MAX_CONTENT_SIZE:
            return _ByIdentity(x)
        a = np.asarray(x)
        return ("array", a.shape, str(a.dtype), a.tobytes())
    if isinstance(x, functools.partial):
        return (
            "partial",
            freeze(x.func, depth + 1),
            freeze(x.args, depth + 1),
            freeze(x.keywords, depth + 1),
        )
    if _compare_by_content(x):
        return ("object", type(x), freeze(vars(x), depth + 1))
    try:
        hash(x)
    except TypeError:
        return _ByIdentity(x)
    return x


def haiku_class_name(hk_cls: type) -> str:
    """``hk.Linear``, ``hk.nets.MLP``, or ``module.QualName`` for other classes."""
    name = hk_cls.__name__
    if getattr(hk, name, None) is hk_cls:
        return f"hk.{name}"
    if getattr(hk.nets, name, None) is hk_cls:
        return f"hk.nets.{name}"
    return f"{hk_cls.__module__}.{hk_cls.__qualname__}"


def _signature(hk_cls: type) -> inspect.Signature | None:
    try:
        return inspect.signature(hk_cls)
    except (TypeError, ValueError):
        return None


def _bind_problem(sig: inspect.Signature, kwargs: dict, err: TypeError) -> str:
    """Names unknown keyword arguments first (with the closest real name), else `err`."""
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return str(err)
    unknown = [k for k in kwargs if k not in params]
    if not unknown:
        return str(err)
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, list(params), n=1)
        hints.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
    return f"unknown argument{'s' if len(hints) > 1 else ''} {', '.join(hints)}"


class HaikuConfig:
    """A Haiku class and its constructor arguments; hashable, compared by content.

    Arguments are bound to the class's signature, and compared with defaults applied, so
    ``hk.Linear(3)``, ``hk.Linear(output_size=3)`` and ``hk.Linear(3, with_bias=True)`` give
    equal configurations. Pickling keeps only the class and the arguments (the hash is
    recomputed, as string hashes differ between processes).

    Attributes:
      hk_cls: the Haiku module class.
      args: positional arguments for the constructor.
      kwargs: keyword arguments for the constructor.
      given: the names of the arguments the user passed (shown by `repr`).

    Example:
      >>> import haiku as hk, pax
      >>> a = pax.haiku.HaikuConfig(hk.nets.MLP, ([8, 2],))
      >>> a
      hk.nets.MLP(output_sizes=[8, 2])
      >>> a == pax.haiku.HaikuConfig(hk.nets.MLP, (), {"output_sizes": [8, 2], "with_bias": True})
      True
      >>> a == a.replace(activate_final=True)
      False
    """

    __slots__ = ("_hash", "_key", "args", "given", "hk_cls", "kwargs")

    def __init__(self, hk_cls: type, args: tuple = (), kwargs: dict | None = None) -> None:
        kwargs = dict(kwargs or {})
        sig = _signature(hk_cls)
        if sig is None:
            given = tuple(f"arg{i}" for i in range(len(args))) + tuple(kwargs)
            key_items = tuple(enumerate(args)) + tuple(sorted(kwargs.items()))
        else:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as err:
                name = haiku_class_name(hk_cls)
                raise TypeError(
                    f"pax.from_haiku({name}): the arguments do not fit {name}: "
                    f"{_bind_problem(sig, kwargs, err)}. Fix: pass what {name} takes: "
                    f"{name}{sig}."
                ) from None
            given = tuple(bound.arguments)
            args, kwargs = tuple(bound.args), dict(bound.kwargs)
            bound.apply_defaults()  # equality counts defaults; the constructor gets what was given
            key_items = tuple(sorted(bound.arguments.items()))
        self.hk_cls = hk_cls
        self.args = tuple(args)
        self.kwargs = kwargs
        self.given = given
        self._key = (hk_cls, tuple((name, freeze(value)) for name, value in key_items))
        self._hash = hash(self._key)

    def __reduce__(self) -> tuple:
        return (HaikuConfig, (self.hk_cls, self.args, self.kwargs))

    def build(self) -> hk.Module:
        """Constructs the Haiku module (only inside `hk.transform`)."""
        return self.hk_cls(*self.args, **self.kwargs)

    def arguments(self) -> dict[str, Any]:
        """All constructor arguments by name (defaults included)."""
        sig = _signature(self.hk_cls)
        if sig is None:
            return {**{f"arg{i}": a for i, a in enumerate(self.args)}, **self.kwargs}
        bound = sig.bind(*self.args, **self.kwargs)
        return dict(bound.arguments)

    def replace(self, **changes: Any) -> HaikuConfig:
        """Returns a configuration with some (named) arguments changed."""
        sig = _signature(self.hk_cls)
        if sig is None:
            return HaikuConfig(self.hk_cls, self.args, {**self.kwargs, **changes})
        bound = sig.bind(*self.args, **self.kwargs)
        bound.arguments.update(changes)
        return HaikuConfig(self.hk_cls, tuple(bound.args), dict(bound.kwargs))

    def __eq__(self, other: object) -> bool:
        return type(other) is HaikuConfig and self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        arguments = self.arguments()
        shown = ", ".join(f"{k}={_short(arguments[k])}" for k in self.given if k in arguments)
        return f"{haiku_class_name(self.hk_cls)}({shown})"


def _short(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return describe(value)
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


@functools.lru_cache(maxsize=4096)
def transformed(config: HaikuConfig, method: str) -> hk.TransformedWithState:
    """The cached ``hk.transform_with_state`` of calling `method` of the configured module."""

    def fn(*args: Any, **kwargs: Any) -> Any:
        module = config.build()
        return getattr(module, method)(*args, **kwargs)

    return hk.transform_with_state(fn)


@functools.lru_cache(maxsize=4096)
def module_name(config: HaikuConfig) -> str:
    """The name Haiku gives the configured module at the top level (e.g. ``"linear"``)."""
    return hk.transform(lambda: config.build().module_name).apply({}, None)
