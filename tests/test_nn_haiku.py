"""Every pax.nn layer that Haiku also has gives Haiku's outputs with the same weights."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

TOL = {"rtol": 2e-5, "atol": 2e-5}


def _x(shape, seed=0):
    """A standard normal test input (numpy: no compilation per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _fill(template, values):
    """Haiku params/state shaped as `template`, taking every leaf from `values` (all required)."""
    assert set(template) == set(values), (sorted(template), sorted(values))
    out = {}
    for module, leaves in template.items():
        assert set(leaves) == set(values[module]), (module, sorted(leaves))
        out[module] = {
            name: jnp.reshape(jnp.asarray(values[module][name]), leaf.shape).astype(leaf.dtype)
            for name, leaf in leaves.items()
        }
    return out


def _hk_template(f, *args):
    """The shapes of Haiku's params and state, without running its initializers."""
    return jax.eval_shape(f.init, jax.random.PRNGKey(1), *args)


def _hk_run(fn, values, *args):
    """Applies hk.transform_with_state(fn) (stateless) with the given params."""
    f = hk.transform_with_state(fn)
    params, state = _hk_template(f, *args)
    assert not state
    return jax.jit(f.apply)(_fill(params, values), {}, None, *args)


def _wb(layer, name):
    values = {"w": layer.weight}
    if layer.bias is not None:
        values["b"] = layer.bias
    return {name: values}


# --- Linear and MLP --------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_outputs_and_grads(with_bias):
    fc = pax.nn.Linear(3, 4, with_bias=with_bias, b_init=pax.initializers.random_normal())
    x = _x((2, 3))
    expected, _ = _hk_run(lambda x: hk.Linear(4, with_bias=with_bias)(x), _wb(fc, "linear"), x)
    np.testing.assert_allclose(fc(x), expected, **TOL)

    f = hk.transform(lambda x: hk.Linear(4, with_bias=with_bias)(x))
    params = _fill(_hk_template(f, x), _wb(fc, "linear"))
    hk_grads = jax.grad(lambda p: jnp.sum(jnp.sin(f.apply(p, None, x))))(params)
    grads = jax.grad(lambda p: jnp.sum(jnp.sin(fc.update(p)(x))))(fc.parameters())
    np.testing.assert_allclose(grads.weight, hk_grads["linear"]["w"], **TOL)
    if with_bias:
        np.testing.assert_allclose(grads.bias, hk_grads["linear"]["b"], **TOL)


def test_mlp():
    mlp = pax.nn.MLP([3, 8, 5], activation=jax.nn.gelu, activate_final=True)
    x = _x((2, 3))
    values = {
        "mlp/~/linear_0": {"w": mlp.layers[0].weight, "b": mlp.layers[0].bias},
        "mlp/~/linear_1": {"w": mlp.layers[1].weight, "b": mlp.layers[1].bias},
    }
    net = lambda x: hk.nets.MLP([8, 5], activation=jax.nn.gelu, activate_final=True)(x)
    expected, _ = _hk_run(net, values, x)
    np.testing.assert_allclose(mlp(x), expected, **TOL)


# --- convolutions ---------------------------------------------------------------------------

CONV_CASES = [
    ("1d", pax.nn.Conv1D, hk.Conv1D, {"kernel_shape": 3}, (2, 9, 4)),
    (
        "1d_valid_stride_nocbias",
        pax.nn.Conv1D,
        hk.Conv1D,
        {"kernel_shape": 4, "stride": 2, "padding": "VALID", "with_bias": False},
        (2, 11, 4),
    ),
    (
        "1d_channels_first_dilation_groups",
        pax.nn.Conv1D,
        hk.Conv1D,
        {
            "kernel_shape": 3,
            "dilation": 2,
            "feature_group_count": 2,
            "data_format": "channels_first",
        },
        (2, 4, 10),
    ),
    (
        "2d_explicit_pad_unbatched",
        pax.nn.Conv2D,
        hk.Conv2D,
        {"kernel_shape": (3, 2), "stride": (2, 1), "padding": ((1, 2), (0, 1))},
        (7, 6, 4),
    ),
    (
        "2d_channels_first",
        pax.nn.Conv2D,
        hk.Conv2D,
        {"kernel_shape": 3, "data_format": "channels_first"},
        (2, 4, 6, 6),
    ),
    ("3d", pax.nn.Conv3D, hk.Conv3D, {"kernel_shape": 2, "stride": 2}, (1, 4, 4, 4, 4)),
    (
        "1d_transpose",
        pax.nn.Conv1DTranspose,
        hk.Conv1DTranspose,
        {"kernel_shape": 3, "stride": 2},
        (2, 5, 4),
    ),
    (
        "2d_transpose_valid_channels_first",
        pax.nn.Conv2DTranspose,
        hk.Conv2DTranspose,
        {"kernel_shape": 3, "stride": 2, "padding": "VALID", "data_format": "channels_first"},
        (2, 4, 5, 5),
    ),
    (
        "2d_transpose_explicit",
        pax.nn.Conv2DTranspose,
        hk.Conv2DTranspose,
        {"kernel_shape": 4, "stride": 2, "padding": ((2, 2), (2, 2))},
        (1, 5, 5, 4),
    ),
    (
        "2d_transpose_output_shape",
        pax.nn.Conv2DTranspose,
        hk.Conv2DTranspose,
        {"kernel_shape": 3, "stride": 2, "output_shape": (9, 10)},
        (1, 5, 5, 4),
    ),
    (
        "1d_transpose_valid_output_shape",
        pax.nn.Conv1DTranspose,
        hk.Conv1DTranspose,
        {"kernel_shape": 4, "stride": 3, "padding": "VALID", "output_shape": 13},
        (2, 4, 4),
    ),
    (
        "3d_transpose",
        pax.nn.Conv3DTranspose,
        hk.Conv3DTranspose,
        {"kernel_shape": 2, "stride": 2, "with_bias": False},
        (1, 3, 3, 3, 4),
    ),
]


@pytest.mark.parametrize(
    "name, pax_cls, hk_cls, kwargs, shape", CONV_CASES, ids=[c[0] for c in CONV_CASES]
)
def test_conv(name, pax_cls, hk_cls, kwargs, shape):
    conv = pax_cls(
        4,
        6,
        **kwargs,
        b_init=pax.initializers.random_normal() if kwargs.get("with_bias", True) else None,
    )
    x = _x(shape)
    hk_name = {
        hk.Conv1D: "conv1_d",
        hk.Conv2D: "conv2_d",
        hk.Conv3D: "conv3_d",
        hk.Conv1DTranspose: "conv1_d_transpose",
        hk.Conv2DTranspose: "conv2_d_transpose",
        hk.Conv3DTranspose: "conv3_d_transpose",
    }[hk_cls]
    hk_kwargs = {("rate" if k == "dilation" else k): v for k, v in kwargs.items()}
    expected, _ = _hk_run(lambda x: hk_cls(6, **hk_kwargs)(x), _wb(conv, hk_name), x)
    got = conv(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TOL)


def test_conv_transpose_with_dilation_matches_lax():
    conv = pax.nn.Conv2DTranspose(3, 5, kernel_shape=3, stride=2, dilation=2, with_bias=False)
    x = _x((2, 5, 5, 3))
    expected = jax.lax.conv_transpose(
        x,
        conv.weight,
        (2, 2),
        "SAME",
        rhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWOI", "NHWC"),
    )
    np.testing.assert_allclose(conv(x), expected, **TOL)


def test_grouped_conv_transpose_equals_one_conv_per_group():
    conv = pax.nn.Conv1DTranspose(4, 6, kernel_shape=3, stride=2, feature_group_count=2)
    x = _x((2, 5, 4))
    parts = []
    for g in range(2):
        single = pax.nn.Conv1DTranspose(2, 3, kernel_shape=3, stride=2, with_bias=False)
        single.weight = conv.weight[:, 3 * g : 3 * (g + 1), :]
        parts.append(single(x[..., 2 * g : 2 * (g + 1)]))
    np.testing.assert_allclose(conv(x), jnp.concatenate(parts, -1) + conv.bias, **TOL)


# --- normalization --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"axis": (1, 2), "use_fast_variance": True},
        {"create_scale": False, "create_offset": False},
    ],
)
def test_layer_norm(kwargs):
    ln = pax.nn.LayerNorm(5, scale_init=None, **kwargs)
    if ln.scale is not None:
        ln.scale = ln.scale + _x((5,), 1)
        ln.offset = _x((5,), 2)
    x = _x((2, 3, 5)) * 3 + 1
    hk_kwargs = {
        "axis": kwargs.get("axis", -1),
        "create_scale": ln.scale is not None,
        "create_offset": ln.offset is not None,
        "use_fast_variance": kwargs.get("use_fast_variance", False),
    }
    values = (
        {"layer_norm": {}}
        if ln.scale is None
        else {"layer_norm": {"scale": ln.scale, "offset": ln.offset}}
    )
    if ln.scale is None:
        expected = hk.transform(lambda x: hk.LayerNorm(**hk_kwargs)(x)).apply({}, None, x)
    else:
        expected, _ = _hk_run(lambda x: hk.LayerNorm(**hk_kwargs)(x), values, x)
    np.testing.assert_allclose(ln(x), expected, **TOL)


