"""`resolve`: the initializer forms a layer accepts (pax's, Haiku's objects, ``(shape, dtype)``)."""

import subprocess
import sys

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax._src.nn.initializers import resolve

SHAPE = (5, 4)


def haiku_first_parameter(init, key, shape=SHAPE):
    """What a Haiku program initialized with `key` draws for its one parameter."""

    def program():
        return hk.get_parameter("w", shape, jnp.float32, init=init)

    return hk.transform(program).init(key)["~"]["w"]


def test_none_is_none():
    assert resolve("Linear", "w_init", None) is None


@pytest.mark.parametrize(
    "init",
    [
        pax.initializers.zeros,
        pax.initializers.truncated_normal(0.1),
        pax.initializers.variance_scaling(2.0),
        jax.nn.initializers.lecun_normal(),
        jax.nn.initializers.zeros,
    ],
)
def test_pax_form_is_returned_unchanged(init):
    assert resolve("Linear", "w_init", init) is init


def test_pax_form_with_star_args_is_returned_unchanged():
    def init(*args):
        return jnp.zeros(args[1], args[2])

    assert resolve("Linear", "w_init", init) is init


@pytest.mark.parametrize(
    "init",
    [
        hk.initializers.TruncatedNormal(0.1),
        hk.initializers.VarianceScaling(2.0, "fan_out", "uniform"),
        hk.initializers.RandomNormal(0.5, 1.0),
        hk.initializers.Orthogonal(),
        hk.initializers.Constant(3.0),
    ],
)
def test_haiku_initializer_draws_what_haiku_draws_from_the_same_key(init, key):
    adapted = resolve("Linear", "w_init", init)
    assert adapted is not init
    w = adapted(key, SHAPE, jnp.float32)
    assert w.shape == SHAPE and w.dtype == jnp.float32
    np.testing.assert_allclose(w, haiku_first_parameter(init, key), rtol=0, atol=0)


def test_haiku_initializer_matches_haiku_linear_weights(key):
    init = hk.initializers.TruncatedNormal(0.1)
    x = jnp.ones((1, SHAPE[0]))
    linear = hk.transform(lambda x: hk.Linear(SHAPE[1], w_init=init)(x))
    expected = linear.init(key, x)["linear"]["w"]
    w = resolve("Linear", "w_init", init)(key, SHAPE, jnp.float32)
    np.testing.assert_allclose(w, expected, rtol=0, atol=0)


def test_haiku_initializer_distribution(key):
    w = resolve("Linear", "w_init", hk.initializers.TruncatedNormal(0.1))(key, (200, 200), "f4")
    assert float(jnp.abs(w).max()) <= 0.2
    # the std of a normal truncated at 2 std is 0.88 of the untruncated one
    np.testing.assert_allclose(float(w.std()), 0.088, rtol=0.02)
    other = resolve("Linear", "w_init", hk.initializers.TruncatedNormal(0.1))
    assert not np.array_equal(other(jax.random.PRNGKey(1), (200, 200), "f4"), w)


def test_haiku_initializer_follows_dtype(key):
    w = resolve("Linear", "w_init", hk.initializers.RandomNormal())(key, (3,), jnp.bfloat16)
    assert w.dtype == jnp.bfloat16


def test_haiku_initializer_runs_under_jit(key):
    adapted = resolve("Linear", "w_init", hk.initializers.TruncatedNormal(0.1))
    w = jax.jit(lambda k: adapted(k, SHAPE, jnp.float32))(key)
    np.testing.assert_allclose(w, adapted(key, SHAPE, jnp.float32), rtol=0, atol=0)


def test_shape_dtype_function_may_draw_from_haiku(key):
    def pax_v02_init(shape, dtype):
        return jax.random.normal(hk.next_rng_key(), shape, dtype)

    w = resolve("Linear", "w_init", pax_v02_init)(key, SHAPE, jnp.float32)
    np.testing.assert_allclose(w, haiku_first_parameter(pax_v02_init, key), rtol=0, atol=0)


