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
    _, new_model, opt = update_fn(model, opt, jnp.ones((4, 3)))
    assert not np.array_equal(new_model.weight, model.weight)
    assert typing.get_origin(pax.utils.LossFnOutput) is tuple
    assert typing.get_args(pax.utils.LossFnOutput)[0] is jax.Array
    # subscripted as Pax v0.2 users did for a typed model
    assert (
        typing.get_args(pax.utils.LossFnOutput[pax.nn.Linear])[1]
        == tuple[typing.Any, pax.nn.Linear]
    )


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


# --- Haiku initializers in native layers ---------------------------------------------------------


def test_native_linear_with_a_haiku_initializer_draws_haikus_weights():
    key, init = jax.random.PRNGKey(4), hk.initializers.TruncatedNormal(0.1)
    fc = pax.nn.Linear(5, 4, w_init=init, rng_key=key)
    w_key, _ = jax.random.split(key)  # pax's Linear gives the weight the first half of its key
    program = hk.transform(lambda x: hk.Linear(4, w_init=init)(x))
    expected = program.init(w_key, jnp.ones((1, 5)))["linear"]["w"]
    np.testing.assert_allclose(fc.weight, expected, rtol=0, atol=0)


def test_pax_v02_transformer_dense_block_form():
    init = hk.initializers.VarianceScaling(0.5)
    fc1 = pax.nn.Linear(8, 32, w_init=init)
    fc2 = pax.nn.Linear(32, 8, w_init=init)
    y = fc2(jax.nn.gelu(fc1(jnp.ones((2, 8)))))
    assert y.shape == (2, 8)
    # VarianceScaling(0.5), fan_in 8: std sqrt(0.5 / 8) = 0.25 (the truncation corrected)
    np.testing.assert_allclose(float(fc1.weight.std()), 0.25, rtol=0.25)


# --- pax.haiku ready-made layers in Pax v0.2's call forms ----------------------------------------

KEY = jax.random.PRNGKey(0)


def _bn_stats_after_two_steps(bn_or_fn, decay, x):
    """The moving mean after two training steps, from pax (a module) or Haiku (decay)."""
    if isinstance(bn_or_fn, pax.Module):
        bn_or_fn(x)
        bn_or_fn(x * 2 + 1)
        return bn_or_fn.state["batch_norm/~/mean_ema"]["average"]
    f = hk.transform_with_state(lambda x: hk.BatchNorm(True, True, decay)(x, True))
    params, state = f.init(KEY, x)
    _, state = f.apply(params, state, None, x)
    _, state = f.apply(params, state, None, x * 2 + 1)
    return state["batch_norm/~/mean_ema"]["average"]


def test_batch_norm_2d_default_decay_is_pax_v02s_099():
    x = jax.random.normal(KEY, (4, 3, 3, 8)) + 2.0
    bn = pax.haiku.batch_norm_2d(8, rng_key=KEY)
    assert bn.hk_config.arguments()["decay_rate"] == 0.99
    got = _bn_stats_after_two_steps(bn, None, x)
    np.testing.assert_allclose(got, _bn_stats_after_two_steps(None, 0.99, x), rtol=1e-6)
    assert not np.allclose(got, _bn_stats_after_two_steps(None, 0.9, x))


def test_batch_norm_2d_positional_axis_and_decay_as_pax_v02():
    bn = pax.haiku.batch_norm_2d(8, -1, 0.5, rng_key=KEY)
    args = bn.hk_config.arguments()
    assert args["decay_rate"] == 0.5
    assert args["create_scale"] is True and args["create_offset"] is True
    assert args["data_format"] == "NHWC"
    x = jax.random.normal(KEY, (4, 3, 3, 8))
    got = _bn_stats_after_two_steps(bn, None, x)
    np.testing.assert_allclose(got, _bn_stats_after_two_steps(None, 0.5, x), rtol=1e-6)


def test_batch_norm_2d_axis_1_is_channels_first():
    bn = pax.haiku.batch_norm_2d(8, 1, rng_key=KEY)
    assert bn.hk_config.arguments()["data_format"] == "NCHW"
    assert bn.params["batch_norm"]["scale"].shape == (1, 8, 1, 1)
    assert bn(jnp.ones((2, 8, 3, 3))).shape == (2, 8, 3, 3)
    same = pax.haiku.batch_norm_2d(8, 1, data_format="channels_first", rng_key=KEY)
    assert same.hk_config == bn.hk_config