def test_rms_norm():
    rms = pax.nn.RMSNorm(5, axis=(-2, -1))
    rms.scale = _x((5,), 1)
    x = _x((2, 3, 5))
    expected, _ = _hk_run(
        lambda x: hk.RMSNorm(axis=(-2, -1))(x), {"rms_norm": {"scale": rms.scale}}, x
    )
    np.testing.assert_allclose(rms(x), expected, **TOL)


@pytest.mark.parametrize(
    "data_format, shape", [("channels_last", (2, 3, 3, 6)), ("channels_first", (2, 6, 4))]
)
def test_group_norm(data_format, shape):
    gn = pax.nn.GroupNorm(6, groups=3, data_format=data_format)
    gn.scale, gn.offset = _x((6,), 1), _x((6,), 2)
    x = _x(shape) * 2 + 0.5
    values = {"group_norm": {"scale": gn.scale, "offset": gn.offset}}
    expected, _ = _hk_run(lambda x: hk.GroupNorm(3, data_format=data_format)(x), values, x)
    np.testing.assert_allclose(gn(x), expected, **TOL)


@pytest.mark.parametrize(
    "data_format, shape", [("channels_last", (4, 3, 3)), ("channels_first", (4, 3, 5))]
)
def test_batch_norm_training_steps_then_eval(data_format, shape):
    bn = pax.nn.BatchNorm(3, decay=0.8, eps=1e-3, data_format=data_format)
    bn.scale, bn.offset = _x((3,), 1), _x((3,), 2)
    hk_bn = lambda x, t: hk.BatchNorm(True, True, 0.8, eps=1e-3, data_format=data_format)(
        x, is_training=t
    )
    f = hk.transform_with_state(hk_bn)
    params, state = f.init(jax.random.PRNGKey(0), _x(shape), True)
    params = _fill(params, {"batch_norm": {"scale": bn.scale, "offset": bn.offset}})
    for step in range(3):
        x = _x(shape, step) * (step + 1) + step
        expected, state = f.apply(params, state, None, x, True)
        np.testing.assert_allclose(bn(x), expected, **TOL)
    np.testing.assert_allclose(
        bn.moving_mean, state["batch_norm/~/mean_ema"]["average"].reshape(-1), **TOL
    )
    np.testing.assert_allclose(
        bn.moving_var, state["batch_norm/~/var_ema"]["average"].reshape(-1), **TOL
    )
    np.testing.assert_allclose(
        bn.mean_ema.hidden, state["batch_norm/~/mean_ema"]["hidden"].reshape(-1), **TOL
    )
    assert int(bn.mean_ema.counter) == int(state["batch_norm/~/mean_ema"]["counter"]) == 3
    frozen = bn.eval()
    x = _x(shape, 9)
    expected, _ = f.apply(params, state, None, x, False)
    np.testing.assert_allclose(frozen(x), expected, **TOL)
    np.testing.assert_array_equal(frozen.moving_mean, bn.moving_mean)  # eval leaves states alone


