"""The package's one set of argument parsers and its one renaming rule (pax.nn and pax.haiku).

Every parser takes the name to show in its errors first (``"Conv2D"``,
``"pax.haiku.conv_2d"``), then the argument's name and value, and raises an error naming the
layer or function, the argument, what was wrong and what to pass instead. Renamed arguments
keep working for one release through `renamed_kwargs` (keywords) and `RenamedAttribute`
(stored attributes), with a `DeprecationWarning` naming the new spelling.

This is a base module: it imports nothing of pax but the other base modules.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TypeVar

import jax.numpy as jnp
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"

# The layout strings accepted before the one vocabulary: spelling -> (new value, spatial axes).
_LEGACY_FORMATS: dict[Any, tuple[str, int | None]] = {
    None: (CHANNELS_LAST, None),
    "NC": (CHANNELS_FIRST, 0),
    "NWC": (CHANNELS_LAST, 1),
    "NCW": (CHANNELS_FIRST, 1),
    "NHWC": (CHANNELS_LAST, 2),
    "NCHW": (CHANNELS_FIRST, 2),
    "NDHWC": (CHANNELS_LAST, 3),
    "NCDHW": (CHANNELS_FIRST, 3),
}


# --- deprecations ------------------------------------------------------------------------------


def _caller_stacklevel() -> int:
    """The `stacklevel` of the first frame outside pax (the user's call)."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "pax":
        level, frame = level + 1, frame.f_back
    return level


def warn_deprecated(owner: str, old: str, new: str) -> None:
    """Emits ``<owner>: `old` is deprecated, use `new`.`` at the user's call.

    `owner` is the public name of the layer or function, e.g. ``"pax.nn.Conv2D"``.
    """
    warnings.warn(
        f"{owner}: `{old}` is deprecated, use `{new}`. The old spelling will be removed "
        "in the next release.",
        DeprecationWarning,
        stacklevel=_caller_stacklevel(),
    )


def renamed_kwargs(namespace: str, /, **renamed: str) -> Callable[[F], F]:
    """Decorator accepting the old keyword names ``old="new"`` of a function or ``__init__``.

    An old keyword is passed on under its new name with a `DeprecationWarning` naming
    ``<namespace>.<function or class>``; the old and the new name together raise a `TypeError`.
    The signature (``inspect.signature``, IDEs) shows the new names only.

    Raises:
      TypeError: at decoration when a new name is not a parameter or an old one still is.

    Example:
      >>> @renamed_kwargs("pax.nn", strides="stride")
      ... def pool(x, stride=1):
      ...     return x * stride
      >>> pool(2, stride=3)
      6
    """

    def decorate(fn: F) -> F:
        params = inspect.signature(fn).parameters
        positions = {}
        for old, new in renamed.items():
            if new not in params or old in params:
                raise TypeError(
                    f"renamed_kwargs: {fn.__qualname__} must have the parameter {new!r} and not "
                    f"{old!r}."
                )
            if params[new].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                positions[new] = list(params).index(new)
        is_init = fn.__name__ == "__init__"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not renamed.keys().isdisjoint(kwargs):
                owner = f"{namespace}.{type(args[0]).__name__ if is_init else fn.__name__}"
                for old, new in renamed.items():
                    if old not in kwargs:
                        continue
                    if new in kwargs or len(args) > positions.get(new, len(args)):
                        raise TypeError(
                            f"{owner}: got both `{old}` (deprecated) and `{new}`; pass only "
                            f"`{new}`."
                        )
                    warn_deprecated(owner, old, new)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class RenamedAttribute:
    """A read-only class attribute ``old = RenamedAttribute(namespace, "new")`` forwarding to
    ``new``.

    Reading it on an instance warns (`DeprecationWarning`, naming
    ``<namespace>.<class>``) and returns the new attribute.
    """

    def __init__(self, namespace: str, new: str) -> None:
        self.namespace = namespace
        self.new = new
        self.old = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.old = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        warn_deprecated(f"{self.namespace}.{type(obj).__name__}", self.old, self.new)
        return getattr(obj, self.new)


# --- numbers and shapes ------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(cls: str, name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Returns `value` as an int, or raises naming `cls` and `name` when it is not an int > 0
    (>= 0 with `allow_zero`).

    Example:
      >>> positive_int("pax.haiku.linear", "in_dim", 0)
      Traceback (most recent call last):
      ValueError: pax.haiku.linear: in_dim must be a positive int, got 0.
    """
    if not _is_int(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "an int >= 0" if allow_zero else "a positive int"
        raise ValueError(f"{cls}: {name} must be {kind}, got {value!r}.")
    return int(value)


def boolean(cls: str, name: str, value: Any) -> bool:
    """Returns `value` as a bool, or raises when it is not a `bool` (a numpy bool is fine).

    Ints, strings and arrays are refused: ``with_bias="no"`` would otherwise be true.

    Example:
      >>> boolean("Linear", "with_bias", "no")
      Traceback (most recent call last):
      TypeError: Linear: with_bias must be a bool (True or False), got 'no' (str). Fix: ...
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(
        f"{cls}: {name} must be a bool (True or False), got {value!r} ({type(value).__name__}). "
        f"Fix: pass {name}=True or {name}=False."
    )


def rate_in_unit_interval(cls: str, name: str, value: Any) -> float:
    """Returns `value` as a float in ``[0, 1)``, or raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{cls}: {name} must be a float in [0, 1), got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{cls}: {name} must be in [0, 1), got {value!r}.")
    return float(value)


def positive_float(cls: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Returns `value` as a float > 0 (or >= 0), or raises."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or float(value) < 0 or (float(value) == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{cls}: {name} must be a number {bound}, got {value!r}.")
    return float(value)


def replicate(cls: str, name: str, value: Any, n: int) -> tuple[int, ...]:
    """Turns an int or a length-`n` sequence of positive ints into a tuple of `n` ints."""
    if _is_int(value):
        values: Sequence[Any] = (value,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n:
        values = value
    else:
        values = (0,)
    if not all(_is_int(v) and v > 0 for v in values):
        raise ValueError(
            f"{cls}: {name} must be a positive int or a sequence of {n} positive ints, "
            f"got {value!r}."
        )
    return tuple(int(v) for v in values)


def int_tuple(cls: str, name: str, value: Any, *, scalar: bool, example: str) -> tuple[int, ...]:
    """An axis argument as a tuple of ints: a sequence of ints, or (with `scalar`) one int.

    With `scalar` the sequence must be non-empty (an axis to act on is required); without it an
    empty sequence is fine (no axis singled out). `example` is a valid value shown in the error.
    """
    if scalar and _is_int(value):
        return (int(value),)
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and (len(value) > 0 or not scalar)
        and all(map(_is_int, value))
    ):
        return tuple(int(a) for a in value)
    kind = "an int or a non-empty sequence of ints" if scalar else "a sequence of ints"
    raise ValueError(f"{cls}: {name} must be {kind}, got {value!r}; e.g. {name}={example}.")


def padding_arg(cls: str, padding: Any, n: int) -> str | tuple[tuple[int, int], ...]:
    """Normalizes a padding argument: "SAME", "VALID", an int, or `n` (low, high) pairs."""
    if isinstance(padding, str):
        upper = padding.upper()
        if upper in ("SAME", "VALID"):
            return upper
    elif _is_int(padding) and padding >= 0:
        return ((int(padding), int(padding)),) * n
    elif isinstance(padding, Sequence) and len(padding) == n:
        pairs = []
        for pair in padding:
            if _is_int(pair) and pair >= 0:
                pairs.append((int(pair), int(pair)))
            elif isinstance(pair, Sequence) and len(pair) == 2 and all(map(_is_int, pair)):
                pairs.append((int(pair[0]), int(pair[1])))
            else:
                break
        else:
            return tuple(pairs)
    example = ", ".join(["(1, 1)"] * n)
    raise ValueError(
        f"{cls}: unknown padding {padding!r}; use 'SAME', 'VALID', a non-negative int, or "
        f"{n} (low, high) pairs such as padding=({example},)."
    )


# --- layouts -----------------------------------------------------------------------------------


def legacy_spatial_axes(value: Any) -> int | None:
    """The number of spatial axes an old layout string such as ``"NWC"`` names, else None."""
    legacy = _LEGACY_FORMATS.get(value) if isinstance(value, str) else None
    return None if legacy is None else legacy[1]


def data_format(
    cls: str,
    value: Any,
    num_spatial: int | None = None,
    also: str = "",
    *,
    owner: str | None = None,
) -> str:
    """The one `data_format` parser: returns ``"channels_last"`` or ``"channels_first"``.

    The old layout strings (``"NWC"``, ``"NCHW"``, ...) are accepted with a
    `DeprecationWarning` from `owner` (the public name; default `cls`) naming the new value (and
    `also`, any other argument the new spelling needs); when the layer knows its number of
    spatial axes (`num_spatial`) the old string must have that many.

    Raises:
      ValueError: for anything else, naming the two accepted values.

    Example:
      >>> data_format("pax.haiku.conv_2d", "channels_first", 2)
      'channels_first'
    """
    if isinstance(value, str) and value in (CHANNELS_LAST, CHANNELS_FIRST):
        return value
    legacy = _LEGACY_FORMATS.get(value) if value is None or isinstance(value, str) else None
    if legacy is not None and (legacy[1] is None or num_spatial in (None, legacy[1])):
        new = f"data_format={legacy[0]!r}{also}"
        warn_deprecated(cls if owner is None else owner, f"data_format={value!r}", new)
        return legacy[0]
    axes = "axis" if num_spatial == 1 else "axes"
    spatial = "" if num_spatial is None else f" for {num_spatial} spatial {axes}"
    raise ValueError(
        f"{cls}: unknown data_format {value!r}{spatial}; use 'channels_last' (channels on the "
        "last axis, the default) or 'channels_first' (channels on axis 1, after the batch axis)."
    )


def check_last_dim(cls: str, x: Any, size: int, what: str = "features") -> None:
    """Raises when `x` has rank 0 or its last axis is not `size`."""
    shape = jnp.shape(x)
    if len(shape) < 1 or shape[-1] != size:
        raise ValueError(
            f"{cls}: expected input of shape (..., {size}) ({what} last), got shape {shape}."
        )


def float_dtype(owner: str, arg: str, value: Any) -> Any:
    """A floating-point dtype (``param_dtype=``), e.g. ``jnp.bfloat16`` or ``"float16"``."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{owner}: {arg} must be a floating-point dtype, got {value!r}. Fix: "
            f"{owner}(..., {arg}=jnp.bfloat16), or jnp.float32 (the default)."
        )
    return dtype
