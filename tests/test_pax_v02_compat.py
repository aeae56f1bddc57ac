"""Programs written for Pax v0.2: the names and call forms they use work with the same meaning."""

import typing

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

# --- pax.utils.LossFnOutput ----------------------------------------------------------------------


def test_loss_fn_output_annotates_a_loss_function_used_by_build_update_fn():
    def loss_fn(params, model: pax.nn.Linear, x) -> pax.utils.LossFnOutput:
        model = model.update(params)
        loss = jnp.mean(model(x) ** 2)
        return loss, (loss, model)

    model = pax.nn.Linear(3, 2, rng_key=jax.random.PRNGKey(0))
    opt = pax.optim.sgd(model.parameters(), 0.1)
    update_fn = pax.utils.build_update_fn(loss_fn)
    loss, new_model, opt = update_fn(model, opt, jnp.ones((4, 3)))
    assert not np.array_equal(new_model.weight, model.weight)
    assert typing.get_origin(pax.utils.LossFnOutput) is tuple
    assert typing.get_args(pax.utils.LossFnOutput)[0] is jax.Array
    # subscripted as Pax v0.2 users did for a typed model
    assert typing.get_args(pax.utils.LossFnOutput[pax.nn.Linear])[1] == tuple[
        typing.Any, pax.nn.Linear
    ]


# --- pax.utils.RngSeq ----------------------------------------------------------------------------


def test_rng_seq_splits_as_pax_v02_did():
    key = jax.random.PRNGKey(7)
    seq = pax.utils.RngSeq(rng_key=key)
    k1 = seq.next_rng_key()
    new_key, expected = jax.random.split(key)
    np.testing.assert_array_equal(k1, expected)
    np.testing.assert_array_equal(seq.rng_key, new_key)
    keys = seq.next_rng_key(3)
    expected = jax.random.split(new_key, 4)
    assert isinstance(keys, list) and len(keys) == 3
    for got, want in zip(keys, expected[1:]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(seq.rng_key, expected[0])


def test_rng_seq_seed_and_default_key():
    a = pax.utils.RngSeq(3).next_rng_key()
    b = pax.utils.RngSeq(seed=3).next_rng_key()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, jax.random.split(jax.random.PRNGKey(3))[1])
    pax.seed_rng_key(5)
    c = pax.utils.RngSeq().next_rng_key()
    pax.seed_rng_key(5)
    d = pax.utils.RngSeq().next_rng_key()
    np.testing.assert_array_equal(c, d)
    assert not np.array_equal(a, c)


def test_rng_seq_call_is_next_rng_key():
    a, b = pax.utils.RngSeq(0), pax.utils.RngSeq(0)
    np.testing.assert_array_equal(a(), b.next_rng_key())
    np.testing.assert_array_equal(a(2)[1], b.next_rng_key(2)[1])


def test_rng_seq_state_advances_through_jit():
    seq = pax.utils.RngSeq(0)

    @jax.jit
    def step(seq):
        return seq.next_rng_key(), seq

    k1, seq = step(seq)
    k2, seq = step(seq)
    eager = pax.utils.RngSeq(0)
    np.testing.assert_array_equal(k1, eager.next_rng_key())
    np.testing.assert_array_equal(k2, eager.next_rng_key())
    assert not np.array_equal(k1, k2)
    assert seq.registry["rng_key"] is pax.Kind.STATE


def test_rng_seq_key_is_a_state_not_a_parameter():
    seq = pax.utils.RngSeq(0)
    assert jax.tree_util.tree_leaves(seq.parameters()) == []
    assert len(jax.tree_util.tree_leaves(seq.states())) == 1


def test_rng_seq_eval_mode_does_not_advance():
    seq = pax.utils.RngSeq(0).eval()
    before = seq.rng_key
    a, b = seq.next_rng_key(), seq.next_rng_key()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(seq.rng_key, before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seed=1.5), r"RngSeq: seed must be an int or None, got 1\.5"),
        (dict(seed=1, rng_key=jax.random.PRNGKey(0)), r"RngSeq: got both a seed and an rng_key"),
    ],
)
def test_rng_seq_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        pax.utils.RngSeq(**kwargs)


@pytest.mark.parametrize("num_keys", [0, -1, 2.0, True])
def test_rng_seq_num_keys_must_be_positive_int(num_keys):
    with pytest.raises(ValueError, match=r"num_keys must be a positive int"):
        pax.utils.RngSeq(0).next_rng_key(num_keys)


# --- pax.haiku.dropout ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate, shape, broadcast_dims",
    [(0.1, (4, 7), ()), (0.5, (3, 5, 2), (1,)), (0.9, (64,), ()), (0.3, (2, 3, 4), (0, -1))],
)
def test_dropout_matches_haiku(rate, shape, broadcast_dims):
    key = jax.random.PRNGKey(3)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    got = pax.haiku.dropout(key, rate, x, broadcast_dims)
    want = hk.dropout(key, rate, x, broadcast_dims)
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    assert got.dtype == want.dtype


def test_dropout_positional_form_of_the_pax_v02_transformer():
    keys = pax.utils.RngSeq(0).next_rng_key(2)
    x = jnp.ones((2, 8, 16))
    y = pax.haiku.dropout(keys[0], 0.1, x)
    np.testing.assert_allclose(y, hk.dropout(keys[0], 0.1, x))
    assert pax.haiku.dropout(keys[1], 0.0, x) is x


def test_dropout_under_jit_with_traced_rate():
    key, x = jax.random.PRNGKey(0), jnp.ones((100,))
    got = jax.jit(pax.haiku.dropout)(key, 0.25, x)
    np.testing.assert_allclose(got, hk.dropout(key, 0.25, x))


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_out_of_range(rate):
    with pytest.raises(ValueError, match=r"pax.haiku.dropout: rate must be in \[0, 1\)"):
        pax.haiku.dropout(jax.random.PRNGKey(0), rate, jnp.ones(3))


def test_dropout_missing_broadcast_axis():
    with pytest.raises(ValueError, match=r"broadcast axis 2 does not exist .* shape \(3, 4\)"):
        pax.haiku.dropout(jax.random.PRNGKey(0), 0.5, jnp.ones((3, 4)), (2,))
