"""Ready-made sharding rules (data parallel, FSDP, tensor parallel), sharded initialization and
batch placement.

The rules made from a model match each leaf's key path exactly (anchored at both ends), also
when the model is the first level of a tuple, list or dict: ``shard((model, opt), mesh, rules)``
places ``[0].layers[0].weight`` and the optimizer's moments of ``.layers[0].weight`` alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pax._src.describe import describe
from pax._src.nn.attention import MultiHeadAttention
from pax._src.nn.linear import Linear
from pax._src.nn.sequential import MLP
from pax._src.sharding.rules import (
    Rule,
    Rules,
    check_allow_unused,
    check_mesh,
    rule_keys,
    shardings,
)

T = TypeVar("T")

_ONE_INDEX = r"^(?:\[[^\]]*\])?"  # an optional first index: [0] in (model, opt)


class OptionalRule(tuple[str | re.Pattern, PartitionSpec]):
    """A ``(pattern, spec)`` rule (equal to that tuple) that may place no leaf without an error:
    for rules written for several models (``allow_unused=True`` exempts all rules of a call).

    Example:
      >>> from jax.sharding import PartitionSpec as P
      >>> from pax._src.sharding.presets import OptionalRule
      >>> OptionalRule(r"\\.scale$", P("data")) == (r"\\.scale$", P("data"))
      True
    """

    __slots__ = ()
    allow_unused = True  # read by rules.compile_rules

    def __new__(cls, pattern: str | re.Pattern, spec: PartitionSpec) -> OptionalRule:
        return super().__new__(cls, (pattern, spec))

    def __repr__(self) -> str:
        return f"OptionalRule({self[0]!r}, {self[1]!r})"


def _exact(keys: list[str]) -> str:
    """A pattern matching exactly these key paths, optionally under one container index."""
    return _ONE_INDEX + "(?:" + "|".join(re.escape(k) for k in keys) + ")$"


def _grouped(pairs: list[tuple[str, PartitionSpec]]) -> list[Rule]:
    """One exact-match rule per distinct spec (fewer, faster rules), then the catch-all.

    The rules are `OptionalRule`s: made for one tree, they are applied to others too (the
    optimizer alone, a model without biases), where some legitimately place no leaf.
    """
    groups: dict[PartitionSpec, list[str]] = {}
    for key, spec in pairs:
        groups.setdefault(spec, []).append(key)
    rules: list[Rule] = [OptionalRule(_exact(keys), spec) for spec, keys in groups.items()]
    rules.append((r".*", PartitionSpec()))
    return rules


def make_mesh(
    axis_shapes: Sequence[int], axis_names: Sequence[str], *, devices: Sequence[Any] | None = None
) -> Mesh:
    """A device mesh whose axes are ``Auto``: the compiler chooses how intermediate values are
    split, so layers need no sharding annotations.

    ``jax.make_mesh`` makes ``Explicit`` axes by default: JAX then requires every operation
    whose inputs are split over an axis to state its output sharding, which `pax.nn` layers do
    not, and a matrix product of FSDP or tensor-parallel weights raises a
    ``ShardingTypeError``. Data parallelism works with either.

    Args:
      axis_shapes: the size of each axis; their product is the number of devices used.
      axis_names: the name of each axis, e.g. ``("data", "model")``.
      devices: the devices to use; default ``jax.devices()``.

    Returns:
      ``jax.make_mesh(axis_shapes, axis_names, axis_types=(AxisType.Auto, ...))``.

    Example:
      >>> import pax
      >>> mesh = pax.sharding.make_mesh((1,), ("data",))
      >>> dict(mesh.shape), mesh.axis_types
      ({'data': 1}, (Auto,))
    """
    types = (AxisType.Auto,) * len(axis_shapes)
    return jax.make_mesh(tuple(axis_shapes), tuple(axis_names), types, devices=devices)


def data_parallel_rules() -> list[Rule]:
    """Rules that replicate every leaf: data parallelism (split the batch with `shard_batch`).

    Example:
      >>> import pax
      >>> pax.sharding.data_parallel_rules()
      [('.*', P())]
    """
    return [(r".*", PartitionSpec())]


def _check_axis_name(axis: Any, owner: str) -> str:
    """Returns `axis`, or raises `TypeError` if it is not a non-empty string."""
    if not isinstance(axis, str) or not axis:
        raise TypeError(
            f"pax.sharding.{owner}: axis must be the name of a mesh axis (a str), got "
            f"{axis!r}. Fix: {owner}(..., axis='model'), a name of the mesh's axis_names."
        )
    return axis


def _axis_size(mesh: Mesh, axis: str, owner: str) -> int:
    check_mesh(mesh, owner)
    _check_axis_name(axis, owner)
    if axis not in mesh.shape:
        raise ValueError(
            f"pax.sharding.{owner}: the mesh has no axis {axis!r}; its axes are "
            f"{tuple(mesh.axis_names)}. Fix: pass one of them, e.g. "
            f"{owner}(..., axis={mesh.axis_names[0]!r})."
        )
    return int(mesh.shape[axis])


def _check_auto(mesh: Mesh, axis: str, owner: str) -> None:
    """Raises if `axis` is an Explicit axis, on which pax layers' matrix products fail."""
    if mesh.axis_types[mesh.axis_names.index(axis)] == AxisType.Explicit:
        raise ValueError(
            f"pax.sharding.{owner}: the mesh axis {axis!r} is Explicit (the default of "
            f"jax.make_mesh): JAX would refuse the matrix products of weights split over it, "
            f"since pax layers do not state the sharding of their outputs. Fix: a mesh with Auto "
            f"axes, mesh = pax.sharding.make_mesh({tuple(mesh.axis_sizes)}, "
            f"{tuple(mesh.axis_names)})."
        )


