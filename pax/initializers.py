"""Parameter initializers, ``init(key, shape, dtype) -> array``.

Every layer also takes Haiku's initializers (``hk.initializers.TruncatedNormal(0.1)``) and
functions ``init(shape, dtype)``; `from_haiku_initializer` converts one for a direct call.
"""

from pax._src.nn.initializer_forms import from_haiku_initializer as from_haiku_initializer
from pax._src.nn.initializers import Initializer as Initializer
from pax._src.nn.initializers import constant as constant
from pax._src.nn.initializers import glorot_normal as glorot_normal
from pax._src.nn.initializers import glorot_uniform as glorot_uniform
from pax._src.nn.initializers import he_normal as he_normal
from pax._src.nn.initializers import he_uniform as he_uniform
from pax._src.nn.initializers import identity as identity
from pax._src.nn.initializers import lecun_normal as lecun_normal
from pax._src.nn.initializers import ones as ones
from pax._src.nn.initializers import orthogonal as orthogonal
from pax._src.nn.initializers import random_normal as random_normal
from pax._src.nn.initializers import random_uniform as random_uniform
from pax._src.nn.initializers import truncated_normal as truncated_normal
from pax._src.nn.initializers import uniform_scaling as uniform_scaling
from pax._src.nn.initializers import variance_scaling as variance_scaling
from pax._src.nn.initializers import zeros as zeros

__all__ = [
    "Initializer",
    "constant",
    "from_haiku_initializer",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "identity",
    "lecun_normal",
    "ones",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "uniform_scaling",
    "variance_scaling",
    "zeros",
]