def test_batch_norm_2d_cross_replica_axis_fourth():
    bn = pax.haiku.batch_norm_2d(4, -1, 0.9, "i", rng_key=KEY)
    assert bn.hk_config.arguments()["cross_replica_axis"] == "i"
    x = jax.random.normal(KEY, (2, 3, 2, 2, 4)) + jnp.array([0.0, 4.0])[:, None, None, None, None]
    with pax.discard_state_changes():  # only the output is checked
        out = jax.vmap(lambda m, x: m(x), in_axes=(None, 0), axis_name="i")(bn, x)
    # normalized with the statistics of both replicas: replica 0 below the joint mean
    assert float(out[0].mean()) < -0.5 < 0.5 < float(out[1].mean())
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2, 3)), np.zeros(4), atol=1e-5)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: pax.haiku.batch_norm_2d(3, True, True),
            r"pax\.haiku\.batch_norm_2d: axis must be the channel axis of a 4-D input, -1 for "
            r"\(N, H, W, C\) or 1 for \(N, C, H, W\), got True\. .* Fix: "
            r"pax\.haiku\.batch_norm_2d\(in_dim, -1, 0\.99\)",
        ),
        (lambda: pax.haiku.batch_norm_2d(3, 2), r"got 2\."),
        (
            lambda: pax.haiku.batch_norm_2d(3, 3, data_format="channels_first"),
            r"axis=3 \(channels_last\) and data_format='channels_first' disagree",
        ),
    ],
)
def test_batch_norm_2d_axis_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_old_positional_batch_norm_options_are_keyword_only_now():
    bn = pax.haiku.batch_norm_2d(3, create_scale=False, create_offset=True, rng_key=KEY)
    assert "scale" not in bn.params["batch_norm"]


def _lstm_forward(hidden):
    return lambda x, s: hk.LSTM(hidden)(x, s)


def test_lstm_takes_the_hidden_size_as_pax_v02():
    cell = pax.haiku.lstm(6, rng_key=KEY)
    assert cell.params["lstm/linear"]["w"].shape == (12, 24)  # input size = hidden size
    x = jax.random.normal(KEY, (2, 6))
    state = cell.initial_state(2)
    out, new_state = cell(x, state)
    want = hk.transform(_lstm_forward(6)).apply(cell.params, None, x, state)
    np.testing.assert_allclose(out, want[0], rtol=1e-6)
    np.testing.assert_allclose(new_state.cell, want[1].cell, rtol=1e-6)
    # the char-RNN form: unrolled with pax.dynamic_unroll, batch-major
    xs = jax.random.normal(KEY, (2, 5, 6))
    ys, _ = pax.dynamic_unroll(cell, xs, cell.initial_state(2), time_major=False)
    assert ys.shape == (2, 5, 6)


def test_lstm_and_gru_input_size_by_keyword():
    assert pax.haiku.lstm(6, in_dim=3, rng_key=KEY).params["lstm/linear"]["w"].shape == (9, 24)
    gru = pax.haiku.gru(6, in_dim=3, rng_key=KEY)
    assert gru.params["gru"]["w_i"].shape == (3, 18)
    assert pax.haiku.gru(6, rng_key=KEY).params["gru"]["w_i"].shape == (6, 18)


@pytest.mark.parametrize("fn", ["lstm", "gru"])
def test_two_positional_sizes_name_the_new_spelling(fn):
    match = (
        rf"pax\.haiku\.{fn}\(3, 8\): pax\.haiku\.{fn} takes one positional argument, hidden_dim "
        rf"\(Pax v0\.2's form\).* Fix: pax\.haiku\.{fn}\(8, in_dim=3\)"
    )
    with pytest.raises(TypeError, match=match):
        getattr(pax.haiku, fn)(3, 8)


def test_layer_norm_pax_v02_form():
    ln = pax.haiku.layer_norm(8, -1, rng_key=KEY)
    x = jax.random.normal(KEY, (2, 3, 8)) * 3 + 1
    want = hk.transform(lambda x: hk.LayerNorm(-1, True, True)(x)).apply(ln.params, None, x)
    np.testing.assert_allclose(ln(x), want, rtol=1e-5, atol=1e-6)


def test_embed_with_a_positional_haiku_initializer():
    init = hk.initializers.VarianceScaling(mode="fan_out")
    emb = pax.haiku.embed(10, 4, init, rng_key=KEY)
    program = hk.transform(lambda ids: hk.Embed(10, 4, w_init=init)(ids))
    expected = program.init(KEY, jnp.zeros((1,), jnp.int32))
    np.testing.assert_allclose(emb.params["embed"]["embeddings"], expected["embed"]["embeddings"])