def test_batch_norm_without_scale_and_offset():
    bn = pax.nn.BatchNorm(3, create_scale=False, create_offset=False)
    x = _x((5, 3)) + 2
    f = hk.transform_with_state(lambda x: hk.BatchNorm(False, False, 0.9)(x, is_training=True))
    _, state = f.init(None, x)
    expected, _ = f.apply({}, state, None, x)
    np.testing.assert_allclose(bn(x), expected, **TOL)


@pytest.mark.parametrize("zero_debias", [True, False])
def test_ema_matches_haiku(zero_debias):
    ema = pax.nn.EMA(jnp.zeros(3), decay=0.7, zero_debias=zero_debias)
    f = hk.transform_with_state(
        lambda x: hk.ExponentialMovingAverage(0.7, zero_debias=zero_debias)(x)
    )
    _, state = f.init(None, jnp.zeros(3))
    for step in range(4):
        x = _x((3,), step)
        expected, state = f.apply({}, state, None, x)
        np.testing.assert_allclose(ema(x), expected, **TOL)
    np.testing.assert_allclose(ema.hidden, state["exponential_moving_average"]["hidden"], **TOL)


def test_ema_warmup_matches_haiku():
    ema = pax.nn.EMA(jnp.zeros(()), decay=0.5, zero_debias=False, warmup_length=2)
    f = hk.transform_with_state(
        lambda x: hk.ExponentialMovingAverage(0.5, zero_debias=False, warmup_length=2)(x)
    )
    _, state = f.init(None, jnp.zeros(()))
    for step in range(4):
        x = jnp.asarray(float(step + 1))
        expected, state = f.apply({}, state, None, x)
        np.testing.assert_allclose(ema(x), expected, **TOL)


