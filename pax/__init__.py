"""pax: a stateful pytree module library for JAX."""

from pax import haiku as haiku
from pax import initializers as initializers
from pax import nn as nn
from pax import optim as optim
from pax import utils as utils
from pax._src.checkpoint import CheckpointError as CheckpointError
from pax._src.checkpoint import CheckpointMismatchError as CheckpointMismatchError
from pax._src.checkpoint import LoadReport as LoadReport
from pax._src.checkpoint import load as load
from pax._src.checkpoint import save as save
from pax._src.core.checks import StructureChangedError as StructureChangedError
from pax._src.core.layout import Kind as Kind
from pax._src.core.module import Module as Module
from pax._src.core.rng import next_rng_key as next_rng_key
from pax._src.core.rng import seed_rng_key as seed_rng_key
from pax._src.guards import SharedObjectError as SharedObjectError
from pax._src.guards import check as check
from pax._src.guards import find_shared as find_shared
from pax._src.haiku.module import from_haiku as from_haiku
from pax._src.nn.recurrent import dynamic_unroll as dynamic_unroll
from pax._src.optim.base import Optimizer as Optimizer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "Kind",
    "LoadReport",
    "Module",
    "Optimizer",
    "SharedObjectError",
    "StructureChangedError",
    "check",
    "dynamic_unroll",
    "find_shared",
    "from_haiku",
    "haiku",
    "initializers",
    "load",
    "next_rng_key",
    "nn",
    "optim",
    "save",
    "seed_rng_key",
    "utils",
]
