"""Porting Haiku weights: a ported ConvNet + BatchNorm trains exactly as the Haiku program."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_haiku import assert_trees_close

import pax

POOL = ((1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def haiku_convnet(x, is_training):
    x = hk.Conv2D(4, 3)(x)
    x = jax.nn.relu(hk.BatchNorm(True, True, 0.9)(x, is_training))
    x = hk.Conv2D(6, 3, stride=2)(x)
    x = jax.nn.relu(hk.BatchNorm(True, True, 0.9)(x, is_training))
    x = hk.MaxPool(*POOL)(x)
    return hk.Linear(3)(hk.Flatten()(x))


def pax_convnet():
    return pax.nn.Sequential(
        pax.haiku.conv_2d(1, 4, 3),
        pax.haiku.batch_norm_2d(4, decay=0.9),
        jax.nn.relu,
        pax.haiku.conv_2d(4, 6, 3, stride=2),
        pax.haiku.batch_norm_2d(6, decay=0.9),
        jax.nn.relu,
        pax.haiku.max_pool(*POOL),
        lambda x: x.reshape(x.shape[0], -1),
        pax.haiku.linear(2 * 2 * 6, 3),
    )


def _cross_entropy(logits, labels):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 3), axis=-1))


def _train_both(f, model, params, state, x, labels, opt, steps, rtol=1e-5):
    """Trains the Haiku program and the pax model side by side with `opt`, comparing each step.

    Returns the final pax model, Haiku params and state, the losses, and how many times the
    pax step was traced.
    """
    traces = []

    @jax.jit
    def hk_step(params, state, opt_state):
        def loss_fn(p):
            logits, new_state = f.apply(p, state, None, x, True)
            return _cross_entropy(logits, labels), new_state

        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), state, opt_state

    @jax.jit
    def pax_step(model, opt_state):
        traces.append(1)

        def loss_fn(p, model):
            model = model.update(p)
            return _cross_entropy(model(x), labels), model

        grads_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, model), grads = grads_fn(model.parameters(), model)
        updates, opt_state = opt.update(grads, opt_state, model.parameters())
        return loss, model.update(optax.apply_updates(model.parameters(), updates)), opt_state

    hk_opt, pax_opt = opt.init(params), opt.init(model.parameters())
    losses = []
    for _ in range(steps):
        loss, params, state, hk_opt = hk_step(params, state, hk_opt)
        pax_loss, model, pax_opt = pax_step(model, pax_opt)
        np.testing.assert_allclose(pax_loss, loss, rtol=rtol)
        assert_trees_close(pax.haiku.to_haiku_params(model), (params, state), rtol=10 * rtol)
        losses.append(float(loss))
    return model, params, state, losses, len(traces)


def test_ported_convnet_trains_like_haiku():
    f = hk.transform_with_state(haiku_convnet)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 1))
    labels = jax.random.randint(jax.random.PRNGKey(2), (8,), 0, 3)
    params, state = f.init(jax.random.PRNGKey(0), x, True)

    model = pax.haiku.load_haiku_params(pax_convnet(), params, state)
    assert_trees_close(pax.haiku.to_haiku_params(model), (params, state))
    model, params, state, losses, traces = _train_both(
        f, model, params, state, x, labels, optax.adam(1e-2), steps=3
    )
    assert losses[-1] < losses[0]
    assert traces == 1  # the updated model has the same treedef: no recompilation
    counter = state["batch_norm_1/~/mean_ema"]["counter"]
    assert (
        int(counter) == 3 and int(model.modules[4].state["batch_norm/~/mean_ema"]["counter"]) == 3
    )
    # evaluation: the moving averages normalize, both sides agree
    want, _ = f.apply(params, state, None, x, False)
    np.testing.assert_allclose(model.eval()(x), want, rtol=1e-4, atol=1e-5)


def test_names_follow_haiku_for_nested_modules():
    def forward(x):
        x = hk.nets.MLP([4, 3])(x)
        x = hk.Linear(3)(x)
        return hk.nets.MLP([2])(x)

    params, _ = hk.transform_with_state(forward).init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
    model = pax.nn.Sequential(
        pax.from_haiku(hk.nets.MLP)([4, 3]),
        pax.haiku.linear(3, 3),
        pax.from_haiku(hk.nets.MLP)([2]),
    )
    model = model.hk_init(jnp.ones((1, 5)))
    names = pax.haiku.haiku_module_names(model)
    assert names == {".modules[0]": "mlp", ".modules[1]": "linear", ".modules[2]": "mlp_1"}
    mine, _ = pax.haiku.to_haiku_params(model)
    assert sorted(mine) == sorted(params)
    loaded = pax.haiku.load_haiku_params(model, params)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 5))
    want, _ = hk.transform_with_state(forward).apply(params, {}, None, x)
    np.testing.assert_allclose(loaded(x), want, rtol=1e-5)


def test_prefix_and_names():
    class Net(hk.Module):
        def __call__(self, x):
            x = hk.Linear(4)(x)
            return hk.Linear(2)(x)

    f = hk.transform_with_state(lambda x: Net()(x))
    params, state = f.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    assert sorted(params) == ["net/linear", "net/linear_1"]
    model = pax.nn.Sequential(pax.haiku.linear(3, 4), pax.haiku.linear(4, 2))
    loaded = pax.haiku.load_haiku_params(model, params, state, prefix="net/")
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(loaded(x), f.apply(params, state, None, x)[0], rtol=1e-5)
    renamed = pax.haiku.load_haiku_params(
        model,
        {"first": params["net/linear"], "second": params["net/linear_1"]},
        names={".modules[0]": "first", ".modules[1]": "second"},
    )
    assert_trees_close(renamed, loaded)
    with pytest.raises(ValueError, match=r"names has keys that are not paths.*'\.modules\[7\]'"):
        pax.haiku.load_haiku_params(model, params, names={".modules[7]": "x"})
    with pytest.raises(ValueError, match=r"\.modules\[0\] and \.modules\[1\] both get the Haiku"):
        pax.haiku.to_haiku_params(model, names={".modules[0]": "a", ".modules[1]": "a"})


def test_load_errors_list_missing_unexpected_and_mismatched():
    def forward(x):
        x = hk.Linear(5)(x)
        x = hk.Linear(1)(x)
        return hk.Linear(1)(x)

    params, _ = hk.transform_with_state(forward).init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
    del params["linear_1"]["b"]
    model = pax.nn.Sequential(pax.haiku.linear(2, 4), pax.haiku.linear(4, 1))
    pattern = (
        r"(?s)the Haiku dicts do not match the model\. Nothing was loaded\.\n"
        r"1 missing from the Haiku dicts:\n  params\['linear_1'\]\['b'\]\n"
        r"2 unexpected in the Haiku dicts:\n  params\['linear_2'\]\['w'\]\n"
        r"  params\['linear_2'\]\['b'\]\n"
        r"3 with another shape or dtype:\n  params\['linear'\]\['b'\] \(at \.modules\[0\]\S*\): "
        r"given float32\[5\], model float32\[4\].*"
        r"\.modules\[0\] -> linear, \.modules\[1\] -> linear_1.*strict=False"
    )
    with pytest.raises(pax.CheckpointMismatchError, match=pattern) as info:
        pax.haiku.load_haiku_params(model, params)
    assert info.value.missing == ("params['linear_1']['b']",)
    assert info.value.unexpected == ("params['linear_2']['w']", "params['linear_2']['b']")
    assert info.value.mismatched == (
        "params['linear']['b']",
        "params['linear']['w']",
        "params['linear_1']['w']",
    )
    # strict=False ignores missing and unexpected entries, not shape mismatches
    with pytest.raises(ValueError, match=r"3 with another shape or dtype"):
        pax.haiku.load_haiku_params(model, params, strict=False)
    w1 = jnp.full((4, 1), 0.25)
    partial, report = pax.haiku.load_haiku_params(model, {"linear_1": {"w": w1}}, strict=False)
    assert report.loaded == ("params['linear_1']['w']",)
    assert set(report.left) == {
        "params['linear']['w']",
        "params['linear']['b']",
        "params['linear_1']['b']",
    }
    assert report.skipped == ()
    np.testing.assert_array_equal(partial.modules[1].params["linear"]["w"], w1)
    for i, name in ((1, "b"), (0, "w"), (0, "b")):
        kept = model.modules[i].params["linear"][name]
        np.testing.assert_array_equal(partial.modules[i].params["linear"][name], kept)

    with pytest.raises(
        ValueError, match=r"params\['linear'\]\['w'\] \(at .*\): given float16\[2, 4\]"
    ):
        wrong = {"linear": {"w": np.zeros((2, 4), np.float16), "b": np.zeros(4, np.float32)}}
        pax.haiku.load_haiku_params(model, wrong, strict=False)
    with pytest.raises(TypeError, match=r"params must be a dict \{module_name: \{name: array\}\}"):
        pax.haiku.load_haiku_params(model, [1, 2])
    lazy = pax.nn.Sequential(pax.from_haiku(hk.Linear)(4))
    with pytest.raises(ValueError, match=r"\.modules\[0\] .* is not initialized.*hk_init"):
        pax.haiku.load_haiku_params(lazy, params)
    with pytest.raises(ValueError, match=r"is not initialized"):
        pax.haiku.to_haiku_params(lazy)


@pytest.mark.slow
def test_ported_resnet18_trains_like_haiku():
    def forward(x, is_training):
        return hk.nets.ResNet18(num_classes=3)(x, is_training)

    f = hk.transform_with_state(forward)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    labels = jnp.array([0, 2])
    params, state = f.init(jax.random.PRNGKey(0), x, True)
    model = pax.from_haiku(hk.nets.ResNet18, pass_is_training=True)(num_classes=3)
    model = model.hk_init(x[:1], enable_jit=True)
    assert pax.haiku.haiku_module_names(model) == {"": "res_net18"}
    model = pax.haiku.load_haiku_params(model, params, state)
    opt = optax.sgd(0.05, momentum=0.9)
    model, params, state, _, _ = _train_both(f, model, params, state, x, labels, opt, 2, rtol=1e-4)
    want, _ = f.apply(params, state, None, x, False)
    np.testing.assert_allclose(model.eval()(x), want, rtol=1e-3, atol=1e-4)


class Transparent(hk.Module):
    """A Haiku module whose call is transparent: its Linear is named in the caller's scope."""

    @hk.transparent
    def __call__(self, x):
        return hk.Linear(3)(x)