# --- dropout, embed, pooling ----------------------------------------------------------------


def test_dropout_mask_is_haikus_with_the_split_key():
    key = jax.random.PRNGKey(5)
    drop = pax.nn.Dropout(0.3, rng_key=key)
    x = _x((4, 6)) + 3
    _, sub = jax.random.split(key)
    np.testing.assert_allclose(drop(x), hk.dropout(sub, 0.3, x), **TOL)
    new_key, sub2 = jax.random.split(jax.random.split(key)[0])
    np.testing.assert_allclose(drop(x), hk.dropout(sub2, 0.3, x), **TOL)
    np.testing.assert_array_equal(drop.rng_key, new_key)


def test_dropout_broadcast_dims_matches_haiku():
    key = jax.random.PRNGKey(2)
    drop = pax.nn.Dropout(0.5, broadcast_dims=(1,), rng_key=key)
    x = _x((3, 4, 5)) + 3
    expected = hk.dropout(jax.random.split(key)[1], 0.5, x, broadcast_dims=(1,))
    np.testing.assert_allclose(drop(x), expected, **TOL)


def test_embed():
    emb = pax.nn.Embed(7, 3)
    ids = jnp.array([[0, 6, 2], [3, 3, 1]])
    expected, _ = _hk_run(lambda i: hk.Embed(7, 3)(i), {"embed": {"embeddings": emb.weight}}, ids)
    np.testing.assert_allclose(emb(ids), expected, **TOL)
    np.testing.assert_allclose(emb.attend(emb(ids)), emb(ids) @ emb.weight.T, **TOL)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_pooling(padding):
    x = _x((2, 7, 6, 3))
    np.testing.assert_allclose(
        pax.nn.avg_pool(x, (3, 2), (2, 2), padding),
        hk.avg_pool(x, (1, 3, 2, 1), (1, 2, 2, 1), padding),
        **TOL,
    )
    np.testing.assert_allclose(
        pax.nn.MaxPool(3, 2, padding)(x), hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), padding), **TOL
    )
    xc = jnp.moveaxis(x, -1, 1)
    np.testing.assert_allclose(
        pax.nn.AvgPool((3, 2), 2, padding, data_format="channels_first")(xc),
        hk.avg_pool(xc, (1, 1, 3, 2), (1, 1, 2, 2), padding, channel_axis=1),
        **TOL,
    )


