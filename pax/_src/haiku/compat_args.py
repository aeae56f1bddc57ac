"""Pax v0.2's argument forms of the `pax.haiku` layers: kept in `pax._src.arguments.compat`.

Re-exported for `pax._src.haiku.layers` and `pax._src.haiku.recurrent`, which can import them
from `pax._src.arguments.compat` directly (then this file can go).
"""

from __future__ import annotations

from pax._src.arguments.compat import channel_axis_format as channel_axis_format
from pax._src.arguments.compat import hidden_dim_first as hidden_dim_first
