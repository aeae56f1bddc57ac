"""The Haiku integration. Importing it registers the `pax.from_haiku` modules as lazy modules."""

from pax._src.core import lazy
from pax._src.haiku.init import HAIKU, hk_init

lazy.register_kind(HAIKU)

__all__ = ["hk_init"]