# --- recurrent ------------------------------------------------------------------------------


def _lstm_values(lstm):
    return {"lstm/linear": {"w": jnp.concatenate([lstm.weight_ih, lstm.weight_hh]), "b": lstm.bias}}


def test_lstm_step_and_unroll_and_grads():
    lstm = pax.nn.LSTM(3, 4, b_init=pax.initializers.random_normal())
    x = _x((2, 3))
    state = pax.nn.LSTMState(_x((2, 4), 1), _x((2, 4), 2))

    def hk_step(x, h, c):
        return hk.LSTM(4)(x, hk.LSTMState(h, c))

    (expected_out, expected_state), _ = _hk_run(hk_step, _lstm_values(lstm), x, *state)
    out, new_state = lstm(x, state)
    np.testing.assert_allclose(out, expected_out, **TOL)
    np.testing.assert_allclose(new_state.cell, expected_state.cell, **TOL)

    xs = _x((5, 2, 3), 3)

    def hk_unroll(xs):
        core = hk.LSTM(4)
        return hk.dynamic_unroll(core, xs, core.initial_state(2))

    (hk_ys, hk_final), _ = _hk_run(hk_unroll, _lstm_values(lstm), xs)
    ys, final = pax.nn.dynamic_unroll(lstm, xs, lstm.initial_state(2))
    np.testing.assert_allclose(ys, hk_ys, **TOL)
    np.testing.assert_allclose(final.hidden, hk_final.hidden, **TOL)

    f = hk.transform(hk_unroll)
    params = _fill(_hk_template(f, xs), _lstm_values(lstm))
    hk_grads = jax.grad(lambda p: jnp.sum(f.apply(p, None, xs)[0] ** 2))(params)["lstm/linear"]
    grads = jax.grad(
        lambda p: jnp.sum(pax.nn.dynamic_unroll(lstm.update(p), xs, lstm.initial_state(2))[0] ** 2)
    )(lstm.parameters())
    np.testing.assert_allclose(
        jnp.concatenate([grads.weight_ih, grads.weight_hh]), hk_grads["w"], **TOL
    )
    np.testing.assert_allclose(grads.bias, hk_grads["b"], **TOL)


def test_gru_batch_major_unroll():
    gru = pax.nn.GRU(3, 4, b_init=pax.initializers.random_normal())
    xs = _x((2, 5, 3))

    def hk_unroll(xs):
        core = hk.GRU(4)
        return hk.dynamic_unroll(core, xs, core.initial_state(2), time_major=False)

    values = {"gru": {"w_i": gru.weight_ih, "w_h": gru.weight_hh, "b": gru.bias}}
    (hk_ys, hk_final), _ = _hk_run(hk_unroll, values, xs)
    ys, final = pax.nn.dynamic_unroll(gru, xs, gru.initial_state(2), time_major=False)
    assert ys.shape == (2, 5, 4)
    np.testing.assert_allclose(ys, hk_ys, **TOL)
    np.testing.assert_allclose(final, hk_final, **TOL)


