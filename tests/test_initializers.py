"""pax.initializers draw exactly what Haiku's initializers draw from the same key."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

KEY = jax.random.PRNGKey(7)


def _haiku_sample(hk_init, shape, dtype=jnp.float32):
    """Runs a Haiku initializer whose hk.next_rng_key() is split(KEY)[1]."""

    def f():
        with hk.with_rng(KEY):
            return hk_init(shape, dtype)

    return hk.transform(f).apply({}, None)


def _pax_sample(init, shape, dtype=jnp.float32):
    return init(jax.random.split(KEY)[1], shape, dtype)


PAIRS = [
    (
        "truncated_normal",
        pax.initializers.truncated_normal(0.3, 0.1),
        hk.initializers.TruncatedNormal(0.3, 0.1),
    ),
    (
        "random_normal",
        pax.initializers.random_normal(0.3, 0.1),
        hk.initializers.RandomNormal(0.3, 0.1),
    ),
    (
        "random_uniform",
        pax.initializers.random_uniform(-2, 3),
        hk.initializers.RandomUniform(-2, 3),
    ),
    ("vs_fan_in_tn", pax.initializers.variance_scaling(2.0), hk.initializers.VarianceScaling(2.0)),
    (
        "vs_fan_avg_uniform",
        pax.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
        hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform"),
    ),
    (
        "vs_fan_out_normal",
        pax.initializers.variance_scaling(0.5, "fan_out", "normal"),
        hk.initializers.VarianceScaling(0.5, "fan_out", "normal"),
    ),
    (
        "vs_fan_in_axes",
        pax.initializers.variance_scaling(1.0, fan_in_axes=(0, 1)),
        hk.initializers.VarianceScaling(1.0, fan_in_axes=(0, 1)),
    ),
    ("uniform_scaling", pax.initializers.uniform_scaling(2.0), hk.initializers.UniformScaling(2.0)),
    ("orthogonal", pax.initializers.orthogonal(1.5), hk.initializers.Orthogonal(1.5)),
    ("orthogonal_axis0", pax.initializers.orthogonal(axis=0), hk.initializers.Orthogonal(axis=0)),
    ("identity", pax.initializers.identity(3.0), hk.initializers.Identity(3.0)),
    ("constant", pax.initializers.constant(0.25), hk.initializers.Constant(0.25)),
]


@pytest.mark.parametrize("name, pax_init, hk_init", PAIRS, ids=[p[0] for p in PAIRS])
def test_same_values_as_haiku(name, pax_init, hk_init):
    shape = (3, 4, 5)  # rank 3: fans include the receptive field
    expected = _haiku_sample(hk_init, shape)
    got = _pax_sample(pax_init, shape)
    assert got.shape == shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_aliases_match_variance_scaling():
    cases = {
        pax.initializers.glorot_uniform(): hk.initializers.VarianceScaling(
            1.0, "fan_avg", "uniform"
        ),
        pax.initializers.glorot_normal(): hk.initializers.VarianceScaling(1.0, "fan_avg"),
        pax.initializers.lecun_normal(): hk.initializers.VarianceScaling(1.0, "fan_in"),
        pax.initializers.he_normal(): hk.initializers.VarianceScaling(2.0, "fan_in"),
        pax.initializers.he_uniform(): hk.initializers.VarianceScaling(2.0, "fan_in", "uniform"),
    }
    for pax_init, hk_init in cases.items():
        np.testing.assert_allclose(
            _pax_sample(pax_init, (6, 4)), _haiku_sample(hk_init, (6, 4)), rtol=1e-6
        )


def test_zeros_ones_and_dtypes():
    key = jax.random.PRNGKey(0)
    assert pax.initializers.zeros(key, (2, 3), jnp.bfloat16).dtype == jnp.bfloat16
    np.testing.assert_array_equal(pax.initializers.ones(key, (4,)), np.ones(4))
    w = pax.initializers.truncated_normal(1.0)(key, (3,), jnp.complex64)
    assert w.dtype == jnp.complex64 and bool(jnp.any(w.imag != 0))


def test_variance_scaling_statistics():
    """With the truncation correction the samples have std sqrt(scale / fan_in)."""
    w = pax.initializers.variance_scaling(2.0)(jax.random.PRNGKey(1), (400, 300))
    np.testing.assert_allclose(float(w.std()), np.sqrt(2.0 / 400), rtol=0.02)
    assert abs(float(w.mean())) < 0.003
    assert float(jnp.abs(w).max()) <= 2 * np.sqrt(2.0 / 400) / 0.8796 + 1e-6


def test_orthogonal_is_orthogonal():
    w = pax.initializers.orthogonal()(jax.random.PRNGKey(0), (8, 5))
    np.testing.assert_allclose(w.T @ w, np.eye(5), atol=1e-5)


def test_global_seed_is_reproducible():
    pax.seed_rng_key(3)
    a = pax.nn.Linear(4, 4).weight
    pax.seed_rng_key(3)
    b = pax.nn.Linear(4, 4).weight
    c = pax.nn.Linear(4, 4).weight
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(b, c)


def test_explicit_rng_key_ignores_the_global_seed():
    key = jax.random.PRNGKey(11)
    pax.seed_rng_key(0)
    a = pax.nn.Linear(4, 4, rng_key=key).weight
    pax.seed_rng_key(1)
    b = pax.nn.Linear(4, 4, rng_key=key).weight
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: pax.initializers.variance_scaling(-1.0), "scale must be >= 0"),
        (lambda: pax.initializers.variance_scaling(mode="fan"), "unknown mode 'fan'"),
        (lambda: pax.initializers.variance_scaling(distribution="cauchy"), "unknown distribution"),
        (lambda: pax.initializers.truncated_normal(-1.0), "stddev must be >= 0"),
        (lambda: pax.initializers.truncated_normal(lower=1.0, upper=0.0), "lower < upper"),
        (lambda: pax.initializers.orthogonal()(KEY, (3,)), "rank >= 2"),
        (lambda: pax.initializers.identity()(KEY, (3,)), "rank >= 2"),
    ],
)
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bucketed_eager_draws_equal_direct_draws():
    """Eager draws are taken on a bucketed flat size; values equal a draw of the shape."""
    shape = (2, 3, 5, 7)
    direct = {
        "truncated_normal": lambda k: 0.5 * jax.random.truncated_normal(k, -2.0, 2.0, shape),
        "random_uniform": lambda k: jax.random.uniform(k, shape, minval=-1.0, maxval=1.0),
    }
    inits = {
        "truncated_normal": pax.initializers.truncated_normal(0.5),
        "random_uniform": pax.initializers.random_uniform(-1.0, 1.0),
    }
    for name, init in inits.items():
        np.testing.assert_allclose(init(KEY, shape), direct[name](KEY), rtol=1e-6, err_msg=name)
    rbg = jax.random.key(3, impl="rbg")  # not prefix-stable: drawn unbucketed
    tn = inits["truncated_normal"]
    np.testing.assert_allclose(tn(rbg, shape), direct["truncated_normal"](rbg), rtol=1e-6)
    traced = jax.jit(lambda k: inits["truncated_normal"](k, shape))(KEY)  # no bucketing in jit
    np.testing.assert_allclose(traced, direct["truncated_normal"](KEY), rtol=1e-6)
