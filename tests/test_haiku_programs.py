"""pax.haiku.from_transformed: whole Haiku programs, keyed exactly as the program keys them."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_haiku import assert_trees_close

import pax

X = jax.random.normal(jax.random.PRNGKey(1), (4, 3))


def program(x, is_training):
    """Modules, a loose parameter, a loose state, BatchNorm and dropout, as real programs do."""
    x = hk.Linear(8)(x)
    x = hk.BatchNorm(True, True, 0.9)(x, is_training)
    x = jax.nn.relu(x)
    if is_training:
        x = hk.dropout(hk.next_rng_key(), 0.5, x)
    calls = hk.get_state("calls", [], jnp.int32, init=jnp.zeros)
    hk.set_state("calls", calls + 1)
    return hk.nets.MLP([5, 2])(x) * hk.get_parameter("gain", [], init=jnp.ones)


def test_program_keys_are_the_programs_and_load_strictly():
    f = hk.transform_with_state(program)
    params, state = f.init(jax.random.PRNGKey(0), X, True)
    model = pax.haiku.from_transformed(program, use_rng=True).hk_init(X)
    assert sorted(model.params) == sorted(params)  # '~' holds the loose "gain"
    assert sorted(model.state) == sorted(state)
    assert model.pass_is_training  # detected from the signature
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)
    model = pax.haiku.load_haiku_params(model, params, state)  # strict, no renaming
    assert_trees_close(pax.haiku.to_haiku_params(model), (params, state))
    want, _ = f.apply(params, state, None, X, False)
    np.testing.assert_allclose(model.eval()(X), want, rtol=1e-5, atol=1e-6)
    # training mode: dropout on (a key is needed), BatchNorm and the loose state updated
    trained = model.copy()
    out = trained(X)
    assert not np.allclose(out, want)
    assert int(trained.state["~"]["calls"]) == 1
    assert int(trained.state["batch_norm/~/mean_ema"]["counter"]) == 1
    _, hk_state = f.apply(params, state, jax.random.PRNGKey(3), X, True)
    np.testing.assert_allclose(
        trained.state["batch_norm/~/mean_ema"]["average"],
        hk_state["batch_norm/~/mean_ema"]["average"],
        rtol=1e-6,
    )


def char_rnn(tokens):
    """The shape of Haiku's char-RNN example: embed, a deep LSTM core unrolled, logits."""
    core = hk.DeepRNN([hk.LSTM(8), jax.nn.relu, hk.LSTM(8)])
    x = hk.Embed(11, 4)(tokens)
    outputs, _ = hk.dynamic_unroll(core, x, core.initial_state(tokens.shape[1]))
    return hk.Linear(11)(outputs)


def test_a_char_rnn_program_runs_with_its_own_weights():
    tokens = jnp.arange(12).reshape(6, 2) % 11
    f = hk.transform_with_state(char_rnn)
    params, state = f.init(jax.random.PRNGKey(0), tokens)
    model = pax.haiku.from_transformed(char_rnn).hk_init(tokens)
    assert not model.pass_is_training
    model = pax.haiku.load_haiku_params(model, params, state)
    np.testing.assert_allclose(model(tokens), f.apply(params, state, None, tokens)[0], rtol=1e-6)
    step = jax.jit(lambda m, t: (m(t), m))
    out, model = step(model, tokens)
    assert out.shape == (6, 2, 11)


def test_programs_in_a_bigger_model_and_scopes():
    def encoder(x):
        return hk.Linear(4)(x)

    model = pax.nn.Sequential(pax.haiku.from_transformed(encoder), pax.nn.Linear(4, 2))
    model = model.hk_init(X)
    # the program adds no scope, so its "linear" and the native Linear collide...
    with pytest.raises(
        ValueError, match=r"\.modules\[0\] and \.modules\[1\] both get the Haiku name .linear."
    ):
        pax.haiku.to_haiku_params(model)
    # ... until one of them is named
    names = {".modules[0]": "encoder"}
    params, _ = pax.haiku.to_haiku_params(model, names=names)
    assert sorted(params) == ["encoder/linear", "linear"]
    loaded = pax.haiku.load_haiku_params(model, params, names=names)
    assert_trees_close(loaded, model)


def test_wrong_things_are_refused_with_the_fix():
    with pytest.raises(TypeError, match=r"got the class Linear.*pax\.from_haiku\(Linear\)"):
        pax.haiku.from_transformed(hk.Linear)
    with pytest.raises(TypeError, match=r"not hk\.transform\(forward\)"):
        pax.haiku.from_transformed(hk.transform(lambda x: x))
    with pytest.raises(TypeError, match=r"pax\.haiku\.from_transformed\(fn\)"):
        pax.from_haiku(char_rnn)
    model = pax.haiku.from_transformed(program)
    with pytest.raises(RuntimeError, match=r"from_transformed\(fn, use_rng=True\)"):
        model.hk_init(X)
    with pytest.raises(AttributeError, match=r"has no initial_state"):
        model.initial_state(1)
    with pytest.raises(TypeError, match=r"do not pass is_training"):
        pax.haiku.from_transformed(program, use_rng=True).hk_init(X)(X, is_training=False)
