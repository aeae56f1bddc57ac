"""Argument forms of Pax v0.2's `pax.haiku` layers that differ from today's spelling.

Pax v0.2 programs call `pax.haiku.batch_norm_2d(num_channels, axis, decay_rate)` and
`pax.haiku.lstm(hidden_dim)`; the helpers here give those forms their v0.2 meaning and refuse,
with the new spelling, the forms whose meaning changed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from pax._src.arguments import CHANNELS_FIRST, CHANNELS_LAST
from pax._src.arguments import data_format as parse_data_format

F = TypeVar("F", bound=Callable[..., Any])

_CHANNEL_AXES = {-1: CHANNELS_LAST, 3: CHANNELS_LAST, 1: CHANNELS_FIRST, -3: CHANNELS_FIRST}


def channel_axis_format(fn: str, axis: Any, data_format: Any) -> str:
    """The `data_format` of a 4-D normalization from its channel `axis` (Pax v0.2's argument).

    Each of `axis` (-1) and `data_format` (``"channels_last"``) at its default leaves the choice
    to the other; two choices must agree.

    Example:
      >>> channel_axis_format("pax.haiku.batch_norm_2d", 1, "channels_last")
      'channels_first'
    """
    if isinstance(axis, bool) or not isinstance(axis, int) or axis not in _CHANNEL_AXES:
        raise ValueError(
            f"{fn}: axis must be the channel axis of a 4-D input, -1 for (N, H, W, C) or 1 for "
            f"(N, C, H, W), got {axis!r}. As in Pax v0.2, the arguments after the channel count "
            f"are (axis, decay, cross_replica_axis); the others are keyword-only. Fix: "
            f"{fn}(in_dim, -1, 0.99) or {fn}(in_dim, create_scale=..., create_offset=...)."
        )
    from_axis = _CHANNEL_AXES[axis]
    parsed = parse_data_format(fn, data_format, 2)
    if axis == -1 or data_format == CHANNELS_LAST:  # the defaults: the other one decides
        return parsed if axis == -1 else from_axis
    if parsed != from_axis:
        raise ValueError(
            f"{fn}: axis={axis} ({from_axis}) and data_format={data_format!r} disagree. Fix: "
            f"give one of them, e.g. {fn}(in_dim, data_format={parsed!r})."
        )
    return parsed


def hidden_dim_first(fn: str) -> Callable[[F], F]:
    """Refuses ``fn(in_dim, hidden_dim)`` (the form before Pax v0.2's was restored).

    The recurrent cores take Pax v0.2's ``fn(hidden_dim)`` with the input size keyword-only,
    ``in_dim=`` (default: `hidden_dim`); two positional sizes would otherwise fail with Python's
    bare arity error.
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > 1:
                shown = ", ".join(repr(a) for a in args)
                raise TypeError(
                    f"{fn}({shown}): {fn} takes one positional argument, hidden_dim (Pax v0.2's "
                    f"form); the input size is keyword-only and defaults to hidden_dim. Fix: "
                    f"{fn}({args[1]!r}, in_dim={args[0]!r}) for in_dim={args[0]!r}, "
                    f"hidden_dim={args[1]!r}."
                )
            return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
