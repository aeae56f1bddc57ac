"""Haiku weights into native pax.nn layers: every twin matches Haiku's apply, round-trips exactly."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax


def _perturb(tree, seed=7):
    """Haiku's init with noise added, so that a wrong transpose or split cannot pass."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
    new = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf
        for leaf, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, new)


def _core(cls, *args):
    def fn(x):
        core = cls(*args)
        return core(x, core.initial_state(x.shape[0]))

    return fn


def _pax_core(m, x):
    return m(x, m.initial_state(x.shape[0]))


def _plain(m, x):
    return m(x)


def _haiku_sequential(x):
    first, norm, last = hk.Linear(5), hk.LayerNorm(-1, True, True), hk.Linear(2)
    return last(jax.nn.relu(norm(first(x))))


R = jax.random.normal
K = jax.random.PRNGKey(1)
IMG = R(K, (2, 6, 6, 3))

# name, Haiku program, pax model, input, pax call
TWINS = [
    ("Linear", lambda x: hk.Linear(4)(x), lambda: pax.nn.Linear(3, 4), R(K, (2, 3)), _plain),
    (
        "Linear no bias",
        lambda x: hk.Linear(4, with_bias=False)(x),
        lambda: pax.nn.Linear(3, 4, with_bias=False),
        R(K, (2, 3)),
        _plain,
    ),
    (
        "Conv1D",
        lambda x: hk.Conv1D(4, 3)(x),
        lambda: pax.nn.Conv1D(3, 4, 3),
        R(K, (2, 7, 3)),
        _plain,
    ),
    (
        "Conv2D",
        lambda x: hk.Conv2D(4, 3, stride=2)(x),
        lambda: pax.nn.Conv2D(3, 4, 3, stride=2),
        IMG,
        _plain,
    ),
    (
        "Conv3D",
        lambda x: hk.Conv3D(2, 2)(x),
        lambda: pax.nn.Conv3D(3, 2, 2),
        R(K, (1, 3, 3, 3, 3)),
        _plain,
    ),
    (
        "Conv1DTranspose",
        lambda x: hk.Conv1DTranspose(4, 3, stride=2)(x),
        lambda: pax.nn.Conv1DTranspose(3, 4, 3, stride=2),
        R(K, (2, 5, 3)),
        _plain,
    ),
    (
        "Conv2DTranspose",
        lambda x: hk.Conv2DTranspose(4, 3, stride=2)(x),
        lambda: pax.nn.Conv2DTranspose(3, 4, 3, stride=2),
        IMG,
        _plain,
    ),
    (
        "Conv3DTranspose",
        lambda x: hk.Conv3DTranspose(2, 2)(x),
        lambda: pax.nn.Conv3DTranspose(3, 2, 2),
        R(K, (1, 3, 3, 3, 3)),
        _plain,
    ),
    (
        "LayerNorm",
        lambda x: hk.LayerNorm(-1, True, True)(x),
        lambda: pax.nn.LayerNorm(3),
        IMG,
        _plain,
    ),
    ("GroupNorm", lambda x: hk.GroupNorm(3)(x), lambda: pax.nn.GroupNorm(3, 3), IMG, _plain),
    (
        "GroupNorm channels_first",
        lambda x: hk.GroupNorm(2, data_format="channels_first")(x),
        lambda: pax.nn.GroupNorm(4, 2, data_format="channels_first"),
        R(K, (2, 4, 3, 3)),
        _plain,
    ),
    ("RMSNorm", lambda x: hk.RMSNorm(-1)(x), lambda: pax.nn.RMSNorm(3), IMG, _plain),
    (
        "Embed",
        lambda x: hk.Embed(10, 4)(x),
        lambda: pax.nn.Embed(10, 4),
        jnp.array([[1, 2, 9]]),
        _plain,
    ),
    ("LSTM", _core(hk.LSTM, 4), lambda: pax.nn.LSTM(3, 4), R(K, (2, 3)), _pax_core),
    ("GRU", _core(hk.GRU, 4), lambda: pax.nn.GRU(3, 4), R(K, (2, 3)), _pax_core),
    (
        "VanillaRNN",
        _core(hk.VanillaRNN, 4),
        lambda: pax.nn.VanillaRNN(3, 4),
        R(K, (2, 3)),
        _pax_core,
    ),
    (
        "VanillaRNN single bias",
        _core(hk.VanillaRNN, 4, False),
        lambda: pax.nn.VanillaRNN(3, 4, double_bias=False),
        R(K, (2, 3)),
        _pax_core,
    ),
    (
        "MultiHeadAttention",
        lambda x: hk.MultiHeadAttention(2, 3, w_init_scale=1.0, value_size=2, model_size=5)(
            x, x, x
        ),
        lambda: pax.nn.MultiHeadAttention(6, 2, 3, value_size=2, out_dim=5),
        R(K, (2, 4, 6)),
        _plain,
    ),
    ("MLP", lambda x: hk.nets.MLP([4, 3])(x), lambda: pax.nn.MLP([6, 4, 3]), R(K, (2, 6)), _plain),
    (
        "Sequential of twins",
        _haiku_sequential,
        lambda: pax.nn.Sequential(
            pax.nn.Linear(3, 5), pax.nn.LayerNorm(5), jax.nn.relu, pax.nn.Linear(5, 2)
        ),
        R(K, (2, 3)),
        _plain,
    ),
]


