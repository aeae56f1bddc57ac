"""Parameter initializers, ``init(key, shape, dtype) -> array``."""

from pax._src.nn.initializers import Initializer as Initializer
from pax._src.nn.initializers import constant as constant
from pax._src.nn.initializers import ones as ones
from pax._src.nn.initializers import orthogonal as orthogonal
from pax._src.nn.initializers import random_normal as random_normal
from pax._src.nn.initializers import random_uniform as random_uniform
from pax._src.nn.initializers import truncated_normal as truncated_normal
from pax._src.nn.initializers import variance_scaling as variance_scaling
from pax._src.nn.initializers import zeros as zeros

__all__ = [
    "Initializer",
    "constant",
    "ones",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "variance_scaling",
    "zeros",
]
