"""`describe(x)`: the one way pax writes a value in errors, reprs and summaries.

Arrays read ``f32[2,3]`` (short dtype, then the shape), everything else by its type name, so
every message of the package spells a value the same way.
"""

from __future__ import annotations

from typing import Any

_DTYPE_PREFIXES = (
    ("bfloat", "bf"),
    ("float", "f"),
    ("uint", "u"),
    ("int", "i"),
    ("complex", "c"),
)


def short_dtype(dtype: Any) -> str:
    """Returns the short spelling of a dtype: ``f32``, ``bf16``, ``i8``, ``bool``, ``f8_e4m3fn``.

    Example:
      >>> import numpy as np
      >>> short_dtype(np.dtype("float32")), short_dtype(np.dtype("uint8"))
      ('f32', 'u8')
    """
    name = str(dtype)
    for long, short in _DTYPE_PREFIXES:
        if name.startswith(long):
            return short + name[len(long) :]
    return name


def is_array_like(x: Any) -> bool:
    """True for objects with a ``shape`` and a ``dtype`` (jax, numpy arrays, tracers, structs)."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def describe(x: Any) -> str:
    """Describes `x` in one short token: ``f32[2,3]`` for arrays, else the type name.

    Args:
      x: any value.

    Returns:
      ``"None"`` for None, ``"<dtype>[<shape>]"`` for arrays (a scalar is ``f32[]``), the
      class name otherwise.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> describe(jnp.zeros((2, 3))), describe(np.int8(1)), describe("x"), describe(None)
      ('f32[2,3]', 'i8[]', 'str', 'None')
    """
    if x is None:
        return "None"
    if is_array_like(x):
        shape = ",".join(str(d) for d in x.shape)
        return f"{short_dtype(x.dtype)}[{shape}]"
    return type(x).__name__


def listing(items: list[str], limit: int) -> list[str]:
    """The first `limit` of `items`, then ``"... and N more"`` if some were left out.

    Example:
      >>> listing(["a", "b", "c"], 2)
      ['a', 'b', '... and 1 more']
    """
    shown = list(items[:limit])
    if len(items) > limit:
        shown.append(f"... and {len(items) - limit} more")
    return shown
