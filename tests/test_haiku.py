"""`pax.from_haiku` and `hk_init`: wrapped Haiku modules equal Haiku's own `apply`."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax.haiku import HaikuModule

RTOL = 1e-5


def assert_trees_close(a, b, rtol=RTOL, atol=1e-6):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"{ta} != {tb}"
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _sum_all(tree):
    return sum(jnp.sum(jnp.asarray(x, jnp.float32) ** 2) for x in jax.tree_util.tree_leaves(tree))


def check_against_haiku(module, forward, args, *, is_training=None, rng=None):
    """`module(*args)` equals Haiku's apply of `forward` eagerly, under jit, and in gradients.

    `forward` builds the module with plain Haiku, independently of pax's configuration.
    """
    f = hk.transform_with_state(forward)
    extra = {} if is_training is None else {"is_training": is_training}

    def hk_loss(params, state, *xs):
        out, new_state = f.apply(params, state, rng, *xs, **extra)
        return _sum_all(out), (out, new_state)

    def pax_loss(params, model, *xs):
        model = model.update(params)
        out = model(*xs)
        return _sum_all(out), (out, model)

    hk_grads, (want, want_state) = jax.jit(jax.grad(hk_loss, has_aux=True))(
        module.params, module.state, *args
    )
    if not module.training:
        want_state = module.state

    eager = module.copy()
    assert_trees_close(eager(*args), want)
    assert_trees_close(eager.state, want_state)

    grads, (out_jit, model_jit) = jax.jit(jax.grad(pax_loss, has_aux=True))(
        module.parameters(), module, *args
    )
    assert_trees_close(out_jit, want)
    assert_trees_close(model_jit.state, want_state)
    assert_trees_close(grads.params, hk_grads, rtol=1e-4)
    if hk_grads:
        assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree_util.tree_leaves(hk_grads))


def test_seed_lstm_example_with_hidden_size():
    hidden_dim = 8
    mylstm = pax.from_haiku(hk.LSTM)(hidden_size=hidden_dim)
    dummy_x = np.empty((1, hidden_dim), dtype=np.float32)
    dummy_hx = hk.LSTMState(dummy_x, dummy_x)
    mylstm = mylstm.hk_init(dummy_x, dummy_hx)
    assert mylstm.params["lstm/linear"]["w"].shape == (2 * hidden_dim, 4 * hidden_dim)

    x = jax.random.normal(jax.random.PRNGKey(1), (3, hidden_dim))
    h = mylstm.initial_state(3)
    h = hk.LSTMState(h.hidden + 0.5, h.cell - 0.5)
    check_against_haiku(mylstm, lambda x, s: hk.LSTM(hidden_dim)(x, s), (x, h))


def test_linear_and_uninitialized_error():
    fc = pax.haiku.HaikuModule(hk.Linear, (3,))  # built without the key of a first call
    assert not fc.is_initialized and fc.params is None
    x = jnp.ones((2, 4))
    with pytest.raises(RuntimeError, match=r"HaikuModule\(hk.Linear\(output_size=3\)\) is not"):
        fc(x)
    with pytest.raises(RuntimeError, match=r"model = model.hk_init\(\*dummy_inputs\)"):
        jax.jit(lambda m, x: m(x))(fc, x)
    with pytest.raises(RuntimeError, match=r"is not initialized"):
        jax.jit(lambda x: pax.from_haiku(hk.Linear)(3)(x))(x)  # built inside: no key drawn
    fc = fc.hk_init(x)
    assert fc.is_initialized
    check_against_haiku(
        fc, lambda x: hk.Linear(3)(x), (jax.random.normal(pax.next_rng_key(), (5, 4)),)
    )


def test_conv2d():
    conv = pax.from_haiku(hk.Conv2D)(output_channels=4, kernel_shape=3, stride=2)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 6, 3))
    conv = conv.hk_init(x[:1])
    check_against_haiku(conv, lambda x: hk.Conv2D(4, 3, stride=2)(x), (x,))


def test_batch_norm_training_updates_state_eval_does_not():
    bn = pax.from_haiku(hk.BatchNorm, pass_is_training=True)(True, True, 0.9)
    bn = bn.hk_init(jnp.zeros((1, 2, 2, 3)))
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 2, 2, 3)) * 2 + 1

    def forward(x, is_training):
        return hk.BatchNorm(True, True, 0.9)(x, is_training)

    check_against_haiku(bn, forward, (x,), is_training=True)
    before = bn.state
    trained = bn.copy()
    trained(x)
    mean = trained.state["batch_norm/~/mean_ema"]["hidden"]
    assert not np.allclose(mean, before["batch_norm/~/mean_ema"]["hidden"])

    evaluated = trained.eval()
    check_against_haiku(evaluated, forward, (x,), is_training=False)
    state = evaluated.state
    evaluated(x)
    assert evaluated.state is state

    with pytest.raises(TypeError, match=r"do not pass is_training.*model.eval\(\)"):
        bn(x, is_training=False)

    # a model in eval mode initializes too (Haiku's init runs in training mode), stays in eval
    lazy = pax.from_haiku(hk.BatchNorm, pass_is_training=True)(True, True, 0.9).eval()
    ready = lazy.hk_init(x, rng_key=jax.random.PRNGKey(0))
    assert not ready.training
    want = hk.transform_with_state(forward).init(jax.random.PRNGKey(0), x, True)
    assert_trees_close((ready.params, ready.state), want)


def test_gru():
    gru = pax.from_haiku(hk.GRU)(hidden_size=5)
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 3))
    gru = gru.hk_init(x, gru.initial_state(2))
    h = jnp.full((2, 5), 0.3)
    check_against_haiku(gru, lambda x, h: hk.GRU(5)(x, h), (x, h))


def test_embed():
    emb = pax.from_haiku(hk.Embed)(vocab_size=7, embed_dim=4)
    ids = jnp.array([[0, 3, 6], [1, 1, 2]])
    emb = emb.hk_init(ids)
    assert emb.params["embed"]["embeddings"].shape == (7, 4)
    check_against_haiku(emb, lambda ids: hk.Embed(7, 4)(ids), (ids,))


def test_multi_head_attention():
    w_init = hk.initializers.VarianceScaling(1.0)
    mha = pax.from_haiku(hk.MultiHeadAttention)(num_heads=2, key_size=4, w_init=w_init)
    q = jax.random.normal(jax.random.PRNGKey(5), (2, 3, 6))
    kv = jax.random.normal(jax.random.PRNGKey(6), (2, 5, 6))
    mha = mha.hk_init(q, kv, kv)

    def forward(q, k, v):
        return hk.MultiHeadAttention(2, 4, w_init=hk.initializers.VarianceScaling(1.0))(q, k, v)

    check_against_haiku(mha, forward, (q, kv, kv))


def test_mlp_and_equal_treedefs():
    mlp = pax.from_haiku(hk.nets.MLP)([8, 3], activate_final=True)
    twin = pax.from_haiku(hk.nets.MLP)(output_sizes=[8, 3], activate_final=True)
    other = pax.from_haiku(hk.nets.MLP)([8, 4], activate_final=True)
    structure = jax.tree_util.tree_structure
    assert structure(mlp) == structure(twin)
    assert structure(mlp) != structure(other)
    x = jax.random.normal(jax.random.PRNGKey(7), (4, 5))
    mlp, twin = mlp.hk_init(x), twin.hk_init(x)
    assert structure(mlp) == structure(twin)
    assert sorted(mlp.params) == ["mlp/~/linear_0", "mlp/~/linear_1"]
    check_against_haiku(mlp, lambda x: hk.nets.MLP([8, 3], activate_final=True)(x), (x,))


def test_equal_treedefs_with_initializers_and_no_recompilation():
    def make():
        return pax.from_haiku(hk.Linear)(3, w_init=hk.initializers.TruncatedNormal(0.5))

    a, b = make(), make()
    assert type(a) is type(b) is HaikuModule
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    x = jnp.ones((2, 4))
    a, b = a.hk_init(x), b.hk_init(x)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    traces = []

    @jax.jit
    def f(m, x):
        traces.append(1)
        return m(x), m

    f(a, x)
    f(b, x)
    assert len(traces) == 1
    c = pax.from_haiku(hk.Linear)(3, w_init=hk.initializers.TruncatedNormal(0.7)).hk_init(x)
    assert jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(c)


class _NoisyDouble(hk.Module):
    def __call__(self, x):
        return 2 * x + jax.random.normal(hk.next_rng_key(), x.shape)


def test_use_rng_advances_key_and_matches_haiku():
    noisy = pax.from_haiku(_NoisyDouble, use_rng=True)()
    x = jnp.zeros((3,))
    noisy = noisy.hk_init(x)
    key = noisy.rng_key
    y1 = noisy(x)
    new_key, sub = jax.random.split(key)
    want, _ = hk.transform_with_state(lambda x: _NoisyDouble()(x)).apply({}, {}, sub, x)
    np.testing.assert_allclose(y1, want)
    np.testing.assert_array_equal(noisy.rng_key, new_key)
    y2 = noisy(x)
    assert not np.allclose(y1, y2)

    jitted = jax.jit(lambda m, x: (m(x), m))
    (y3, m3), (y4, _) = jitted(noisy, x), jitted(noisy, x)
    np.testing.assert_array_equal(y3, y4)  # same input module, same key
    assert not np.allclose(jitted(m3, x)[0], y3)  # the returned module moved on

    plain = pax.from_haiku(_NoisyDouble)()
    with pytest.raises(RuntimeError, match=r"use_rng=True"):
        plain.hk_init(x)


def test_hk_init_whole_tree_is_deterministic_and_leaves_no_trace():
    def build():
        return pax.nn.Sequential(
            pax.from_haiku(hk.Linear)(6),
            pax.from_haiku(hk.BatchNorm, pass_is_training=True)(True, True, 0.9),
            jax.nn.relu,
            pax.from_haiku(hk.Linear)(2),
        )

    x = jax.random.normal(jax.random.PRNGKey(8), (4, 3))
    model = build()
    key = jax.random.PRNGKey(11)
    eager = model.hk_init(x, rng_key=key)
    jitted = build().hk_init(x, rng_key=key, enable_jit=True)
    assert all(m.is_initialized for m in eager.modules if isinstance(m, HaikuModule))
    assert model.modules[0].params is None  # the input model is untouched
    assert_trees_close(eager, jitted)
    # Haiku's initial BatchNorm state: the dummy forward pass did not update it.
    bn_init = hk.transform_with_state(lambda x: hk.BatchNorm(True, True, 0.9)(x, True))
    _, want_state = bn_init.init(key, jnp.zeros((4, 6)))
    counter = eager.modules[1].state["batch_norm/~/var_ema"]["counter"]
    assert_trees_close(counter, want_state["batch_norm/~/var_ema"]["counter"])
    assert jax.tree_util.tree_structure(eager.modules[1].state) == jax.tree_util.tree_structure(
        want_state
    )
    # distinct keys per module, and reproducible
    w0, w3 = eager.modules[0].params["linear"]["w"], eager.modules[3].params["linear"]["w"]
    assert not np.allclose(w0[:2, :2], w3[:2, :2])
    again = build().hk_init(x, rng_key=key)
    assert_trees_close(again, eager)
    # already initialized: nothing to do
    assert_trees_close(eager.hk_init(x), eager)


def test_hk_init_errors():
    class Branchy(pax.Module):
        def __init__(self):
            super().__init__()
            self.a = pax.from_haiku(hk.Linear)(2)
            self.b = pax.from_haiku(hk.Linear)(2)

        def __call__(self, x, use_b=False):
            return self.b(x) if use_b else self.a(x)

    x = jnp.ones((1, 3))
    with pytest.raises(ValueError, match=r"did not call 1 pax.from_haiku module.*\.b \(hk.Linear"):
        Branchy().hk_init(x)
    with pytest.raises(ValueError, match=r"\.a \(hk.Linear\(output_size=2\)\)"):
        Branchy().hk_init(x, use_b=True)
    with pytest.raises(TypeError, match=r"hk_init expects a pax.Module"):
        pax.haiku.hk_init(lambda x: x, x)

    class Stray(pax.Module):
        def __init__(self):
            super().__init__()
            self.kept = pax.from_haiku(hk.Linear)(2)

        def __call__(self, x):
            return pax.from_haiku(hk.Linear)(2)(self.kept(x))

    with pytest.raises(RuntimeError, match=r"not part of the model passed to hk_init"):
        Stray().hk_init(x)


def test_builder_errors_and_delay_false():
    with pytest.raises(
        TypeError, match=r"expects a Haiku module class.*pax.from_haiku\(hk.Linear\)"
    ):
        pax.from_haiku(jax.nn.relu)
    with pytest.raises(
        TypeError, match=r"unknown argument 'hidden_dim' \(did you mean 'hidden_size'\?\)"
    ):
        pax.from_haiku(hk.LSTM)(hidden_dim=8)
    with pytest.raises(AttributeError, match=r"hk.Linear has no initial_state method"):
        pax.from_haiku(hk.Linear)(3).initial_state(1)
    with pytest.raises(AttributeError, match=r"hk.Linear has no public method 'nope'"):
        pax.from_haiku(hk.Linear)(3).call_method("nope")
    with pytest.raises(RuntimeError, match=r"is not initialized"):
        pax.haiku.HaikuModule(hk.Linear, (3,)).call_method("__call__", jnp.ones((1, 2)))

    with pytest.raises(TypeError, match=r"a constructor argument is a traced value"):
        jax.jit(lambda s: pax.from_haiku(hk.Linear)(3, w_init=hk.initializers.Constant(s)))(1.0)

    make = pax.from_haiku(hk.Linear, delay=False)(3)
    fc = make(jnp.ones((1, 2)), rng_key=jax.random.PRNGKey(0))
    fc2 = make(jnp.ones((1, 2)), rng_key=jax.random.PRNGKey(0))
    assert isinstance(fc, HaikuModule) and fc.is_initialized
    assert_trees_close(fc, fc2)
    want, _ = hk.transform_with_state(lambda x: hk.Linear(3)(x)).init(
        jax.random.PRNGKey(0), jnp.ones((1, 2))
    )
    assert_trees_close(fc.params, want)


def test_pax_views_work_on_wrapped_modules():
    fc = pax.from_haiku(hk.Linear)(3).hk_init(jnp.ones((1, 2)))
    assert len(jax.tree_util.tree_leaves(fc.parameters())) == 2
    frozen = fc.freeze()
    assert jax.tree_util.tree_leaves(frozen.parameters()) == []
    np.testing.assert_allclose(frozen(jnp.ones((1, 2))), fc(jnp.ones((1, 2))))
    assert "hk.Linear(output_size=3)" in repr(fc)
    assert "uninitialized" in repr(pax.from_haiku(hk.Linear)(3))
    assert "9" in fc.summary()


def test_hk_init_through_dynamic_unroll_explains_the_fix():
    class Seq(pax.Module):
        def __init__(self):
            super().__init__()
            self.cell = pax.from_haiku(hk.LSTM)(hidden_size=4)

        def __call__(self, xs):
            state = self.cell.initial_state(xs.shape[1])
            return pax.dynamic_unroll(self.cell, xs, state)[0]

    xs = jnp.ones((3, 2, 5))
    with pytest.raises(RuntimeError, match=r"jax.lax.scan or pax.dynamic_unroll.*cell.hk_init"):
        Seq().hk_init(xs)
    model = Seq()
    model.cell = model.cell.hk_init(xs[0], model.cell.initial_state(2))
    assert model(xs).shape == (3, 2, 4)


def test_config_pickles_and_keeps_equality():
    import pickle

    module = pax.from_haiku(hk.nets.MLP)([4, 2], w_init=hk.initializers.VarianceScaling(2.0))
    again = pickle.loads(pickle.dumps(module))
    assert again.hk_config == module.hk_config and hash(again.hk_config) == hash(module.hk_config)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(module)


def test_public_names_resolve_and_have_examples():
    for name in pax.haiku.__all__:
        obj = getattr(pax.haiku, name)
        assert ">>>" in (obj.__doc__ or ""), f"pax.haiku.{name} has no runnable example"
    assert pax.from_haiku is pax.haiku.from_haiku


def test_from_haiku_initializes_on_its_first_call_as_pax_v02_did():
    x = jnp.ones((2, 4))
    fc = pax.from_haiku(hk.Linear)(3)
    assert not fc.is_initialized and "init_key" in fc.registry
    key = fc.init_key
    y = fc(x)  # eagerly: in place, with the key drawn when it was built
    assert fc.is_initialized and "init_key" not in fc.registry
    reference = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(3)(x)))
    params = reference.init(key, x)
    np.testing.assert_allclose(y, reference.apply(params, x), rtol=1e-6)
    jitted = pax.from_haiku(hk.Linear)(3)
    y, jitted = jax.jit(lambda m, x: (m(x), m))(jitted, x)  # under jit: returned, initialized
    assert jitted.is_initialized
    lost = pax.from_haiku(hk.Linear)(3)
    jax.jit(lambda m, x: m(x))(lost, x)  # initialized on a copy that is not returned
    with pytest.raises(RuntimeError, match=r"HaikuModule\.\w+ was changed inside"):
        lost(x)
