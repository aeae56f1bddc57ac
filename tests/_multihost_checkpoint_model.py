"""The tree the multi-process checkpoint tests save: values computed from a seed, and shardings.

Shared by `tests/_multihost_checkpoint_worker.py` (run as 2 processes) and
`tests/test_checkpoint_multihost.py` (1 process), so both compute the same expected values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import pax


@functools.cache
def build(seed: int):
    """An MLP, its adam optimizer after one step, and extra leaves (bf16, a typed key, numpy).

    Every value is computed on one device from ``seed``, so every process gets the same bits.
    Cached: callers must not modify the result (`pax.load` does not modify ``like``).
    """
    pax.seed_rng_key(seed)
    net = pax.nn.MLP([8, 16, 8])
    opt = pax.optim.from_optax(optax.adam(1e-2))(net.parameters())
    x = jax.random.normal(jax.random.PRNGKey(seed), (4, 8))

    def loss_fn(params, model, inputs):
        model = model.update(params)
        loss = jnp.mean((model(inputs) - inputs) ** 2)
        return loss, (loss, model)

    _, net, opt = pax.utils.build_update_fn(loss_fn)(net, opt, x)
    extras = {
        "bf16": jax.random.normal(jax.random.PRNGKey(seed + 1), (8, 4)).astype(jnp.bfloat16),
        "keys": jax.random.split(jax.random.key(seed), 8),
        "table": np.arange(12, dtype=np.int32).reshape(3, 4) * seed,
    }
    return net, opt, extras


def spec_of(shape: tuple[int, ...], mesh: Mesh, transpose: bool) -> P:
    """Splits each axis of a leaf over a mesh axis when it divides; scalars are replicated."""
    names = list(mesh.axis_names)[::-1] if transpose else list(mesh.axis_names)
    spec = []
    for size, name in zip(shape, names):
        spec.append(name if size % mesh.shape[name] == 0 else None)
    return P(*spec)


def shard(tree, mesh: Mesh, transpose: bool = False, abstract: bool = False):
    """`tree` with its jax arrays as global arrays over ``mesh`` (numpy leaves are kept).

    With ``abstract``, the leaves are ``jax.ShapeDtypeStruct`` with the sharding instead.
    """

    def one(leaf):
        if not isinstance(leaf, jax.Array):
            return leaf
        sharding = NamedSharding(mesh, spec_of(leaf.shape, mesh, transpose))
        if abstract:
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(leaf))
            built = jax.make_array_from_callback(data.shape, sharding, lambda i: data[i])
            return jax.random.wrap_key_data(built, impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree_util.tree_map(one, tree)


def bits(leaf) -> np.ndarray:
    """The raw bits of a (host) value, for bit-identical comparisons."""
    array = np.asarray(leaf)
    return array.view(np.dtype(f"u{array.dtype.itemsize}")) if array.dtype.itemsize else array


def check_loaded(loaded, expected, like) -> int:
    """Checks every leaf this process holds is bit-identical to ``expected``, placed as ``like``.

    Returns the number of leaves checked; raises AssertionError with the key path otherwise.
    """
    flat_loaded = jax.tree_util.tree_flatten_with_path(loaded)[0]
    flat_expected = jax.tree_util.tree_leaves(expected)
    flat_like = jax.tree_util.tree_leaves(like)
    assert len(flat_loaded) == len(flat_expected) == len(flat_like)
    for (path, got), want, shape in zip(flat_loaded, flat_expected, flat_like):
        where = jax.tree_util.keystr(path)
        sharding = getattr(shape, "sharding", None)
        if isinstance(got, jax.Array) and sharding is not None:
            assert got.sharding == sharding, (where, got.sharding, sharding)
        if isinstance(want, jax.Array) and jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            assert str(jax.random.key_impl(got)) == str(jax.random.key_impl(want)), where
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        assert type(got) is type(want) or isinstance(got, jax.Array), (where, type(got))
        assert got.dtype == want.dtype and got.shape == want.shape, where
        host = np.asarray(want)
        if isinstance(got, jax.Array):
            for piece in got.addressable_shards:
                np.testing.assert_array_equal(bits(piece.data), bits(host[piece.index]), where)
        else:
            np.testing.assert_array_equal(bits(got), bits(host), where)
    return len(flat_loaded)