def test_conv_2d_pax_v02_positional_form():
    # (input_channels, output_channels, kernel_shape, stride, rate, padding, with_bias, w_init)
    init = hk.initializers.RandomNormal(0.1)
    conv = pax.haiku.conv_2d(3, 4, 3, 1, 2, "VALID", False, init, rng_key=KEY)
    args = conv.hk_config.arguments()
    assert (args["rate"], args["padding"], args["with_bias"]) == (2, "VALID", False)
    assert conv(jnp.ones((1, 7, 7, 3))).shape == (1, 3, 3, 4)


@pytest.mark.parametrize(
    "make, old, new, kwargs",
    [
        (pax.haiku.conv_2d, "input_channels", "in_dim", dict(out_dim=4, kernel_shape=3)),
        (pax.haiku.conv_1d, "output_channels", "out_dim", dict(in_dim=3, kernel_shape=3)),
        (
            pax.haiku.conv_2d_transpose,
            "input_channels",
            "in_dim",
            dict(out_dim=4, kernel_shape=3),
        ),
        (pax.haiku.conv_2d, "rate", "dilation", dict(in_dim=3, out_dim=4, kernel_shape=3)),
        (pax.haiku.batch_norm_2d, "num_channels", "in_dim", {}),
        (pax.haiku.layer_norm, "num_channels", "in_dim", {}),
        (pax.haiku.batch_norm_2d, "decay_rate", "decay", dict(in_dim=3)),
    ],
)
def test_pax_v02_keywords_work_and_name_the_new_spelling(make, old, new, kwargs):
    value = 0.9 if old == "decay_rate" else 2 if old == "rate" else 3
    match = rf"pax\.haiku\.{make.__name__}: `{old}` is deprecated, use `{new}`"
    with pytest.warns(DeprecationWarning, match=match):
        layer = make(**kwargs, **{old: value}, rng_key=KEY)
    assert layer.hk_config == make(**kwargs, **{new: value}, rng_key=KEY).hk_config


def test_pools_pax_v02_positional_form():
    x = jnp.arange(32.0).reshape(1, 4, 4, 2)
    got = pax.haiku.avg_pool((1, 2, 2, 1), (1, 2, 2, 1), "VALID", -1)(x)
    np.testing.assert_allclose(got, hk.avg_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "VALID", -1))
    got = pax.haiku.max_pool(2, 2, "SAME", -1)(x)
    np.testing.assert_allclose(got, hk.max_pool(x, 2, 2, "SAME", -1))


def test_linear_pax_v02_positional_form():
    fc = pax.haiku.linear(3, 4, False, rng_key=KEY)
    assert "b" not in fc.params["linear"]


# --- whole Pax v0.2 programs in small: every form the original examples use --------------------


class _CharLM(pax.Module):
    """A character LSTM written as Pax v0.2 programs write it."""

    def __init__(self, vocab_size: int, hidden_dim: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = pax.haiku.embed(vocab_size, hidden_dim)
        self.lstm = pax.haiku.lstm(hidden_dim)
        self.output = pax.haiku.linear(hidden_dim, vocab_size)

    def __call__(self, x):
        x = self.embed(x)
        state = self.lstm.initial_state(x.shape[0])
        x, _ = pax.dynamic_unroll(self.lstm, x, state, time_major=False)
        return self.output(x)


def _lm_loss(params, model, batch) -> pax.utils.LossFnOutput:
    model = model.update(params)
    logits = model(batch[:, :-1])
    targets = jax.nn.one_hot(batch[:, 1:], model.vocab_size)
    loss = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))
    return loss, (loss, model)


def test_pax_v02_char_rnn_form_trains():
    import optax

    pax.seed_rng_key(42)
    net = _CharLM(vocab_size=16, hidden_dim=8)
    opt = pax.optim.from_optax(optax.adam(1e-2))(net.parameters())

    @jax.jit
    def update_fn(model, optimizer, batch):
        grads, (loss, model) = jax.grad(_lm_loss, has_aux=True)(model.parameters(), model, batch)
        return loss, optimizer.step(grads, model), optimizer

    batch = jnp.tile(jnp.arange(9) % 16, (2, 1))
    losses = []
    for _ in range(15):
        loss, net, opt = update_fn(net, opt, batch)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    # one device of a pmap-style replicated model: jax.tree.map over the module
    replicated = jax.tree.map(lambda x: jnp.stack([x, x]), net)
    single = jax.tree.map(lambda x: x[0], replicated.eval())
    np.testing.assert_allclose(single(batch), net.eval()(batch), rtol=1e-6)


