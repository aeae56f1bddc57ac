"""A `pax.nn.Stack` whose stacked arrays no longer match its `n` layers (sliced or replaced by
hand) is refused with the key path, the sizes and the fix; slicing with `stack[:k]` works."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax


def _stack(n=4):
    return pax.nn.Stack(lambda k: pax.nn.Linear(4, 4, rng_key=k), n, rng_key=jax.random.key(0))


def test_stack_sliced_by_hand_names_the_path_sizes_and_fix():
    stack = _stack()
    stack.stacked = jax.tree_util.tree_map(lambda x: x[:2], stack.stacked)
    with pytest.raises(
        ValueError,
        match=r"Stack: \.stacked\.weight is f32\[2,4,4\], but a Stack of n=4 layers needs a "
        r"leading axis of size 4.*stack = stack\[:2\]",
    ):
        stack(jnp.ones((1, 4)))


def test_stack_one_leaf_replaced_with_wrong_leading_size_under_jit():
    stack = _stack()
    stack.stacked.bias = jnp.zeros((3, 4))
    with pytest.raises(
        ValueError, match=r"Stack: \.stacked\.bias is f32\[3,4\].*sizes found: 3, 4"
    ):
        jax.jit(lambda m, x: m(x))(stack, jnp.ones((1, 4)))


def test_stack_sliced_with_indexing_runs():
    stack, x = _stack(), jax.random.normal(jax.random.key(1), (2, 4))
    short = stack[:2]
    ref = stack.unstack()[1](stack.unstack()[0](x))
    np.testing.assert_allclose(short(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(short, x), ref, rtol=1e-5, atol=1e-6)