@pytest.mark.parametrize(
    "init",
    [
        lambda shape, dtype: jnp.full(shape, 2.0, dtype),
        lambda s, d: jnp.full(s, 2.0, d),
        lambda shape, dtype=jnp.float32: jnp.full(shape, 2.0, dtype),
        # Pax v0.2's own initializers took (shape, dtype, rng_key=None)
        lambda shape, dtype, rng_key=None: jnp.full(shape, 2.0, dtype),
        jnp.ones,  # (shape, dtype=None, ...): Pax v0.2 layers took b_init=jnp.zeros
    ],
)
def test_shape_dtype_functions_are_adapted(init, key):
    adapted = resolve("Linear", "b_init", init)
    assert adapted is not init
    out = adapted(key, (3,), jnp.float32)
    assert out.shape == (3,) and out.dtype == jnp.float32
    assert set(np.asarray(out).tolist()) <= {1.0, 2.0}


@pytest.mark.parametrize(
    "init, match",
    [
        (hk.initializers.TruncatedNormal, r"Linear: w_init=.*TruncatedNormal.* is a class"),
        (pax.initializers.truncated_normal, r"factory; call it: pax\.initializers\.truncated_nor"),
        (3, r"Linear: w_init=3 is not callable"),
        (jnp.zeros((2, 2)), r"Linear: w_init=f32\[2,2\] is not callable"),
        (lambda key, shape: 0, r"Linear: w_init=.* takes the positional arguments \(key, shape\)"),
        (lambda x: 0, r"takes the positional arguments \(x\)"),
        (lambda a, b, c, d: 0, r"takes the positional arguments \(a, b, c, d\)"),
    ],
)
def test_other_values_are_refused_naming_owner_arg_and_fix(init, match):
    with pytest.raises(TypeError, match=match) as info:
        resolve("Linear", "w_init", init)
    assert "Fix: e.g. Linear(..., w_init=pax.initializers.truncated_normal(0.1))" in str(info.value)


def test_a_factory_given_in_haiku_form_is_refused_at_call(key):
    adapted = resolve("Conv2D", "w_init", jax.nn.initializers.normal)  # (stddev, dtype)
    with pytest.raises(TypeError, match=r"Conv2D: w_init returned function for the shape"):
        adapted(key, (2, 2), jnp.float32)


def test_wrong_shape_is_refused(key):
    adapted = resolve("Linear", "w_init", lambda shape, dtype: jnp.zeros((1,), dtype))
    with pytest.raises(TypeError, match=r"Linear: w_init returned f32\[1\] for the shape \(5, 4\)"):
        adapted(key, SHAPE, jnp.float32)


def test_the_haiku_side_is_loaded_on_first_use():
    code = (
        "import sys, jax, haiku as hk\n"
        "from pax._src.nn.initializers import resolve\n"
        "assert 'pax._src.haiku.compat_init' not in sys.modules\n"
        "w = resolve('Linear', 'w_init', hk.initializers.Constant(2.0))\n"
        "assert 'pax._src.haiku.compat_init' in sys.modules\n"
        "assert w(jax.random.PRNGKey(0), (2,), 'float32').tolist() == [2.0, 2.0]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    "init", [hk.initializers.TruncatedNormal(0.1), lambda shape, dtype: jnp.ones(shape, dtype)]
)
def test_resolving_an_adapted_initializer_again_keeps_it(init, key):
    # layers built from layers (attention -> Linear) resolve the same initializer twice
    once = resolve("MultiHeadAttention", "w_init", init)
    assert resolve("Linear", "w_init", once) is once
    np.testing.assert_array_equal(once(key, SHAPE, jnp.float32), once(key, SHAPE, jnp.float32))


def test_attention_with_a_haiku_initializer(key):
    init = hk.initializers.VarianceScaling(0.5)
    mha = pax.nn.MultiHeadAttention(8, 2, 4, w_init=init, rng_key=key)
    assert mha(jnp.ones((1, 3, 8))).shape == (1, 3, 8)


def test_public_from_haiku_initializer(key):
    init = hk.initializers.TruncatedNormal(0.1)
    converted = pax.initializers.from_haiku_initializer(init)
    np.testing.assert_array_equal(
        converted(key, SHAPE, "float32"), haiku_first_parameter(init, key)
    )
    pax_form = pax.initializers.zeros
    assert pax.initializers.from_haiku_initializer(pax_form) is pax_form
    with pytest.raises(TypeError, match=r"pax\.initializers\.from_haiku_initializer: init=None"):
        pax.initializers.from_haiku_initializer(None)
