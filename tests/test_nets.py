"""pax.nets.ResNet* against Haiku's hk.nets.ResNet* (same names, same numbers)."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

SMALL = (64, 8, 8, 16)  # the first group keeps the 64 channels of the stem


def _haiku(depth, x, channels=SMALL, **kw):
    # hk.nets.ResNet18/34/50 fix the channels: build the same net, smaller, with its name
    config = dict(hk.nets.ResNet.CONFIGS[depth], channels_per_group=channels)

    def f(x, is_training, test_local_stats=False):
        net = hk.nets.ResNet(num_classes=5, name=f"res_net{depth}", **config, **kw)
        return net(x, is_training, test_local_stats)

    fwd = hk.transform_with_state(f)
    params, state = fwd.init(jax.random.PRNGKey(1), x, True)
    # random non-trivial values everywhere (logits are zeros at init)
    leaves, tree = jax.tree_util.tree_flatten((params, state))
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    leaves = [
        leaf if leaf.dtype == jnp.int32 else leaf + 0.1 * jax.random.uniform(k, leaf.shape)
        for k, leaf in zip(keys, leaves)
    ]
    params, state = jax.tree_util.tree_unflatten(tree, leaves)
    return fwd, params, state


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_loads_haiku_params_exactly_train_and_eval(depth):
    channels = (8, 8, 16, 16) if depth == 50 else SMALL
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 20, 20, 3))
    fwd, params, state = _haiku(depth, x, channels)
    cls = {18: pax.nets.ResNet18, 34: pax.nets.ResNet34, 50: pax.nets.ResNet50}[depth]
    net = pax.haiku.load_haiku_params(cls(5, channels_per_group=channels), params, state)
    # eval
    want, _ = fwd.apply(params, state, None, x, False)
    np.testing.assert_allclose(net.eval()(x), want, atol=1e-5)
    # train: outputs and BatchNorm state after one step
    want, new_state = fwd.apply(params, state, None, x, True)
    got = net(x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    _, got_state = pax.haiku.to_haiku_params(net)
    for mod, leaves in new_state.items():
        for leaf, value in leaves.items():
            np.testing.assert_allclose(got_state[mod][leaf], value, atol=1e-5, err_msg=mod)
    # test_local_stats in eval mode
    want, _ = fwd.apply(params, state, None, x, False, True)
    np.testing.assert_allclose(net.eval()(x, test_local_stats=True), want, atol=1e-5)


def test_resnet_v2_loads_haiku_params():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    fwd, params, state = _haiku(18, x, resnet_v2=True)
    net = pax.nets.ResNet18(5, channels_per_group=SMALL, resnet_v2=True)
    net = pax.haiku.load_haiku_params(net, params, state)
    want, _ = fwd.apply(params, state, None, x, False)
    np.testing.assert_allclose(net.eval()(x), want, atol=1e-5)


def test_resnet_exports_haiku_names_and_round_trips():
    x = jnp.ones((1, 16, 16, 3))
    _, params, state = _haiku(18, x)
    net = pax.haiku.load_haiku_params(pax.nets.ResNet18(5, channels_per_group=SMALL), params, state)
    p2, s2 = pax.haiku.to_haiku_params(net)
    assert jax.tree_util.tree_structure(p2) == jax.tree_util.tree_structure(params)
    assert set(s2) == set(state)


def test_resnet_channels_first_matches_channels_last():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    fwd, params, state = _haiku(18, x)
    net = pax.nets.ResNet18(5, channels_per_group=SMALL, data_format="channels_first")
    net = pax.haiku.load_haiku_params(net, params, state)
    want, _ = fwd.apply(params, state, None, x, False)
    got = net.eval()(jnp.transpose(x, (0, 3, 1, 2)))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_resnet_bad_group_setting_names_the_fix():
    with pytest.raises(ValueError, match=r"ResNet18: channels_per_group must have 4 entries"):
        pax.nets.ResNet18(5, channels_per_group=(4, 4))
    with pytest.raises(ValueError, match=r"padding must be 'SAME'.*padding='symmetric'"):
        pax.nets.ResNet18(5, padding="same")
    with pytest.raises(ValueError, match=r"bn_config takes the keys"):
        pax.nets.ResNet18(5, bn_config={"momentum": 0.1})


def test_resnet_good_settings_build():  # false-alarm check of the errors above
    net = pax.nets.ResNet18(5, channels_per_group=SMALL, bn_config={"decay_rate": 0.99})
    assert net.initial_batchnorm.decay == 0.99
    pax.nets.ResNet18(5, channels_per_group=SMALL, padding="symmetric")
