"""The Haiku integration. Importing it registers `hk_init` as the core's lazy initializer."""

from pax._src.core import lazy
from pax._src.haiku.init import hk_init

lazy.set_initializer(hk_init)
