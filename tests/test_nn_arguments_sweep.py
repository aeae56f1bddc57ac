"""Every pax.nn constructor refuses a bad `rng_key` or `param_dtype` at construction, naming it.

Before, a string, a number, a float array or a 0-d array as `rng_key` failed inside JAX's key
handling ("invalid PRNG key data"), `param_dtype=None` built float64 parameters that JAX
truncated to float32 with a warning, an array as `param_dtype` built with the array's dtype,
and `Dropout` kept a float array as its key until its first call.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

LAYERS = {
    "Linear": lambda **kw: pax.nn.Linear(3, 4, **kw),
    "Conv2D": lambda **kw: pax.nn.Conv2D(3, 4, 3, **kw),
    "Conv1DTranspose": lambda **kw: pax.nn.Conv1DTranspose(3, 4, 3, **kw),
    "LayerNorm": lambda **kw: pax.nn.LayerNorm(3, **kw),
    "GroupNorm": lambda **kw: pax.nn.GroupNorm(4, 2, **kw),
    "BatchNorm2D": lambda **kw: pax.nn.BatchNorm2D(3, **kw),
    "Embed": lambda **kw: pax.nn.Embed(10, 4, **kw),
    "LSTM": lambda **kw: pax.nn.LSTM(3, 4, **kw),
    "GRU": lambda **kw: pax.nn.GRU(3, 4, **kw),
    "MLP": lambda **kw: pax.nn.MLP([3, 4, 2], **kw),
    "MultiHeadAttention": lambda **kw: pax.nn.MultiHeadAttention(8, 2, **kw),
}
BAD_KEYS = {
    "str": "0",
    "int": 3,
    "float array": jnp.ones((2,)),
    "0-d array": jnp.ones((), jnp.uint32),
    "wrong shape": jnp.ones((3,), jnp.uint32),
}


@pytest.mark.parametrize("bad", sorted(BAD_KEYS))
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_bad_rng_key_is_refused_naming_it(layer, bad):
    with pytest.raises(TypeError, match=r"rng_key must be a JAX PRNG key, got .*Fix: rng_key="):
        LAYERS[layer](rng_key=BAD_KEYS[bad])


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_keys_of_every_form_are_accepted(layer):
    raw = LAYERS[layer](rng_key=jax.random.PRNGKey(0))
    again = LAYERS[layer](rng_key=np.asarray(jax.random.PRNGKey(0)))
    for a, b in zip(jax.tree_util.tree_leaves(raw), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(a, b)
    LAYERS[layer](rng_key=jax.random.key(0))  # a typed key


def test_dropout_refuses_a_bad_key_at_construction():
    with pytest.raises(TypeError, match=r"rng_key must be a JAX PRNG key, got an array of dtype"):
        pax.nn.Dropout(0.5, rng_key=jnp.ones((2, 2)))
    pax.nn.Dropout(0.5, rng_key=jax.random.PRNGKey(1))


@pytest.mark.parametrize("bad", [None, jnp.ones((2, 2)), np.ones(3, np.float16)])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_param_dtype_must_be_a_dtype(layer, bad):
    with pytest.raises(TypeError, match=r"param_dtype must be a floating-point dtype"):
        LAYERS[layer](param_dtype=bad)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_param_dtype_spellings_are_accepted(layer):
    for dtype in (jnp.bfloat16, "bfloat16", np.dtype("float16")):
        leaves = jax.tree_util.tree_leaves(LAYERS[layer](param_dtype=dtype).parameters())
        assert {str(x.dtype) for x in leaves} <= {"bfloat16", "float16"}


def test_mlp_sizes_given_as_a_0d_array_are_refused_clearly():
    with pytest.raises((TypeError, ValueError), match=r"MLP"):
        pax.nn.MLP(jnp.ones((), jnp.int32))
