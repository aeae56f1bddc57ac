"""Mixed precision: policies on modules, parameter dtypes, dtype rules, loss scaling."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import jmp
import numpy as np
import optax
import pytest
from compile_count import count_compilations

import pax

BF16 = jnp.bfloat16
# Output in bfloat16 so that a float32 computation cannot pass for the policy's result.
POLICY = jmp.Policy(param_dtype=jnp.float32, compute_dtype=BF16, output_dtype=BF16)
F32 = jmp.Policy(param_dtype=jnp.float32, compute_dtype=jnp.float32, output_dtype=jnp.float32)


def _call_lstm(m, x):
    out, _ = m(x, m.initial_state(x.shape[0]))
    return out


LAYERS = {
    "Linear": (lambda: pax.nn.Linear(8, 16), (4, 8), None),
    "Conv2D": (lambda: pax.nn.Conv2D(3, 8, 3), (2, 6, 6, 3), None),
    "LayerNorm": (lambda: pax.nn.LayerNorm(8), (4, 8), None),
    "BatchNorm": (lambda: pax.nn.BatchNorm(8), (4, 8), None),
    "LSTM": (lambda: pax.nn.LSTM(8, 16), (4, 8), _call_lstm),
    "MultiHeadAttention": (lambda: pax.nn.MultiHeadAttention(8, 2), (2, 5, 8), None),
    "Sequential": (
        lambda: pax.nn.Sequential(
            pax.nn.Linear(8, 16), pax.nn.LayerNorm(16), pax.nn.BatchNorm(16), jax.nn.relu
        ),
        (4, 8),
        None,
    ),
}


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _sub_jaxprs(v)


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from _eqns(sub)


def _heavy_ops(closed):
    names = ("dot_general", "conv_general_dilated")
    return [e for e in _eqns(closed.jaxpr) if e.primitive.name in names]


def _input(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_policy_computes_in_bf16_keeps_param_dtype_and_is_close_to_float32(name):
    make, shape, call = LAYERS[name]
    call = call or (lambda m, x: m(x))
    model = make()
    mixed = model.mixed_precision(POLICY)
    assert type(mixed).__name__ == f"MixedPrecision{type(model).__name__}"
    x = _input(shape)

    with pax.discard_state_changes():  # BatchNorm statistics: not returned here
        closed = jax.make_jaxpr(call)(mixed, x)
    heavy = _heavy_ops(closed)
    for eqn in heavy:
        assert all(v.aval.dtype == BF16 for v in eqn.invars), (name, eqn)
    if name in ("Linear", "Conv2D", "LSTM", "MultiHeadAttention", "Sequential"):
        assert heavy, name

    out = call(mixed, x)
    assert out.dtype == BF16
    for leaf in jax.tree_util.tree_leaves(mixed.parameters()):
        assert leaf.dtype == jnp.float32
    reference = call(model, x)
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(reference), rtol=5e-2, atol=5e-2
    )

    def loss(params, m, x):
        return jnp.mean(jnp.square(call(m.update(params), x).astype(jnp.float32)))

    with pax.discard_state_changes():
        grads = jax.grad(loss)(mixed.parameters(), mixed, x)
        ref_grads = jax.grad(loss)(model.parameters(), model, x)
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0.1, atol=0.05)


def test_normalization_statistics_stay_float32_and_states_keep_their_dtype():
    bn = pax.nn.BatchNorm(4).mixed_precision(POLICY)
    x = _input((8, 4)) * 3 + 1
    bn(x)
    states = jax.tree_util.tree_leaves(bn.states())
    assert {s.dtype for s in states} == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    reference = pax.nn.BatchNorm(4)
    reference(x)
    # the statistics were computed in float32 from the bfloat16-rounded input
    np.testing.assert_allclose(
        np.asarray(bn.moving_mean), np.asarray(reference.moving_mean), rtol=1e-2
    )
    with pax.discard_state_changes():
        closed = jax.make_jaxpr(lambda m, x: m(x))(bn, x)
    reduces = [e for e in _eqns(closed.jaxpr) if e.primitive.name == "reduce_sum"]
    assert reduces and all(e.invars[0].aval.dtype == jnp.float32 for e in reduces)


class _Tracker(pax.Module):
    """Writes a bfloat16 value into a float32 state and counts calls in an int32."""

    def __init__(self):
        super().__init__()
        self.register_parameter("w", jnp.ones((3,)))
        self.register_state("last", jnp.zeros((3,)))
        self.register_state("calls", jnp.array(0))

    def __call__(self, x):
        y = (x * self.w).astype(x.dtype)
        self.last = y  # bfloat16 under the policy
        self.calls = self.calls + 1
        return y


def test_state_written_in_compute_dtype_keeps_its_registered_dtype_and_treedef():
    m = _Tracker().mixed_precision(POLICY)
    treedef = jax.tree_util.tree_structure(m)
    m(jnp.ones((3,)))
    assert m.last.dtype == jnp.float32 and m.calls.dtype == jnp.int32
    assert int(m.calls) == 1
    assert jax.tree_util.tree_structure(m) == treedef


def test_outside_a_policy_a_state_still_refuses_another_dtype():
    m = _Tracker()
    with pytest.raises(TypeError, match=r"_Tracker.last: this state was registered as float32"):
        m(jnp.ones((3,), BF16))


def test_nested_policy_wins_and_casts_from_the_stored_dtype():
    net = pax.nn.Sequential(pax.nn.Linear(4, 4), pax.nn.LayerNorm(4))
    net = pax.mixed_precision.apply_policy(net, {pax.nn.LayerNorm: F32, pax.nn.Sequential: POLICY})
    assert [type(m).__name__ for m in net.modules] == ["Linear", "MixedPrecisionLayerNorm"]
    closed = jax.make_jaxpr(lambda m, x: m(x))(net, jnp.ones((2, 4)))
    ln_scale_casts = [
        e
        for e in _eqns(closed.jaxpr)
        if e.primitive.name == "convert_element_type" and e.params["new_dtype"] == BF16
    ]
    # the Sequential's policy casts the Linear's two parameters, the input and the output,
    # not the LayerNorm's parameters (its own float32 policy)
    assert sorted(e.outvars[0].aval.shape for e in ln_scale_casts) == [(2, 4), (2, 4), (4,), (4, 4)]
    assert net(jnp.ones((2, 4))).dtype == BF16


def test_apply_policy_by_key_path_and_its_errors():
    net = pax.nn.MLP([2, 4, 4, 1])
    out = pax.mixed_precision.apply_policy(net, {r"^\.layers\[[01]\]$": POLICY})
    assert [pax.mixed_precision.is_mixed_precision(m) for m in out.layers] == [True, True, False]
    with pytest.raises(ValueError, match=r"no submodule of the MLP matches 'blocks'"):
        pax.mixed_precision.apply_policy(net, {"blocks": POLICY})
    with pytest.raises(TypeError, match="a key must be a module class or a regular expression"):
        pax.mixed_precision.apply_policy(net, {3: POLICY})
    with pytest.raises(ValueError, match="is not a valid regex"):
        pax.mixed_precision.apply_policy(net, {"[": POLICY})


def test_policy_errors_and_unwrap():
    fc = pax.nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"Linear.mixed_precision: expected a jmp.Policy"):
        fc.mixed_precision(jnp.bfloat16)
    with pytest.raises(ValueError, match=r"cannot read the policy 'compute=bf17'"):
        fc.mixed_precision("compute=bf17")
    with pytest.raises(TypeError, match=r"Linear.unwrap_mixed_precision: this module has no"):
        fc.unwrap_mixed_precision()
    with pytest.raises(TypeError, match=r"Module.mixed_precision: the module has no __call__"):
        pax.Module().mixed_precision(POLICY)
    mixed = fc.mixed_precision("params=float32,compute=bfloat16,output=float32")
    assert type(mixed.mixed_precision(F32)).__name__ == "MixedPrecisionLinear"
    plain = mixed.unwrap_mixed_precision()
    assert type(plain) is pax.nn.Linear and "mixed_precision_policy" not in repr(plain)
    np.testing.assert_array_equal(plain.weight, fc.weight)


def test_param_dtype_policy_casts_stored_parameters_once():
    fc = pax.nn.Linear(2, 3).mixed_precision(
        jmp.Policy(param_dtype=BF16, compute_dtype=BF16, output_dtype=jnp.float32)
    )
    assert fc.weight.dtype == BF16
    assert fc(jnp.ones((1, 2))).dtype == jnp.float32


def _loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean(jnp.square(model(x).astype(jnp.float32) - y))
    return loss, (loss, model)


def test_mixed_precision_model_trains_jits_freezes_saves_and_never_recompiles(tmp_path):
    net = pax.nn.Sequential(pax.nn.Linear(4, 8), pax.nn.BatchNorm(8), pax.nn.Linear(8, 1))
    net = pax.mixed_precision.apply_policy(net, {pax.nn.Linear: POLICY})
    net = net.freeze(where=r"^\.modules\[0\]")
    opt = pax.optim.from_optax(optax.adam(1e-2))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x, y = _input((16, 4)), _input((16, 1), 1)
    with count_compilations(update_fn.step) as compilations:
        losses = []
        for _ in range(4):
            loss, net, opt = update_fn(net, opt, (x, y))
            losses.append(float(loss))
    assert compilations() == 1
    assert losses[-1] < losses[0]
    assert net.modules[2].weight.dtype == jnp.float32
    pax.save(tmp_path / "ckpt.npz", net)
    back = pax.load(tmp_path / "ckpt.npz", net)
    assert type(back.modules[0]).__name__ == "MixedPrecisionLinear"
    np.testing.assert_array_equal(back.modules[2].weight, net.modules[2].weight)
    assert "MixedPrecisionLinear" in net.summary(x)


# --- native layers against Haiku's own policy ------------------------------------------------


def _haiku_under_policy(hk_cls, policy, make, x):
    hk.mixed_precision.set_policy(hk_cls, policy)
    try:
        f = hk.transform(lambda x: make()(x))
        params = f.init(jax.random.PRNGKey(1), x)
        return params, f.apply(params, None, x)
    finally:
        hk.mixed_precision.clear_policy(hk_cls)


def test_native_linear_under_policy_equals_haiku_linear_under_haiku_policy():
    x = _input((4, 8))
    params, expected = _haiku_under_policy(hk.Linear, POLICY, lambda: hk.Linear(16), x)
    fc = pax.nn.Linear(
        8,
        16,
        w_init=lambda k, s, d: params["linear"]["w"],
        b_init=lambda k, s, d: params["linear"]["b"],
    )
    out = fc.mixed_precision(POLICY)(x)
    assert out.dtype == expected.dtype == BF16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))


def test_native_conv_and_layer_norm_under_policy_equal_haiku_under_haiku_policy():
    x = _input((2, 6, 6, 3))
    params, expected = _haiku_under_policy(hk.Conv2D, POLICY, lambda: hk.Conv2D(8, 3), x)
    conv = pax.nn.Conv2D(3, 8, 3, w_init=lambda k, s, d: params["conv2_d"]["w"])
    out = conv.mixed_precision(POLICY)(x)
    assert out.dtype == BF16
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(expected, np.float32), rtol=1e-2, atol=1e-2
    )
    y = _input((4, 8))
    _, expected = _haiku_under_policy(hk.LayerNorm, POLICY, lambda: hk.LayerNorm(-1, True, True), y)
    out = pax.nn.LayerNorm(8).mixed_precision(POLICY)(y)
    # pax computes the statistics in float32, Haiku in bfloat16: equal to bfloat16 precision
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(expected, np.float32), rtol=2e-2, atol=2e-2
    )


def test_haiku_wrapped_module_under_policy_equals_haiku_policy():
    x = _input((4, 8))
    params, expected = _haiku_under_policy(hk.Linear, POLICY, lambda: hk.Linear(16), x)
    wrapped = pax.from_haiku(hk.Linear)(16).hk_init(x)
    leaves = jax.tree_util.tree_leaves(params)  # b, w: the wrapped module's order too
    assert [p.shape for p in jax.tree_util.tree_leaves(wrapped)] == [p.shape for p in leaves]
    wrapped = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(wrapped), leaves)
    out = wrapped.mixed_precision(POLICY)(x)
    assert out.dtype == BF16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))


# --- parameter dtypes and dtype rules ----------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda d: pax.nn.Linear(2, 3, param_dtype=d),
        lambda d: pax.nn.Conv1D(2, 3, 3, param_dtype=d),
        lambda d: pax.nn.Conv2DTranspose(2, 3, 3, param_dtype=d),
        lambda d: pax.nn.LayerNorm(3, param_dtype=d),
        lambda d: pax.nn.RMSNorm(3, param_dtype=d),
        lambda d: pax.nn.GroupNorm(4, 2, param_dtype=d),
        lambda d: pax.nn.BatchNorm(3, param_dtype=d),
        lambda d: pax.nn.Embed(5, 3, param_dtype=d),
        lambda d: pax.nn.LSTM(2, 3, param_dtype=d),
        lambda d: pax.nn.GRU(2, 3, param_dtype=d),
        lambda d: pax.nn.VanillaRNN(2, 3, param_dtype=d),
        lambda d: pax.nn.MultiHeadAttention(4, 2, param_dtype=d),
        lambda d: pax.nn.MLP([2, 3, 1], param_dtype=d),
    ],
)
def test_param_dtype_on_every_layer(make):
    layer = make(jnp.bfloat16)
    params = jax.tree_util.tree_leaves(layer.parameters())
    assert params and all(p.dtype == BF16 for p in params)
    default = jax.tree_util.tree_leaves(make(jnp.float32).parameters())
    assert all(p.dtype == jnp.float32 for p in default)


def test_param_dtype_must_be_floating():
    with pytest.raises(TypeError, match=r"Linear: param_dtype must be a floating-point dtype"):
        pax.nn.Linear(2, 3, param_dtype=jnp.int32)


def test_layers_compute_in_the_promoted_dtype_of_input_and_parameters():
    x16 = jnp.ones((1, 4, 4, 2), BF16)
    # float32 parameters, bfloat16 input: computed and returned in float32 (nothing lost)
    assert pax.nn.Conv2D(2, 3, 3)(x16).dtype == jnp.float32
    assert pax.nn.Linear(2, 3)(x16[0, 0]).dtype == jnp.float32
    assert pax.nn.LayerNorm(2)(x16).dtype == jnp.float32
    # bfloat16 parameters and input: bfloat16
    assert pax.nn.Conv2D(2, 3, 3, param_dtype=BF16)(x16).dtype == BF16
    assert pax.nn.LayerNorm(2, param_dtype=BF16)(x16).dtype == BF16
    assert pax.nn.BatchNorm(2, param_dtype=BF16)(x16).dtype == BF16


# --- names -------------------------------------------------------------------------------------


def test_name_is_shown_by_repr_and_summary_and_checked():
    enc = pax.nn.Linear(2, 3, name="encoder")
    assert enc.name == "encoder" and "name='encoder'" in repr(enc)
    assert "encoder" in pax.nn.Sequential(enc).summary()
    assert pax.nn.Linear(2, 3).name is None
    with pytest.raises(TypeError, match=r"Linear: name must be a non-empty string, got 3"):
        pax.nn.Linear(2, 3, name=3)


# --- MLP in Haiku's spelling -------------------------------------------------------------------


def test_mlp_output_sizes_is_haiku_meaning():
    mlp = pax.nn.MLP(output_sizes=[16, 2], in_dim=3)
    assert [(m.in_dim, m.out_dim) for m in mlp.layers] == [(3, 16), (16, 2)]
    lazy = pax.nn.MLP(output_sizes=[16, 2]).lazy_init(jnp.ones((1, 3)))
    assert lazy.layers[0].weight.shape == (3, 16)
    with pytest.raises(TypeError, match=r"MLP: give dims .* or output_sizes .*, not both"):
        pax.nn.MLP([3, 2], output_sizes=[2])
    with pytest.raises(TypeError, match=r"MLP: in_dim= goes with output_sizes="):
        pax.nn.MLP([3, 2], in_dim=3)


# --- loss scaling ------------------------------------------------------------------------------


def _scaled(period=2):
    net = pax.nn.Linear(2, 1)
    opt = pax.optim.from_optax(optax.adam(1e-2))(net.parameters())
    scale = jmp.DynamicLossScale(jnp.float32(2.0**10), period=period)
    return net, pax.optim.with_loss_scale(opt, scale)


def test_non_finite_gradient_skips_the_step_bit_exactly_and_halves_the_scale():
    net, opt = _scaled()
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x, y = jnp.ones((4, 2)), jnp.ones((4, 1))
    bad = (x.at[0, 0].set(jnp.inf), y)
    before_net = jax.tree_util.tree_leaves(net)
    before_opt = jax.tree_util.tree_leaves(opt.inner)
    _, net2, opt2 = update_fn(net, opt, bad)
    assert not bool(opt2.last_step_finite)
    assert float(opt2.loss_scale) == 2.0**9
    for a, b in zip(before_net, jax.tree_util.tree_leaves(net2)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before_opt, jax.tree_util.tree_leaves(opt2.inner)):
        np.testing.assert_array_equal(a, b)


def test_skipped_step_keeps_batch_norm_statistics():
    net = pax.nn.Sequential(pax.nn.Linear(2, 2), pax.nn.BatchNorm(2))
    opt = pax.optim.with_loss_scale(
        pax.optim.from_optax(optax.sgd(0.1))(net.parameters()),
        jmp.DynamicLossScale(jnp.float32(8.0)),
    )

    def loss_fn(params, model, inputs):
        model = model.update(params)
        loss = jnp.mean(model(inputs)) * jnp.float32(jnp.inf)
        return loss, (loss, model)

    _, net2, _ = pax.utils.build_update_fn(loss_fn)(net, opt, jnp.ones((4, 2)))
    for a, b in zip(
        jax.tree_util.tree_leaves(net.states()), jax.tree_util.tree_leaves(net2.states())
    ):
        np.testing.assert_array_equal(a, b)


def test_finite_steps_grow_the_scale_on_schedule_and_the_gradients_are_unscaled():
    net, opt = _scaled(period=2)
    plain = pax.optim.from_optax(optax.adam(1e-2))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x, y = _input((4, 2)), _input((4, 1), 1)
    scales = []
    ref = net
    for _ in range(5):
        _, net, opt = update_fn(net, opt, (x, y))
        _, ref, plain = update_fn(ref, plain, (x, y))
        scales.append(float(opt.loss_scale))
    assert scales == [2.0**10, 2.0**11, 2.0**11, 2.0**12, 2.0**12]
    np.testing.assert_allclose(net.weight, ref.weight, rtol=1e-5)


def test_loss_scale_is_saved_in_checkpoints(tmp_path):
    net, opt = _scaled()
    update_fn = pax.utils.build_update_fn(_loss_fn)
    _, net, opt = update_fn(net, opt, (jnp.ones((4, 2)).at[0, 0].set(jnp.nan), jnp.ones((4, 1))))
    pax.save(tmp_path / "opt.npz", opt)
    _, fresh = _scaled()
    back = pax.load(tmp_path / "opt.npz", fresh)
    assert float(back.loss_scale) == 2.0**9 and float(fresh.loss_scale) == 2.0**10


def test_with_loss_scale_errors():
    net = pax.nn.Linear(2, 1)
    opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
    with pytest.raises(TypeError, match=r"with_loss_scale: expected a jmp.DynamicLossScale"):
        pax.optim.with_loss_scale(opt, jmp.NoOpLossScale())
    with pytest.raises(TypeError, match=r"with_loss_scale: expected a pax optimizer"):
        pax.optim.with_loss_scale(optax.sgd(0.1), jmp.DynamicLossScale(jnp.float32(8.0)))


def test_float16_training_with_loss_scaling_learns():
    policy = jmp.Policy(jnp.float32, jnp.float16, jnp.float32)
    net = pax.nn.MLP([4, 16, 1]).mixed_precision(policy)
    opt = pax.optim.with_loss_scale(
        pax.optim.from_optax(optax.adam(1e-2))(net.parameters()),
        jmp.DynamicLossScale(jnp.float32(2.0**15)),
    )
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x = _input((32, 4))
    y = jnp.sum(x, axis=1, keepdims=True)
    losses = []
    for _ in range(30):
        loss, net, opt = update_fn(net, opt, (x, y))
        losses.append(float(loss))
    assert np.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0]


def test_policy_on_a_model_with_batch_norm_updates_its_statistics_in_a_jitted_step():
    # the computing copy made by each call is not a lost change: its states live on
    net = pax.nn.Sequential(pax.nn.Linear(4, 8), pax.nn.BatchNorm(8)).mixed_precision(POLICY)
    opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x, y = _input((16, 4)), _input((16, 8), 1)
    for _ in range(2):
        _, net, opt = update_fn(net, opt, (x, y))
    assert int(net.modules[1].mean_ema.counter) == 2
    assert net.modules[1].moving_mean.dtype == jnp.float32


def test_uninitialized_lazy_layers_are_refused_with_the_order_to_follow():
    lazy = pax.nn.Sequential(pax.nn.Linear(None, 3))
    with pytest.raises(
        ValueError, match=r"\.modules\[0\] is not initialized yet .*model\.lazy_init"
    ):
        lazy.mixed_precision(POLICY)
    with pytest.raises(ValueError, match=r"is not initialized yet"):
        pax.mixed_precision.apply_policy(lazy, {pax.nn.Linear: POLICY})
    ready = lazy.lazy_init(jnp.ones((2, 4))).mixed_precision(POLICY)
    assert ready(jnp.ones((2, 4))).dtype == BF16