def _assert_exact(mine, theirs):
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(theirs)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, hk_fn, make, x, call", TWINS, ids=[t[0] for t in TWINS])
def test_twin_loads_haiku_weights_and_round_trips(name, hk_fn, make, x, call):
    f = hk.transform_with_state(hk_fn)
    params, state = f.init(jax.random.PRNGKey(0), x)
    params = _perturb(params)
    model = pax.haiku.load_haiku_params(make(), params, state)
    want, _ = f.apply(params, state, None, x)
    got = call(model, x)
    assert len(jax.tree_util.tree_leaves(got)) == len(jax.tree_util.tree_leaves(want))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    _assert_exact(pax.haiku.to_haiku_params(model), (params, state))


def haiku_bn(x, is_training):
    return hk.BatchNorm(True, True, 0.9)(x, is_training)


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: pax.nn.BatchNorm2D(3, decay=0.9), IMG),
        (lambda: pax.nn.BatchNorm1D(3, decay=0.9), R(K, (8, 3))),
        (lambda: pax.nn.BatchNorm(3, decay=0.9), R(K, (8, 3))),
    ],
    ids=["BatchNorm2D", "BatchNorm1D", "BatchNorm"],
)
def test_batch_norm_moving_averages_follow_haiku(make, x):
    """Haiku's mean_ema/var_ema state (counter, hidden, average) is pax's EMA state, and the
    zero-debiased averages agree step by step, then normalize the same in eval mode."""
    f = hk.transform_with_state(haiku_bn)
    params, state = f.init(jax.random.PRNGKey(0), x, True)
    params = _perturb(params)
    model = pax.haiku.load_haiku_params(make(), params, state)
    for step in range(3):
        xs = x * (step + 1.0) + step
        want, state = f.apply(params, state, None, xs, True)
        np.testing.assert_allclose(model(xs), want, rtol=1e-5, atol=1e-5)
        _, mine_state = pax.haiku.to_haiku_params(model)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
            mine_state,
            state,
        )
    assert int(state["batch_norm/~/mean_ema"]["counter"]) == 3
    want, _ = f.apply(params, state, None, x, False)
    np.testing.assert_allclose(model.eval()(x), want, rtol=1e-5, atol=1e-5)
    reloaded = pax.haiku.load_haiku_params(make(), params, state)
    _assert_exact(pax.haiku.to_haiku_params(reloaded), (params, state))


def test_batch_norm_export_rank_and_channels_first():
    x = R(K, (2, 3, 4, 4))
    f = hk.transform_with_state(
        lambda x: hk.BatchNorm(True, True, 0.9, data_format="channels_first")(x, True)
    )
    params, state = f.init(jax.random.PRNGKey(0), x)
    model = pax.haiku.load_haiku_params(
        pax.nn.BatchNorm2D(3, decay=0.9, data_format="channels_first"), params, state
    )
    assert model.scale.shape == (3,)
    _assert_exact(pax.haiku.to_haiku_params(model), (params, state))
    seq = R(K, (2, 5, 3))  # BatchNorm1D on sequences: Haiku's shapes are (1, 1, 3)
    f = hk.transform_with_state(lambda x: haiku_bn(x, True))
    params, state = f.init(jax.random.PRNGKey(0), seq)
    model = pax.haiku.load_haiku_params(pax.nn.BatchNorm1D(3, decay=0.9), params, state)
    assert pax.haiku.to_haiku_params(model)[0]["batch_norm"]["scale"].shape == (1, 3)
    exported = pax.haiku.to_haiku_params(model, input_ranks={"": 3})
    _assert_exact(exported, (params, state))
    with pytest.raises(ValueError, match=r"input_ranks maps pax paths.*got '\.x': 3"):
        pax.haiku.to_haiku_params(model, input_ranks={".x": 3})
    with pytest.raises(
        ValueError, match=r"params\['batch_norm'\]\['scale'\] \(at \.scale\): given float32\[1, 4\]"
    ):
        bad = {"batch_norm": {"scale": np.ones((1, 4), np.float32)}}
        pax.haiku.load_haiku_params(model, bad, strict=False)


