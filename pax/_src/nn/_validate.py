"""Argument parsing of the pax.nn layers: `pax._src.arguments`, with pax.nn's public names.

The parsers live in `pax._src.arguments`, shared with `pax.haiku`; they are re-exported here so
the layers keep writing ``v.positive_int(...)``. The deprecation helpers of
`pax._src.arguments.compat` are bound to the ``pax.nn`` namespace: a renamed keyword of `Conv2D`
warns as ``pax.nn.Conv2D``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pax._src import arguments
from pax._src.arguments import CHANNELS_FIRST as CHANNELS_FIRST
from pax._src.arguments import CHANNELS_LAST as CHANNELS_LAST
from pax._src.arguments import F as F
from pax._src.arguments import boolean as boolean
from pax._src.arguments import check_last_dim as check_last_dim
from pax._src.arguments import compat
from pax._src.arguments import float_dtype as float_dtype
from pax._src.arguments import int_tuple as int_tuple
from pax._src.arguments import legacy_spatial_axes as legacy_spatial_axes
from pax._src.arguments import padding_arg as padding_arg
from pax._src.arguments import positive_float as positive_float
from pax._src.arguments import positive_int as positive_int
from pax._src.arguments import rate_in_unit_interval as rate_in_unit_interval
from pax._src.arguments import replicate as replicate

NAMESPACE = "pax.nn"


def warn_deprecated(owner: str, old: str, new: str) -> None:
    """Emits ``pax.nn.<owner>: `old` is deprecated, use `new`.`` at the user's call."""
    compat.warn_deprecated(f"{NAMESPACE}.{owner}", old, new)


def renamed_kwargs(**renamed: str) -> Callable[[F], F]:
    """`compat.renamed_kwargs` for a pax.nn layer or function (warns as ``pax.nn.<name>``)."""
    return compat.renamed_kwargs(NAMESPACE, **renamed)


class RenamedAttribute(compat.RenamedAttribute):
    """``old = RenamedAttribute("new")`` on a pax.nn layer: reading it warns and forwards."""

    def __init__(self, new: str) -> None:
        super().__init__(NAMESPACE, new)


def data_format(cls: str, value: Any, num_spatial: int | None = None, also: str = "") -> str:
    """`arguments.data_format` for the pax.nn layer `cls` (warns as ``pax.nn.<cls>``)."""
    return arguments.data_format(cls, value, num_spatial, also, owner=f"{NAMESPACE}.{cls}")
