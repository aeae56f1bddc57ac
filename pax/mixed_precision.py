"""Mixed precision: `jmp` policies on modules (see README, "Mixed precision").

`pax.Module.mixed_precision(policy)` wraps one module; `apply_policy` gives policies to the
submodules of a model by class or key path. Loss scaling for float16 is
`pax.optim.with_loss_scale`.
"""

from pax._src.core.precision import apply_policy as apply_policy
from pax._src.core.precision import is_mixed_precision as is_mixed_precision

__all__ = ["apply_policy", "is_mixed_precision"]
