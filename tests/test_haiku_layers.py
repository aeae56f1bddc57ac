"""`pax.haiku.*` layers: built without dummy input, equal to the Haiku modules they stand for."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_haiku import assert_trees_close, check_against_haiku

import pax


def _x(*shape):
    return jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)


def _lstm_state(b, h):
    return hk.LSTMState(jnp.full((b, h), 0.2), jnp.full((b, h), -0.3))


# name: (pax builder, Haiku forward, inputs, is_training)
CASES = {
    "linear": (
        lambda: pax.haiku.linear(3, 4, with_bias=False),
        lambda x: hk.Linear(4, with_bias=False)(x),
        lambda: (_x(2, 3),),
        None,
    ),
    "layer_norm": (
        lambda: pax.haiku.layer_norm(4, axis=(-2, -1)),
        lambda x: hk.LayerNorm(axis=(-2, -1), create_scale=True, create_offset=True)(x),
        lambda: (_x(2, 3, 4) * 3 + 1,),
        None,
    ),
    "batch_norm_2d": (
        lambda: pax.haiku.batch_norm_2d(3, decay=0.8, data_format="channels_first"),
        lambda x, is_training: hk.BatchNorm(True, True, 0.8, data_format="NCHW")(x, is_training),
        lambda: (_x(4, 3, 2, 2) * 2 + 1,),
        True,
    ),
    "lstm": (
        lambda: pax.haiku.lstm(5, in_dim=3),
        lambda x, s: hk.LSTM(5)(x, s),
        lambda: (_x(2, 3), _lstm_state(2, 5)),
        None,
    ),
    "gru": (
        lambda: pax.haiku.gru(5, in_dim=3),
        lambda x, h: hk.GRU(5)(x, h),
        lambda: (_x(2, 3), jnp.full((2, 5), 0.1)),
        None,
    ),
    "embed": (
        lambda: pax.haiku.embed(6, 4),
        lambda ids: hk.Embed(6, 4)(ids),
        lambda: (jnp.array([[0, 5, 2], [1, 1, 3]]),),
        None,
    ),
    "conv_1d": (
        lambda: pax.haiku.conv_1d(3, 4, kernel_shape=3, stride=2, data_format="channels_first"),
        lambda x: hk.Conv1D(4, 3, stride=2, data_format="NCW")(x),
        lambda: (_x(2, 3, 7),),
        None,
    ),
    "conv_2d": (
        lambda: pax.haiku.conv_2d(2, 4, kernel_shape=(3, 2), padding="VALID", dilation=2),
        lambda x: hk.Conv2D(4, (3, 2), rate=2, padding="VALID")(x),
        lambda: (_x(2, 6, 5, 2),),
        None,
    ),
    "conv_1d_transpose": (
        lambda: pax.haiku.conv_1d_transpose(3, 2, kernel_shape=4, stride=2),
        lambda x: hk.Conv1DTranspose(2, 4, stride=2)(x),
        lambda: (_x(2, 5, 3),),
        None,
    ),
    "conv_2d_transpose": (
        lambda: pax.haiku.conv_2d_transpose(3, 2, 3, stride=2, output_shape=(7, 7)),
        lambda x: hk.Conv2DTranspose(2, 3, stride=2, output_shape=(7, 7))(x),
        lambda: (_x(2, 4, 4, 3),),
        None,
    ),
    "avg_pool": (
        lambda: pax.haiku.avg_pool((1, 2, 2, 1), (1, 2, 2, 1), "SAME"),
        lambda x: hk.AvgPool((1, 2, 2, 1), (1, 2, 2, 1), "SAME")(x),
        lambda: (_x(2, 5, 5, 3),),
        None,
    ),
    "max_pool": (
        lambda: pax.haiku.max_pool((1, 3, 3, 1), (1, 2, 2, 1), "VALID"),
        lambda x: hk.MaxPool((1, 3, 3, 1), (1, 2, 2, 1), "VALID")(x),
        lambda: (_x(2, 5, 5, 3),),
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_equals_haiku(name):
    build, forward, inputs, is_training = CASES[name]
    layer = build()
    args = inputs()
    assert layer.is_initialized
    # The parameters are those Haiku creates on a real input: same names, shapes and dtypes.
    init = hk.transform_with_state(forward).init
    extra = {} if is_training is None else {"is_training": is_training}
    want_params, want_state = init(jax.random.PRNGKey(0), *args, **extra)
    shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)
    assert shapes(layer.params) == shapes(want_params)
    assert shapes(layer.state) == shapes(want_state)
    check_against_haiku(layer, forward, args, is_training=is_training)


def test_every_layer_is_covered():
    assert set(CASES) == {
        "linear", "layer_norm", "batch_norm_2d", "lstm", "gru", "embed", "conv_1d", "conv_2d",
        "conv_1d_transpose", "conv_2d_transpose", "avg_pool", "max_pool",
    }  # fmt: skip
    assert set(CASES) <= set(pax.haiku.__all__)


def test_initializers_in_both_conventions_and_rng_key():
    fc = pax.haiku.linear(
        2, 3, w_init=pax.initializers.constant(0.5), b_init=hk.initializers.Constant(2.0)
    )
    np.testing.assert_array_equal(fc.params["linear"]["w"], np.full((2, 3), 0.5, np.float32))
    np.testing.assert_array_equal(fc.params["linear"]["b"], np.full((3,), 2.0, np.float32))
    a = pax.haiku.conv_2d(2, 3, 3, rng_key=jax.random.PRNGKey(1))
    b = pax.haiku.conv_2d(2, 3, 3, rng_key=jax.random.PRNGKey(1))
    c = pax.haiku.conv_2d(2, 3, 3)
    assert_trees_close(a, b)
    assert not np.allclose(a.params["conv2_d"]["w"], c.params["conv2_d"]["w"])
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(c)


# Errors name the function, the argument, the problem and what to pass instead.
ARGUMENT_ERRORS = [
    (lambda: pax.haiku.linear(0, 3), r"pax\.haiku\.linear: in_dim must be a positive int, got 0"),
    (
        lambda: pax.haiku.gru(True),
        r"pax\.haiku\.gru: hidden_dim must be a positive int, got True",
    ),
    (
        lambda: pax.haiku.conv_2d(2, 3, 3, data_format="HWC"),
        r"pax\.haiku\.conv_2d: unknown data_format 'HWC' for 2 spatial axes; use 'channels_last'",
    ),
    (
        lambda: pax.haiku.conv_1d(2, 3, 3, data_format="NHWC"),
        r"pax\.haiku\.conv_1d: unknown data_format 'NHWC' for 1 spatial axis; use 'channels_last'",
    ),
    (
        lambda: pax.haiku.batch_norm_2d(3, data_format="NC"),
        r"pax\.haiku\.batch_norm_2d: unknown data_format 'NC' .* or 'channels_first'",
    ),
    (
        lambda: pax.haiku.conv_2d(2, 3, (3, 3, 3)),
        r"pax\.haiku\.conv_2d: kernel_shape must be a positive int or a sequence of 2 positive "
        r"ints, got \(3, 3, 3\)",
    ),
    (
        lambda: pax.haiku.conv_1d(2, 3, 3, dilation=0),
        r"pax\.haiku\.conv_1d: dilation must be a positive int or a sequence of 1",
    ),
    (
        lambda: pax.haiku.layer_norm(4, axis=()),
        r"pax\.haiku\.layer_norm: axis must be an int or a non-empty sequence of ints, got \(\); "
        r"e\.g\. axis=-1",
    ),
]


@pytest.mark.parametrize("make, match", ARGUMENT_ERRORS)
def test_layer_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_initializer_errors():
    with pytest.raises(TypeError, match=r"pax\.haiku\.embed: w_init=1\.0 is not callable"):
        pax.haiku.embed(3, 2, w_init=1.0)


def test_one_element_kernel_stands_for_every_axis_as_in_haiku():
    conv = pax.haiku.conv_2d(2, 3, [3])
    assert conv.params["conv2_d"]["w"].shape == (3, 3, 2, 3)


def test_batch_norm_eval_mode_keeps_state():
    bn = pax.haiku.batch_norm_2d(3)
    x = _x(4, 2, 2, 3)
    bn(x)
    state = bn.state
    check_against_haiku(
        bn.eval(), lambda x, is_training: hk.BatchNorm(True, True, 0.9)(x, is_training), (x,),
        is_training=False,
    )  # fmt: skip
    assert bn.state is state


def test_lstm_dynamic_unroll_equals_haiku():
    cell = pax.haiku.lstm(4, in_dim=3)
    xs = _x(5, 2, 3)  # time-major
    h0 = _lstm_state(2, 4)

    def hk_unroll(xs, h0):
        return hk.dynamic_unroll(hk.LSTM(4), xs, h0)

    want = hk.transform(hk_unroll).apply(cell.params, None, xs, h0)
    got = pax.dynamic_unroll(cell, xs, h0)
    assert_trees_close(got, want)

    def loss(params, cell, xs):
        cell = cell.update(params)
        ys, _ = pax.dynamic_unroll(cell, xs, cell.initial_state(2))
        return jnp.sum(ys**2)

    def hk_loss(params, xs):
        zeros = jnp.zeros((2, 4))
        ys, _ = hk.transform(hk_unroll).apply(params, None, xs, hk.LSTMState(zeros, zeros))
        return jnp.sum(ys**2)

    grads = jax.grad(loss)(cell.parameters(), cell, xs)
    hk_grads = jax.grad(hk_loss)(cell.params, xs)
    assert_trees_close(grads.params, hk_grads, rtol=1e-4)

    batch_major = pax.dynamic_unroll(cell, jnp.swapaxes(xs, 0, 1), h0, time_major=False)
    assert_trees_close(jnp.swapaxes(batch_major[0], 0, 1), want[0])
