"""Optimizers: `pax.Optimizer` subclasses, optax transforms as optimizers, ready-made ones."""

from pax._src.optim.aliases import adam as adam
from pax._src.optim.aliases import adamw as adamw
from pax._src.optim.aliases import by_key_path as by_key_path
from pax._src.optim.aliases import sgd as sgd
from pax._src.optim.base import Optimizer as Optimizer
from pax._src.optim.key_path_dict import KeyPathDict as KeyPathDict
from pax._src.optim.loss_scale import LossScaledOptimizer as LossScaledOptimizer
from pax._src.optim.loss_scale import with_loss_scale as with_loss_scale
from pax._src.optim.optax_wrapper import OptaxBuilder as OptaxBuilder
from pax._src.optim.optax_wrapper import OptaxOptimizer as OptaxOptimizer
from pax._src.optim.optax_wrapper import from_optax as from_optax

__all__ = [
    "KeyPathDict",
    "LossScaledOptimizer",
    "OptaxBuilder",
    "OptaxOptimizer",
    "Optimizer",
    "adam",
    "adamw",
    "by_key_path",
    "from_optax",
    "sgd",
    "with_loss_scale",
]