def fsdp_rules(tree: Any, mesh: Mesh, axis: str = "data") -> list[Rule]:
    """Rules for fully sharded data parallelism: each floating-point leaf of `tree` is split
    over `axis` along its largest dimension divisible by the axis size.

    Leaves with no such dimension, and integer leaves and RNG keys, are replicated. The rules
    name each leaf by key path, so make them from the model (or from ``jax.eval_shape`` of
    it): they also place its ``from_optax`` optimizer's moments, matched by their parameter's
    key path. An optimizer that keeps its state as a copy of the model (a ``velocity``
    attribute) has other key paths: make the rules from ``(model, opt)`` then. The batch is
    split over the same axis (`shard_batch`).

    Args:
      tree: the model (or model and optimizer), arrays or `jax.ShapeDtypeStruct` leaves.
      mesh: the mesh.
      axis: the mesh axis to split parameters over.

    Returns:
      A list of ``(pattern, PartitionSpec)`` rules ending with the catch-all ``(".*", P())``.

    Raises:
      ValueError: if the mesh has no axis `axis`, or it is an Explicit axis (see `make_mesh`).
      TypeError: if `mesh` is not a Mesh or `axis` not a str.

    Example:
      >>> import jax, numpy as np, pax
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> net = pax.nn.Linear(3, 8)
      >>> rules = pax.sharding.fsdp_rules(net, mesh)
      >>> pax.sharding.specs(net, mesh, rules).weight
      P(None, 'data')
    """
    size = _axis_size(mesh, axis, "fsdp_rules")
    _check_auto(mesh, axis, "fsdp_rules")
    pairs, seen = [], set()
    for key, _, leaf in rule_keys(tree):
        if key in seen:
            continue
        seen.add(key)
        shape = np.shape(leaf)
        spec = PartitionSpec()
        dtype = getattr(leaf, "dtype", None)
        if shape and dtype is not None and jax.dtypes.issubdtype(dtype, np.floating):
            dims = [d for d, n in enumerate(shape) if n % size == 0]
            if dims:
                dim = max(dims, key=lambda d: shape[d])
                spec = PartitionSpec(*([None] * dim), axis)
        pairs.append((key, spec))
    return _grouped(pairs)