def test_ema_twin():
    f = hk.transform_with_state(lambda x: hk.ExponentialMovingAverage(0.8)(x))
    x = R(K, (3,))
    params, state = f.init(jax.random.PRNGKey(0), x)
    ema = pax.haiku.load_haiku_params(pax.nn.EMA(jnp.zeros(3), 0.8), params, state)
    for step in range(3):
        want, state = f.apply(params, state, None, x + step)
        np.testing.assert_allclose(ema(x + step), want, rtol=1e-6)
    _assert_exact(pax.haiku.to_haiku_params(ema)[1], state)


class Net(pax.Module):
    """A user module: its attributes add no Haiku scope, its layers are named in order."""

    def __init__(self):
        super().__init__()
        self.encoder = pax.nn.MLP([5, 8, 4])
        self.norm = pax.from_haiku(hk.LayerNorm)(-1, True, True)
        self.head = pax.nn.Linear(4, 2)

    def __call__(self, x):
        return self.head(self.norm(self.encoder(x)))


def haiku_net(x):
    x = hk.nets.MLP([8, 4])(x)
    x = hk.LayerNorm(-1, True, True)(x)
    return hk.Linear(2)(x)


def test_user_module_mixing_native_and_wrapped_layers():
    x = R(K, (3, 5))
    model = Net().hk_init(x)
    assert pax.haiku.haiku_module_names(model) == {
        ".encoder": "mlp",
        ".norm": "layer_norm",
        ".head": "linear",
    }
    f = hk.transform_with_state(haiku_net)
    params, state = f.init(jax.random.PRNGKey(0), x)
    params = _perturb(params)
    mine, _ = pax.haiku.to_haiku_params(model)
    assert sorted(mine) == sorted(params)  # ['layer_norm', 'linear', 'mlp/~/linear_0', ...]
    model = pax.haiku.load_haiku_params(model, params, state)
    np.testing.assert_allclose(model(x), f.apply(params, state, None, x)[0], rtol=1e-5)
    _assert_exact(pax.haiku.to_haiku_params(model), (params, state))
    # the same under a scope, added on one side or stripped from the other
    g = hk.transform_with_state(lambda x: hk.to_module(haiku_net)(name="program")(x))
    scoped, _ = g.init(jax.random.PRNGKey(0), x)
    assert "program/mlp/~/linear_0" in scoped
    by_prefix = pax.haiku.load_haiku_params(model, scoped, prefix="program/")
    by_strip = pax.haiku.load_haiku_params(model, scoped, strip_prefix="program/")
    _assert_exact(by_prefix.parameters(), by_strip.parameters())
    np.testing.assert_allclose(by_strip(x), g.apply(scoped, {}, None, x)[0], rtol=1e-5)


class Scaled(pax.Module):
    def __init__(self):
        super().__init__()
        self.fc = pax.nn.Linear(2, 2)
        self.register_parameter("gain", jnp.ones(2))

    def __call__(self, x):
        return self.fc(x) * self.gain


def test_a_module_without_twin_is_refused_by_path():
    model = pax.nn.Sequential(pax.nn.Linear(2, 2), Scaled())
    pattern = r"\.modules\[1\] is a Scaled holding arrays of its own \(\.gain\).*no Haiku twin"
    with pytest.raises(ValueError, match=pattern):
        pax.haiku.to_haiku_params(model)
    with pytest.raises(ValueError, match=pattern):
        pax.haiku.load_haiku_params(model, {})
    with pytest.raises(ValueError, match=r"Sequential holds no layer with a Haiku name"):
        pax.haiku.to_haiku_params(pax.nn.Sequential(jax.nn.relu))
    # a Dropout (no Haiku arrays) is fine
    assert pax.haiku.haiku_module_names(
        pax.nn.Sequential(pax.nn.Dropout(0.5), pax.nn.Linear(2, 2))
    ) == {".modules[1]": "linear"}


def test_a_lazy_layer_must_be_initialized():
    with pytest.raises(ValueError, match=r"\.modules\[0\] \(Linear\).*lazy_init"):
        pax.haiku.to_haiku_params(pax.nn.Sequential(pax.nn.Linear(None, 2)))


