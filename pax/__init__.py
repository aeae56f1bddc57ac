"""pax: a stateful pytree module library for JAX.

`pax.haiku` and `pax.from_haiku` are loaded on first use, so ``import pax`` does not import
Haiku.
"""

from typing import TYPE_CHECKING, Any

from pax import distributed as distributed
from pax import initializers as initializers
from pax import metrics as metrics
from pax import mixed_precision as mixed_precision
from pax import nets as nets
from pax import nn as nn
from pax import optim as optim
from pax import sharding as sharding
from pax import utils as utils
from pax._src.checkpoint import CheckpointManager as CheckpointManager
from pax._src.checkpoint import LoadReport as LoadReport
from pax._src.checkpoint import load as load
from pax._src.checkpoint import save as save
from pax._src.checkpoint.state_dict import load_state_dict as load_state_dict
from pax._src.checkpoint.state_dict import state_dict as state_dict
from pax._src.core.module import Module as Module
from pax._src.core.registry import Kind as Kind
from pax._src.core.rng import next_rng_key as next_rng_key
from pax._src.core.rng import seed_rng_key as seed_rng_key
from pax._src.core.sharing import check as check
from pax._src.core.sharing import find_shared as find_shared
from pax._src.core.tracing import discarding as discard_state_changes
from pax._src.errors import CheckpointError as CheckpointError
from pax._src.errors import CheckpointMismatchError as CheckpointMismatchError
from pax._src.errors import SharedObjectError as SharedObjectError
from pax._src.errors import StructureChangedError as StructureChangedError
from pax._src.nn.unroll import dynamic_unroll as dynamic_unroll
from pax._src.optim.base import Optimizer as Optimizer

if TYPE_CHECKING:
    from pax import haiku as haiku
    from pax._src.haiku.module import from_haiku as from_haiku

__version__ = "0.1.0"

_LAZY = ("haiku", "from_haiku")


def __getattr__(name: str) -> Any:
    """Loads the Haiku integration on first use of `pax.haiku` or `pax.from_haiku`."""
    if name == "haiku":
        import pax.haiku

        return pax.haiku
    if name == "from_haiku":
        from pax.haiku import from_haiku

        return from_haiku
    raise AttributeError(f"module 'pax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatchError",
    "Kind",
    "LoadReport",
    "Module",
    "Optimizer",
    "SharedObjectError",
    "StructureChangedError",
    "check",
    "discard_state_changes",
    "distributed",
    "dynamic_unroll",
    "find_shared",
    "from_haiku",
    "haiku",
    "initializers",
    "load",
    "load_state_dict",
    "metrics",
    "mixed_precision",
    "nets",
    "next_rng_key",
    "nn",
    "optim",
    "save",
    "seed_rng_key",
    "sharding",
    "state_dict",
    "utils",
]