def _layer(prefix: str, layer: Any, column: bool, axis: str) -> list[tuple[str, PartitionSpec]]:
    weight = getattr(layer, "weight", None)
    if weight is not None and np.ndim(weight) != 2:
        raise ValueError(
            f"pax.sharding.tensor_parallel_rules: the Linear at {prefix or 'the root'} has a "
            f"weight {describe(weight)}, not 2-D (a layer of a pax.nn.Stack?). Fix: write its "
            f"rules by hand, e.g. (r'\\.weight$', P(None, None, {axis!r}))."
        )
    if column:  # output features split: no communication until the next (row) layer
        return [
            (f"{prefix}.weight", PartitionSpec(None, axis)),
            (f"{prefix}.bias", PartitionSpec(axis)),
        ]
    return [(f"{prefix}.weight", PartitionSpec(axis, None)), (f"{prefix}.bias", PartitionSpec())]


def tensor_parallel_rules(model: Any, axis: str = "model") -> list[Rule]:
    """Megatron-style tensor-parallel rules for the `pax.nn.Linear`, `pax.nn.MLP` and
    `pax.nn.MultiHeadAttention` layers of `model`.

    In an MLP, layers alternate: the first splits its output features over `axis` (weight
    ``P(None, axis)``, bias ``P(axis)``), the second its input features (weight
    ``P(axis, None)``, bias replicated), so a pair needs one reduction. In attention, the query,
    key and value projections split their heads (choose ``num_heads`` divisible by the axis
    size) and the output projection its input. Any other Linear splits its output features;
    every other leaf is replicated (over a 2-D mesh ``("data", "model")`` parameters are then
    replicated over "data", and the batch is split over it with `shard_batch`). Use a mesh
    with Auto axes (`make_mesh`): on an Explicit axis JAX refuses the split matrix products.

    Args:
      model: the model (arrays or `jax.ShapeDtypeStruct` leaves), or ``(model, opt)`` when
        the optimizer keeps its state as a copy of the model (``from_optax`` moments follow
        the model's rules anyway).
      axis: the mesh axis to split over.

    Returns:
      A list of ``(pattern, PartitionSpec)`` rules ending with the catch-all ``(".*", P())``.

    Raises:
      ValueError: if `model` holds none of these layers, or a Linear's weight is not 2-D.
      TypeError: if `axis` is not a str.

    Example:
      >>> import jax, numpy as np, pax
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("model",))
      >>> mlp = pax.nn.MLP([4, 8, 4])
      >>> s = pax.sharding.specs(mlp, mesh, pax.sharding.tensor_parallel_rules(mlp))
      >>> s.layers[0].weight, s.layers[1].weight
      (P(None, 'model'), P('model',))
    """
    _check_axis_name(axis, "tensor_parallel_rules")
    pairs = []
    layers = (MLP, MultiHeadAttention, Linear)
    found = jax.tree_util.tree_flatten_with_path(model, is_leaf=lambda x: isinstance(x, layers))
    for path, node in found[0]:
        prefix = jax.tree_util.keystr(path)
        if isinstance(node, MLP):
            for i, layer in enumerate(node.layers):
                pairs += _layer(f"{prefix}.layers[{i}]", layer, i % 2 == 0, axis)
        elif isinstance(node, MultiHeadAttention):
            for name in ("query_proj", "key_proj", "value_proj", "out_proj"):
                column = name != "out_proj"
                pairs += _layer(f"{prefix}.{name}", getattr(node, name), column, axis)
        elif isinstance(node, Linear):
            pairs += _layer(prefix, node, True, axis)
    if not pairs:
        raise ValueError(
            f"pax.sharding.tensor_parallel_rules: {type(model).__name__} holds no pax.nn.Linear, "
            f"MLP or MultiHeadAttention layer to split. Fix: write rules for its parameters, "
            f"e.g. [(r'\\.w$', P(None, {axis!r})), (r'.*', P())]."
        )
    return _grouped(pairs)


