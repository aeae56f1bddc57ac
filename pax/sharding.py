"""Sharded parameters by key path: ``(pattern, PartitionSpec)`` rules over a named mesh.

``pax.sharding.shard(tree, mesh, rules)`` places a model (and its ``from_optax`` optimizer,
whose moments follow their parameters' key paths) on a `jax.sharding.Mesh`; presets give the
rules of data parallelism, FSDP and tensor parallelism; `init_sharded` builds a model directly
sharded.
"""

from pax._src.sharding.presets import OptionalRule as OptionalRule
from pax._src.sharding.presets import data_parallel_rules as data_parallel_rules
from pax._src.sharding.presets import fsdp_rules as fsdp_rules
from pax._src.sharding.presets import init_sharded as init_sharded
from pax._src.sharding.presets import make_mesh as make_mesh
from pax._src.sharding.presets import shard_batch as shard_batch
from pax._src.sharding.presets import tensor_parallel_rules as tensor_parallel_rules
from pax._src.sharding.rules import shard as shard
from pax._src.sharding.rules import shardings as shardings
from pax._src.sharding.rules import specs as specs

__all__ = [
    "OptionalRule",
    "data_parallel_rules",
    "fsdp_rules",
    "init_sharded",
    "make_mesh",
    "shard",
    "shard_batch",
    "shardings",
    "specs",
    "tensor_parallel_rules",
]