def test_transparent_module_names_round_trip():
    x = jnp.ones((1, 2))
    f = hk.transform_with_state(lambda x: Transparent()(x))
    params, state = f.init(jax.random.PRNGKey(0), x)
    assert sorted(params) == ["linear"]
    t = pax.from_haiku(Transparent)().hk_init(x)
    mine, _ = pax.haiku.to_haiku_params(t)
    assert sorted(mine) == ["linear"]  # was "transparent/linear", which Haiku rejects
    f.apply(mine, state, None, x)  # Haiku accepts the exported dict
    again = pax.haiku.load_haiku_params(t, t.params)  # a module's own dicts load back
    assert_trees_close(again, t)
    loaded = pax.haiku.load_haiku_params(t, params, state)
    np.testing.assert_allclose(loaded(x), f.apply(params, state, None, x)[0], rtol=1e-6)


def test_flat_dicts_are_accepted():
    def forward(x):
        return hk.nets.MLP([4, 2])(x)

    f = hk.transform_with_state(forward)
    params, _ = f.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
    flat = {
        f"{module}/{name}": v for module, leaves in params.items() for name, v in leaves.items()
    }
    assert "mlp/~/linear_0/w" in flat
    model = pax.from_haiku(hk.nets.MLP)([4, 2]).hk_init(jnp.ones((1, 3)))
    from_flat = pax.haiku.load_haiku_params(model, flat)
    assert_trees_close(from_flat, pax.haiku.load_haiku_params(model, params))
    with pytest.raises(TypeError, match=r"flat key 'w' has no '/'"):
        pax.haiku.load_haiku_params(model, {"w": np.ones(3)})
    with pytest.raises(TypeError, match=r"got a mix.*params\['mlp/~/linear_1/b'\] is dict"):
        pax.haiku.load_haiku_params(model, {"mlp/~/linear_0/w": np.ones(3), "mlp/~/linear_1/b": {}})