def init_sharded(
    make_model: Callable[..., T], mesh: Mesh, rules: Rules, *args: Any, allow_unused: bool = False
) -> T:
    """Builds a model directly sharded: ``make_model(*args)`` runs under `jax.jit`, its
    outputs placed by the rules, so no device ever holds the whole model.

    The rules are applied to the model as it is built (shapes only), with
    ``jax.lax.with_sharding_constraint``. Since `make_model` is traced, it must not use the
    global RNG key (`pax.next_rng_key` raises under jit): pass a key in `args` and give it to
    the layers (``rng_key=key``). The values are those of ``make_model(*args)`` run eagerly.

    Args:
      make_model: a function returning the model (or any pytree: a model and its optimizer).
      mesh: the mesh.
      rules: ``(pattern, PartitionSpec)`` rules, as for `shard`. Preset rules that need the
        model (`fsdp_rules`, `tensor_parallel_rules`) can be made from
        ``jax.eval_shape(make_model, *args)``.
      *args: arguments of `make_model` (arrays are traced, e.g. an RNG key).
      allow_unused: accept rules that place no leaf (see `shardings`).

    Returns:
      What `make_model` returns, its arrays sharded as the rules say.

    Raises:
      TypeError: if `make_model` is not callable; as `shardings`.
      ValueError: as `shardings`.

    Example:
      >>> import jax, numpy as np, pax
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> make = lambda key: pax.nn.MLP([4, 8, 2], rng_key=key)
      >>> mlp = pax.sharding.init_sharded(make, mesh, [(r".*", P())], jax.random.PRNGKey(0))
      >>> mlp.layers[0].weight.sharding.spec
      P()
    """
    if not callable(make_model):
        raise TypeError(
            f"pax.sharding.init_sharded: make_model must be a function returning the model, got "
            f"{describe(make_model)}. Fix: pax.sharding.init_sharded(lambda key: "
            f"pax.nn.Linear(2, 4, rng_key=key), mesh, rules, key)."
        )
    check_allow_unused("init_sharded", allow_unused)
    check_mesh(mesh, "init_sharded")

    def build(*inner: Any) -> T:
        tree = make_model(*inner)
        placement = shardings(tree, mesh, rules, allow_unused=allow_unused)
        return jax.lax.with_sharding_constraint(tree, placement)

    return jax.jit(build)(*args)


def shard_batch(batch: T, mesh: Mesh, axis: str = "data") -> T:
    """Places every array of `batch` split over `axis` along its first (batch) dimension.

    `batch` is the global batch: in a run of several processes each must pass the same values
    (to give each process its own part, use ``jax.make_array_from_process_local_data``).

    Args:
      batch: a pytree of arrays (inputs, targets) with the batch first.
      mesh: the mesh.
      axis: the mesh axis to split the batch over.

    Returns:
      The batch, `jax.device_put` to ``NamedSharding(mesh, P(axis))``.

    Raises:
      ValueError: if the mesh has no axis `axis`, or an array is a scalar or its batch size is
        not divisible by the axis size.
      TypeError: if `mesh` is not a Mesh or `axis` not a str.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, pax
      >>> from jax.sharding import Mesh
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
      >>> x = pax.sharding.shard_batch(jnp.ones((4, 3)), mesh)
      >>> x.sharding.spec
      P('data',)
    """
    size = _axis_size(mesh, axis, "shard_batch")
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = np.shape(leaf)
        if not shape or shape[0] % size:
            where = jax.tree_util.keystr(path) or "the root"
            raise ValueError(
                f"pax.sharding.shard_batch: the array at {where} "
                f"is {describe(leaf)}; its first dimension is split over the mesh axis {axis!r} "
                f"of size {size}, which must divide it. Fix: a batch size divisible by {size}."
            )
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(axis)))