@pytest.mark.parametrize("double_bias", [True, False])
def test_vanilla_rnn(double_bias):
    rnn = pax.nn.VanillaRNN(3, 4, double_bias=double_bias)
    rnn.bias = _x((4,), 7)
    if double_bias:
        rnn.bias_hh = _x((4,), 8)
    x, h = _x((2, 3)), _x((2, 4), 1)
    values = {
        "vanilla_rnn/linear": {"w": rnn.weight_ih, "b": rnn.bias},
        "vanilla_rnn/linear_1": {"w": rnn.weight_hh, **({"b": rnn.bias_hh} if double_bias else {})},
    }
    (expected, _), _ = _hk_run(
        lambda x, h: hk.VanillaRNN(4, double_bias=double_bias)(x, h), values, x, h
    )
    np.testing.assert_allclose(rnn(x, h)[0], expected, **TOL)


# --- attention -----------------------------------------------------------------------------


def test_multi_head_attention_with_mask():
    mha = pax.nn.MultiHeadAttention(
        6, num_heads=2, key_size=4, value_size=5, out_dim=7, key_in_dim=3
    )
    q, kv = _x((2, 4, 6)), _x((2, 5, 3), 1)
    mask = jnp.asarray(np.random.default_rng(3).random((2, 1, 4, 5)) < 0.6)
    values = {
        "multi_head_attention/query": {"w": mha.query_proj.weight, "b": mha.query_proj.bias},
        "multi_head_attention/key": {"w": mha.key_proj.weight, "b": mha.key_proj.bias},
        "multi_head_attention/value": {"w": mha.value_proj.weight, "b": mha.value_proj.bias},
        "multi_head_attention/linear": {"w": mha.out_proj.weight, "b": mha.out_proj.bias},
    }

    def hk_mha(q, kv, mask):
        layer = hk.MultiHeadAttention(
            2, 4, w_init=hk.initializers.VarianceScaling(), value_size=5, model_size=7
        )
        return layer(q, kv, kv, mask)

    expected, _ = _hk_run(hk_mha, values, q, kv, mask)
    np.testing.assert_allclose(mha(q, kv, kv, mask), expected, **TOL)


# --- default initializers draw from Haiku's distributions -----------------------------------


def _hk_init_params(fn, *args):
    return hk.transform(fn).init(jax.random.PRNGKey(0), *args)


@pytest.mark.parametrize(
    "name, make_pax, pax_leaf, make_hk, hk_path, x",
    [
        (
            "linear",
            lambda: pax.nn.Linear(200, 150),
            "weight",
            lambda x: hk.Linear(150)(x),
            ("linear", "w"),
            jnp.ones((1, 200)),
        ),
        (
            "conv2d",
            lambda: pax.nn.Conv2D(16, 64, 5),
            "weight",
            lambda x: hk.Conv2D(64, 5)(x),
            ("conv2_d", "w"),
            jnp.ones((1, 4, 4, 16)),
        ),
        (
            "embed",
            lambda: pax.nn.Embed(300, 100),
            "weight",
            lambda i: hk.Embed(300, 100)(i),
            ("embed", "embeddings"),
            jnp.zeros((1,), jnp.int32),
        ),
        (
            "gru",
            lambda: pax.nn.GRU(120, 100),
            "weight_ih",
            lambda x: hk.GRU(100)(x, jnp.zeros((1, 100))),
            ("gru", "w_i"),
            jnp.ones((1, 120)),
        ),
    ],
)
def test_default_initializers_match_haiku_distribution(
    name, make_pax, pax_leaf, make_hk, hk_path, x
):
    ours = np.asarray(getattr(make_pax(), pax_leaf))
    theirs = np.asarray(_hk_init_params(make_hk, x)[hk_path[0]][hk_path[1]])
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.04)
    np.testing.assert_allclose(np.abs(ours).max(), np.abs(theirs).max(), rtol=0.05)
    assert abs(ours.mean()) < 0.05 * theirs.std()  # >= 25_000 samples: 8 standard errors
