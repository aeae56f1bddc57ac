"""Porting real models (issue 24): DeepRNN to native, a model's own arrays, mismatch hints,
hk_init in dynamic_unroll, Pax v0.2 compatibility."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from haiku._src.recurrent import _DeepRNN

import pax
from pax._src.nn.recurrent import DeepRNN

X = jnp.arange(6.0).reshape(2, 3) / 6


class Core(hk.DeepRNN):
    """A Haiku deep core built in its own constructor (the form `pax.from_haiku` wraps)."""

    def __init__(self, name=None):
        super().__init__([], name=name)
        self.layers = (hk.LSTM(8), jax.nn.relu, hk.GRU(6), hk.VanillaRNN(5))


class SkipCore(_DeepRNN):
    """Haiku's ``hk.deep_rnn_with_skip_connections`` as a class."""

    def __init__(self, name=None):
        super().__init__([], skip_connections=True, name=name)
        self.layers = (hk.LSTM(4), hk.GRU(3))


class Mixed(hk.DeepRNN):
    def __init__(self, name=None):
        super().__init__([], name=name)
        self.layers = (hk.LSTM(4), hk.Linear(3))


def _zeros(*sizes):
    return tuple(jnp.zeros((2, n)) for n in sizes)


def _port(cls, state):
    def f(x, s):
        return cls()(x, s)

    t = hk.transform(f)
    params = t.init(jax.random.PRNGKey(0), X, state)
    model = pax.from_haiku(cls)().hk_init(X, state)
    model = pax.haiku.load_haiku_params(model, params)
    return t, params, model


@pytest.mark.parametrize(
    "cls,state",
    [
        (Core, (hk.LSTMState(*_zeros(8, 8)), *_zeros(6, 5))),
        (SkipCore, (hk.LSTMState(*_zeros(4, 4)), *_zeros(3))),
    ],
)
def test_to_native_converts_a_deep_rnn_with_its_haiku_numbers(cls, state):
    t, params, model = _port(cls, state)
    native, report = pax.haiku.to_native(model)
    assert isinstance(native, DeepRNN), report
    assert report.kept == ()
    want_out, want_state = t.apply(params, None, X, state)
    got_out, got_state = native(X, state)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-6, atol=1e-6)
    for g, w in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    exported, _ = pax.haiku.to_haiku_params(native)
    assert set(exported) == set(params)
    # unrolled over time, as Haiku's own dynamic_unroll
    xs = jnp.stack([X, 2 * X, -X])

    def unrolled(xs, s):
        return hk.dynamic_unroll(cls(), xs, s)

    want = hk.transform(unrolled).apply(params, None, xs, state)[0]
    got = pax.dynamic_unroll(native, xs, native.initial_state(2))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_to_native_keeps_a_deep_rnn_with_a_layer_without_twin_and_says_why():
    _, _, model = _port(Mixed, (hk.LSTMState(*_zeros(4, 4)),))
    native, report = pax.haiku.to_native(model)
    assert native is not model and not isinstance(native, DeepRNN)
    assert "has no native twin" in report.kept[0] and "linear" in report.kept[0]


def test_native_deep_rnn_errors_and_correct_use():
    with pytest.raises(ValueError, match=r"skip_connections=True every layer must be a cell"):
        DeepRNN([pax.nn.LSTM(3, 4), jax.nn.relu], skip_connections=True)
    core = DeepRNN([pax.nn.LSTM(3, 4), jax.nn.relu, pax.nn.GRU(4, 2)])
    with pytest.raises(ValueError, match=r"one entry per cell \(2 cells\).*initial_state"):
        core(X, core.initial_state(2)[:1])
    out, state = core(X, core.initial_state(2))  # the correct call
    assert out.shape == (2, 2) and len(state) == 2


