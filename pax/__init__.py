"""pax: a stateful pytree module library for JAX."""

from pax import initializers as initializers
from pax import nn as nn
from pax import utils as utils
from pax._src.core.checks import StructureChangedError as StructureChangedError
from pax._src.core.layout import Kind as Kind
from pax._src.core.module import Module as Module
from pax._src.core.rng import next_rng_key as next_rng_key
from pax._src.core.rng import seed_rng_key as seed_rng_key

__version__ = "0.1.0"

__all__ = [
    "Kind",
    "Module",
    "StructureChangedError",
    "initializers",
    "next_rng_key",
    "nn",
    "seed_rng_key",
    "utils",
]
