"""Neural network layers, in pure JAX."""

from pax._src.nn.linear import Identity as Identity
from pax._src.nn.linear import Lambda as Lambda
from pax._src.nn.linear import Linear as Linear
from pax._src.nn.sequential import MLP as MLP
from pax._src.nn.sequential import Sequential as Sequential

__all__ = ["MLP", "Identity", "Lambda", "Linear", "Sequential"]
