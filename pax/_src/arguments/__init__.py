"""The package's one set of argument parsers (pax.nn and pax.haiku).

Every parser takes the name to show in its errors first (``"Conv2D"``,
``"pax.haiku.conv_2d"``), then the argument's name and value, and raises an error naming the
layer or function, the argument, what was wrong and what to pass instead. The deprecated
spellings they still accept, and the renaming rule (`renamed_kwargs`, `RenamedAttribute`), live
in `pax._src.arguments.compat`; they are re-exported here.

This is a base module: it imports nothing of pax but the other base modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pax._src.arguments.compat import CHANNELS_FIRST as CHANNELS_FIRST
from pax._src.arguments.compat import CHANNELS_LAST as CHANNELS_LAST
from pax._src.arguments.compat import F as F
from pax._src.arguments.compat import RenamedAttribute as RenamedAttribute
from pax._src.arguments.compat import legacy_spatial_axes as legacy_spatial_axes
from pax._src.arguments.compat import parse_data_format
from pax._src.arguments.compat import renamed_kwargs as renamed_kwargs
from pax._src.arguments.compat import warn_deprecated as warn_deprecated

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
    return parse_data_format(cls, value, num_spatial, cls if owner is None else owner, also)


def check_last_dim(cls: str, x: Any, size: int, what: str = "features") -> None:
    """Raises when `x` has rank 0 or its last axis is not `size`."""
    shape = jnp.shape(x)
    if len(shape) < 1 or shape[-1] != size:
        raise ValueError(
            f"{cls}: expected input of shape (..., {size}) ({what} last), got shape {shape}."
        )


def float_dtype(owner: str, arg: str, value: Any) -> Any:
    """A floating-point dtype (``param_dtype=``), e.g. ``jnp.bfloat16`` or ``"float16"``."""
    try:  # None (numpy would read float64) and arrays (jnp.dtype reads their dtype) are not dtypes
        array = isinstance(value, (np.ndarray, np.generic, jax.Array))
        dtype = None if value is None or array else jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{owner}: {arg} must be a floating-point dtype, got {value!r}. Fix: "
            f"{owner}(..., {arg}=jnp.bfloat16), or jnp.float32 (the default)."
        )
    return dtype