def test_mismatched_shapes_name_the_pax_attribute():
    params = {"linear": {"w": np.ones((3, 4), np.float32), "b": np.ones(4, np.float32)}}
    with pytest.raises(
        ValueError,
        match=r"params\['linear'\]\['w'\] \(at \.modules\[0\]\.weight\): given "
        r"float32\[3, 4\], model float32\[2, 4\]",
    ):
        pax.haiku.load_haiku_params(pax.nn.Sequential(pax.nn.Linear(2, 4)), params, strict=False)


def _grads(model, x, call):
    def loss(m):
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(call(m, x)))

    with pax.discard_state_changes():  # gradients only: BatchNorm's new averages are dropped
        grads = jax.grad(loss, allow_int=True)(model)
    return pax.haiku.to_haiku_params(grads)[0]


WRAPPED = [
    (
        "convnet",
        lambda: pax.nn.Sequential(
            pax.from_haiku(hk.Conv2D)(4, 3, stride=2),
            pax.from_haiku(hk.BatchNorm, pass_is_training=True)(True, True, 0.9),
            jax.nn.relu,
            pax.from_haiku(hk.GroupNorm)(2),
            pax.from_haiku(hk.Conv2DTranspose)(3, 2, name="up"),
            pax.from_haiku(hk.Flatten)(),
            pax.from_haiku(hk.nets.MLP)([5, 4]),
            pax.from_haiku(hk.LayerNorm)(-1, True, True),
            pax.from_haiku(hk.RMSNorm)(-1),
            pax.from_haiku(hk.Linear)(2),
        ),
        IMG,
        _plain,
    ),
    (
        "attention",
        lambda: pax.from_haiku(hk.MultiHeadAttention)(2, 3, w_init_scale=1.0, model_size=5),
        R(K, (2, 4, 6)),
        lambda m, x: m(x, x, x),
    ),
    ("embed", lambda: pax.from_haiku(hk.Embed)(10, 4), jnp.array([[1, 9]]), _plain),
    ("lstm", lambda: pax.from_haiku(hk.LSTM)(4), R(K, (2, 3)), _pax_core),
    ("gru", lambda: pax.from_haiku(hk.GRU)(4), R(K, (2, 3)), _pax_core),
    ("rnn", lambda: pax.from_haiku(hk.VanillaRNN)(4), R(K, (2, 3)), _pax_core),
    ("conv1d", lambda: pax.from_haiku(hk.Conv1D)(4, 3, rate=2), R(K, (2, 9, 3)), _plain),
]


@pytest.mark.parametrize(
    "name, make, x, call",
    [  # the convnet takes ~20 s on a loaded machine
        pytest.param(*w, id=w[0], marks=pytest.mark.slow if w[0] == "convnet" else ())
        for w in WRAPPED
    ],
)
def test_to_native_keeps_outputs_gradients_and_names(name, make, x, call):
    if call is _pax_core:
        wrapped = make()
        wrapped = wrapped.hk_init(x, wrapped.initial_state(x.shape[0]))
    else:
        wrapped = make().hk_init(*((x, x, x) if name == "attention" else (x,)))
    params, state = pax.haiku.to_haiku_params(wrapped)
    wrapped = pax.haiku.load_haiku_params(wrapped, _perturb(params), state)
    native, report = pax.haiku.to_native(wrapped)
    assert report.kept == ()
    is_wrapped = lambda m: isinstance(m, pax.haiku.HaikuModule)
    assert not any(map(is_wrapped, jax.tree_util.tree_leaves(native, is_leaf=is_wrapped)))
    assert pax.haiku.haiku_module_names(native) == pax.haiku.haiku_module_names(wrapped)
    _assert_exact(pax.haiku.to_haiku_params(native), pax.haiku.to_haiku_params(wrapped))
    for a, b in zip(
        jax.tree_util.tree_leaves(call(native.copy(), x)),
        jax.tree_util.tree_leaves(call(wrapped.copy(), x)),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    mine, theirs = _grads(native, x, call), _grads(wrapped, x, call)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), mine, theirs
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(call(native.eval(), x)),
        jax.tree_util.tree_leaves(call(wrapped.eval(), x)),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_to_native_reports_what_stays_wrapped():
    def program(x):
        return hk.Linear(2)(x)

    x = R(K, (2, 3))
    model = pax.nn.Sequential(
        pax.from_haiku(hk.Linear)(3), pax.haiku.from_transformed(program)
    ).hk_init(x)
    bn = pax.from_haiku(hk.BatchNorm, delay=False)(True, True, 0.9)(x, is_training=True)
    mixed = pax.nn.Sequential(*model.modules, bn)
    native, report = pax.haiku.to_native(mixed)
    assert report.converted == (".modules[0]: hk.Linear -> pax.nn.Linear",)
    assert report.kept == (
        ".modules[1]: a program (it is a whole program (no single twin))",
        ".modules[2]: hk.BatchNorm (it is called with is_training (build it with "
        "pass_is_training=True))",
    )
    assert isinstance(native.modules[0], pax.nn.Linear)
    assert native.modules[1] is not model.modules[1] and isinstance(
        native.modules[1], pax.haiku.HaikuProgram
    )
    with pytest.raises(
        ValueError, match=r"(?s)some wrapped Haiku modules stay wrapped.*hk\.BatchNorm"
    ):
        pax.haiku.to_native(mixed, strict=True)
    with pytest.raises(TypeError, match=r"to_native expects a pax\.Module"):
        pax.haiku.to_native([1])