class Gained(pax.Module):
    """A user's module with a loose parameter and an RngSeq of its own."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self.fc = pax.nn.Linear(2, 2)
        self.register_parameter("gain", jnp.full(2, 0.5))
        self.rng = pax.utils.RngSeq(0)

    def __call__(self, x):
        return self.fc(x) * self.gain


class HkGained(hk.Module):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.fc = hk.Linear(2)

    def __call__(self, x):
        return self.fc(x) * hk.get_parameter("gain", [2], init=jnp.ones)


def _hk_gained():
    t = hk.transform(lambda x: HkGained(name="gained")(x))
    return t, t.init(jax.random.PRNGKey(1), X[:, :2])


def test_a_named_models_own_arrays_get_its_haiku_scope():
    t, params = _hk_gained()
    model = Gained(name="gained")
    assert pax.haiku.haiku_module_names(model) == {
        ".gain": "gained",
        ".fc": "gained/~/linear",
        ".rng.rng_key": "gained",
    }
    key = {"gained": {"rng_key": model.rng.rng_key}}
    loaded = pax.haiku.load_haiku_params(model, params, key)
    np.testing.assert_allclose(loaded(X[:, :2]), t.apply(params, None, X[:, :2]), rtol=1e-6)
    back, state = pax.haiku.to_haiku_params(loaded)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    np.testing.assert_allclose(back["gained"]["gain"], params["gained"]["gain"])
    assert set(state) == {"gained"}


def test_own_arrays_mapped_with_names_or_refused_with_the_fix():
    t, params = _hk_gained()
    model = pax.nn.Sequential(Gained())  # no scope: the arrays have no Haiku name
    with pytest.raises(ValueError, match=r"\.modules\[0\] is a Gained.*name='my_net'.*names="):
        pax.haiku.to_haiku_params(model)
    names = {
        ".modules[0].gain": "gained",
        ".modules[0].rng.rng_key": "gained",
        ".modules[0].fc": "gained/~/linear",
    }
    loaded = pax.haiku.load_haiku_params(
        model, params, {"gained": {"rng_key": jnp.zeros(2, jnp.uint32)}}, names=names
    )
    np.testing.assert_allclose(loaded(X[:, :2]), t.apply(params, None, X[:, :2]), rtol=1e-6)


def _scoped_mlp():
    def f(x):
        class Outer(hk.Module):
            def __call__(self, x):
                return hk.nets.MLP([4, 2])(x)

        return Outer(name="outer")(x)

    t = hk.transform(f)
    return t, t.init(jax.random.PRNGKey(0), X)


def test_mismatch_error_names_the_one_common_scope_and_the_fix():
    t, params = _scoped_mlp()
    model = pax.nn.MLP(output_sizes=[4, 2], in_dim=3)
    with pytest.raises(ValueError, match=r"inside the scope 'outer/' .*pass prefix='outer/'"):
        pax.haiku.load_haiku_params(model, params)
    named = pax.nn.Sequential(pax.nn.MLP(output_sizes=[4, 2], in_dim=3), name="outer")
    bare = {k.split("/", 1)[1]: v for k, v in params.items()}
    with pytest.raises(ValueError, match=r"every missing name .* scope 'outer/~/'.*without that"):
        pax.haiku.load_haiku_params(named, bare)
    # the fix works; an unrelated mismatch gets no scope hint
    loaded = pax.haiku.load_haiku_params(model, params, prefix="outer/")
    np.testing.assert_allclose(loaded(X), t.apply(params, None, X), rtol=1e-6)
    with pytest.raises(ValueError) as err:
        pax.haiku.load_haiku_params(model, {"other": bare[next(iter(bare))]})
    assert "inside the scope" not in str(err.value)


def test_adamw_v02_positionals_raise_instead_of_setting_b1():
    net = pax.nn.Linear(2, 2)
    with pytest.raises(
        TypeError,
        match=r"adamw: got 1 positional .*weight_decay=0\.01.*"
        r"Fix: pax\.optim\.adamw\(params, 1e-3, weight_decay=1e-2\)",
    ):
        pax.optim.adamw(net.parameters(), 1e-3, 1e-2)
    with pytest.raises(TypeError, match=r"learning_rate is required .*1e-4"):
        pax.optim.adamw(net.parameters())
    opt = pax.optim.adamw(net.parameters(), 1e-3, weight_decay=1e-2)  # the correct call
    assert float(opt.hyperparams["weight_decay"]) == pytest.approx(1e-2)
    assert float(opt.hyperparams["learning_rate"]) == pytest.approx(1e-3)


class _ChainedCells(pax.Module):
    """Issue point 5: a method chaining two wrapped cells, unrolled with pax.dynamic_unroll."""

    def __init__(self):
        super().__init__()
        self.a = pax.from_haiku(hk.LSTM)(4)
        self.b = pax.from_haiku(hk.GRU)(3)

    def step(self, x, state):
        h, s1 = self.a(x, state[0])
        out, s2 = self.b(h, state[1])
        return out, (s1, s2)

    def __call__(self, xs, state):
        return pax.dynamic_unroll(self.step, xs, state)


def test_hk_init_inside_dynamic_unroll_of_chained_wrapped_cells():
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3))
    state = (hk.LSTMState(jnp.zeros((2, 4)), jnp.zeros((2, 4))), jnp.zeros((2, 3)))
    net = _ChainedCells().hk_init(xs, state)
    assert net.a.is_initialized and net.b.is_initialized
    outs, _ = jax.jit(lambda m, xs, s: m(xs, s))(net, xs, state)
    s, expected = state, []
    for x in xs:  # the same cells stepped by hand
        y, s = net.step(x, s)
        expected.append(y)
    np.testing.assert_allclose(outs, jnp.stack(expected), rtol=1e-5, atol=1e-6)