class _DropoutBlock(pax.Module):
    """The dropout pattern of Pax v0.2's transformer: RngSeq keys into pax.haiku.dropout."""

    def __init__(self, dim: int, num_layers: int, rate: float):
        super().__init__()
        self.rng_seq = pax.utils.RngSeq()
        self.rate = rate
        self.num_layers = num_layers
        init = hk.initializers.VarianceScaling(2.0 / num_layers)
        layers = [pax.nn.Linear(dim, dim, w_init=init) for _ in range(num_layers)]
        self.register_module_subtree("layers", layers)
        self.embed = pax.haiku.embed(
            10, dim, w_init=hk.initializers.VarianceScaling(mode="fan_out")
        )

    def __call__(self, ids):
        h = self.embed(ids)
        rate = self.rate if self.training else 0.0
        rngs = self.rng_seq.next_rng_key(self.num_layers)
        for i in range(self.num_layers):
            h = h + pax.haiku.dropout(rngs[i], rate, self.layers[i](h))
        return h


def test_pax_v02_transformer_dropout_pattern_under_jit_and_scan():
    block = _DropoutBlock(8, 2, 0.5)
    ids = jnp.arange(6).reshape(2, 3)

    @jax.jit
    def twice(block, ids):
        def body(block, _):
            return block, block(ids)

        return jax.lax.scan(body, block, None, length=2)

    block2, ys = twice(block, ids)
    assert not np.allclose(ys[0], ys[1])  # new keys at each step of the scan
    assert not np.array_equal(block2.rng_seq.rng_key, block.rng_seq.rng_key)
    # eval mode: no dropout, no key change
    e = block.eval()
    np.testing.assert_allclose(e(ids), e(ids))
    np.testing.assert_array_equal(e.rng_seq.rng_key, block.rng_seq.rng_key)


def test_pax_v02_pax_nn_positional_forms():
    conv = pax.nn.Conv2D(1, 4, 3, padding="VALID")
    bn = pax.nn.BatchNorm2D(4, True, True, 0.9)
    ln = pax.nn.LayerNorm(4, -1, True, True)
    y = ln(bn(conv(jnp.ones((2, 5, 5, 1)))))
    assert y.shape == (2, 3, 3, 4)
    assert bn.decay == 0.9  # Pax v0.2's (num_channels, create_scale, create_offset, decay_rate)
    assert ln.axis in (-1, (-1,)) and ln.scale.shape == ln.offset.shape == (4,)


def test_pax_v02_module_methods_work_or_name_the_new_spelling():
    net = pax.nn.MLP([2, 3, 1])
    with pytest.warns(
        DeprecationWarning, match=r"`sub_modules\(\)` is deprecated, use `submodules\(\)`"
    ):
        assert len(net.sub_modules()) == 2
    assert net.train(False).training is False and net.train(True).training is True
    with pytest.raises(TypeError, match=r"MLP\.train: mode must be True or False"):
        net.train("no")
    with pytest.raises(
        AttributeError, match=r"MLP\.filter \(Pax v0\.2\) is gone\. Fix: model\.parameters\(\)"
    ):
        net.filter("trainable")
    with pytest.raises(
        TypeError, match=r"in_place= \(Pax v0\.2\) is gone.*model = model\.update\(params\)"
    ):
        net.update(net.parameters(), in_place=True)
    net.update(net.parameters())  # the current spelling
    with pytest.raises(
        TypeError, match=r"BatchNorm2D: got the shape \(None, 8, 8, 3\) .*pax\.nn\.BatchNorm2D\(3\)"
    ):
        pax.nn.BatchNorm2D((None, 8, 8, 3))
    pax.nn.BatchNorm2D(3)


def test_mixed_precision_picks_wrapped_haiku_layers_by_their_haiku_class():
    import haiku as hk

    net = pax.nn.Sequential(
        pax.haiku.linear(3, 3), pax.haiku.batch_norm_2d(3), pax.haiku.linear(3, 3)
    )
    mixed = pax.mixed_precision.apply_policy(
        net, {hk.BatchNorm: "p=f32,c=f32,o=f32", hk.Linear: "p=f32,c=bf16,o=f32"}
    )
    names = [type(m).__name__ for m in mixed.modules]
    assert names == ["MixedPrecisionHaikuModule"] * 3
    with pytest.raises(ValueError, match=r"apply_policy: no submodule .* matches"):
        pax.mixed_precision.apply_policy(net, {hk.Conv2D: "p=f32,c=bf16,o=f32"})
