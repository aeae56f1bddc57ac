"""Argument and input checks shared by the layers (messages name the layer and the fix)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np


def positive_int(cls: str, name: str, value: Any) -> int:
    """Returns `value` as an int, or raises naming `cls.name` when it is not a positive int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{cls}: {name} must be a positive int, got {value!r}.")
    return int(value)


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
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values: Sequence[Any] = (value,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n:
        values = value
    else:
        raise ValueError(
            f"{cls}: {name} must be a positive int or a sequence of {n} positive ints, "
            f"got {value!r}."
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(
                f"{cls}: {name} must be a positive int or a sequence of {n} positive ints, "
                f"got {value!r}."
            )
    return tuple(int(v) for v in values)


_FORMATS = {
    1: ("NWC", "NCW"),
    2: ("NHWC", "NCHW"),
    3: ("NDHWC", "NCDHW"),
}


def channels_last(cls: str, data_format: str, num_spatial: int) -> bool:
    """True for ``N...C`` formats, False for ``NC...``; raises on anything else."""
    last, first = _FORMATS.get(num_spatial, ("N" + "S" * num_spatial + "C", "NC" + "S"))
    if data_format in (last, "channels_last"):
        return True
    if data_format in (first, "channels_first"):
        return False
    raise ValueError(
        f"{cls}: unknown data_format {data_format!r}; use {last!r} (channels last) or "
        f"{first!r} (channels first)."
    )


def padding_arg(cls: str, padding: Any, n: int) -> str | tuple[tuple[int, int], ...]:
    """Normalizes a padding argument: "SAME", "VALID", an int, or `n` (low, high) pairs."""
    if isinstance(padding, str):
        upper = padding.upper()
        if upper in ("SAME", "VALID"):
            return upper
    elif isinstance(padding, (int, np.integer)) and not isinstance(padding, bool) and padding >= 0:
        return ((int(padding), int(padding)),) * n
    elif isinstance(padding, Sequence) and len(padding) == n:
        pairs = []
        for pair in padding:
            if isinstance(pair, (int, np.integer)) and not isinstance(pair, bool) and pair >= 0:
                pairs.append((int(pair), int(pair)))
            elif (
                isinstance(pair, Sequence)
                and len(pair) == 2
                and all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in pair)
            ):
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


def check_last_dim(cls: str, x: Any, size: int, what: str = "features") -> None:
    """Raises when `x` has rank 0 or its last axis is not `size`."""
    shape = jnp.shape(x)
    if len(shape) < 1 or shape[-1] != size:
        raise ValueError(
            f"{cls}: expected input of shape (..., {size}) ({what} last), got shape {shape}."
        )