def test_non_strict_load_returns_a_report_and_never_loads_nothing_silently():
    def forward(x):
        x = hk.Linear(4)(x)
        return hk.Linear(1)(x)

    params, _ = hk.transform_with_state(forward).init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
    model = pax.nn.Sequential(
        pax.haiku.linear(2, 4), pax.haiku.linear(4, 1), pax.haiku.linear(1, 1)
    )
    extra = {**params, "head": {"w": np.ones((4, 1), np.float32)}}
    loaded, report = pax.haiku.load_haiku_params(model, extra, strict=False)
    assert set(report.loaded) == {f"params['{m}']['{n}']" for m in params for n in "wb"}
    assert report.skipped == report.unexpected == ("params['head']['w']",)
    assert report.left == report.missing
    assert set(report.left) == {"params['linear_2']['w']", "params['linear_2']['b']"}
    np.testing.assert_array_equal(loaded.modules[1].params["linear"]["w"], params["linear_1"]["w"])
    np.testing.assert_array_equal(
        loaded.modules[2].params["linear"]["w"], model.modules[2].params["linear"]["w"]
    )
    with pytest.raises(ValueError, match=r"no key path of the Haiku dicts is in the model"):
        pax.haiku.load_haiku_params(model, {"other": params["linear"]}, strict=False)
    with pytest.raises(TypeError, match=r"strip_prefix must be a str"):
        pax.haiku.load_haiku_params(model, params, strip_prefix=1)


def test_strip_prefix_removes_the_program_scope():
    class Program(hk.Module):
        def __call__(self, x):
            x = hk.Linear(3)(x)
            return hk.Linear(2)(x)

    f = hk.transform_with_state(lambda x: Program()(x))
    params, state = f.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
    model = pax.nn.Sequential(pax.haiku.linear(2, 3), pax.haiku.linear(3, 2))
    loaded = pax.haiku.load_haiku_params(model, params, state, strip_prefix="program/")
    x = jnp.ones((2, 2))
    np.testing.assert_allclose(loaded(x), f.apply(params, state, None, x)[0], rtol=1e-6)
    with pytest.raises(
        ValueError, match=r"params\['program/linear'\]\['w'\] \(outside strip_prefix 'other/'\)"
    ):
        pax.haiku.load_haiku_params(model, params, strip_prefix="other/")