def test_layer_stack_params_load_into_a_stack():
    def block(x):
        return jax.nn.relu(hk.LayerNorm(-1, True, True)(hk.Linear(6)(x)))

    def forward(x):
        x = hk.Linear(6)(x)
        return hk.layer_stack(3, name="blocks")(block)(x)

    def make_block(key):
        return pax.nn.Sequential(pax.nn.Linear(6, 6, rng_key=key), pax.nn.LayerNorm(6), jax.nn.relu)

    x = R(K, (2, 4))
    f = hk.transform_with_state(forward)
    params, state = f.init(jax.random.PRNGKey(0), x)
    params = _perturb(params)
    assert params["blocks/linear"]["w"].shape == (3, 6, 6)
    model = pax.nn.Sequential(pax.nn.Linear(4, 6), pax.nn.Stack(make_block, 3))
    names = {".modules[1]": "blocks"}
    assert pax.haiku.haiku_module_names(model, names=names) == {
        ".modules[0]": "linear",
        ".modules[1].stacked.modules[0]": "blocks/linear",
        ".modules[1].stacked.modules[1]": "blocks/layer_norm",
    }
    model = pax.haiku.load_haiku_params(model, params, state, names=names)
    np.testing.assert_allclose(model(x), f.apply(params, state, None, x)[0], rtol=1e-5, atol=1e-5)
    _assert_exact(pax.haiku.to_haiku_params(model, names=names), (params, state))
    # the default scope name of hk.layer_stack
    g = hk.transform_with_state(lambda x: hk.layer_stack(3)(block)(x))
    params, state = g.init(jax.random.PRNGKey(0), jnp.ones((2, 6)))
    stack = pax.haiku.load_haiku_params(pax.nn.Stack(make_block, 3), params, state)
    x6 = R(K, (2, 6))
    np.testing.assert_allclose(stack(x6), g.apply(params, state, None, x6)[0], rtol=1e-5)


def test_native_layers_named_by_name():
    def forward(x):
        x = hk.Linear(3, name="encoder")(x)
        return hk.Linear(2, name="encoder")(x)

    params, _ = hk.transform_with_state(forward).init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
    assert sorted(params) == ["encoder", "encoder_1"]
    model = pax.nn.Sequential(
        pax.nn.Linear(2, 3, name="encoder"), pax.nn.Linear(3, 2, name="encoder")
    )
    assert sorted(pax.haiku.to_haiku_params(model)[0]) == ["encoder", "encoder_1"]
    pax.haiku.load_haiku_params(model, params)


def test_a_mixed_precision_layer_keeps_its_haiku_name():
    jmp = pytest.importorskip("jmp")
    policy = jmp.get_policy("params=float32,compute=bfloat16,output=float32")
    layer = pax.nn.Linear(2, 3).mixed_precision(policy)  # a subclass of Linear
    params, _ = pax.haiku.to_haiku_params(layer)
    assert sorted(params) == ["linear"] and params["linear"]["w"].shape == (2, 3)
    again = pax.haiku.load_haiku_params(layer, params)
    assert type(again) is type(layer)


class _ScaledLinear(pax.nn.Linear):
    """A twin subclass that adds an array of its own (no Haiku entry for it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_parameter("gain", jnp.ones(()))


def test_a_twin_subclass_with_arrays_of_its_own_is_refused_not_silently_partial():
    model = pax.nn.Sequential(_ScaledLinear(2, 3))
    with pytest.raises(
        ValueError, match=r"\.modules\[0\] \(_ScaledLinear\) holds arrays its Haiku"
    ):
        pax.haiku.to_haiku_params(model)
    params, state = pax.haiku.to_haiku_params(pax.nn.Sequential(pax.nn.Linear(2, 3)))
    with pytest.raises(ValueError, match=r"\.gain; they would be left out of the Haiku dicts"):
        pax.haiku.load_haiku_params(model, params, state)
