"""Porting real models: PyTorch (torchvision) checkpoints, composite Haiku nets, names."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

CH = (64, 8, 8, 16)  # a small torchvision-layout ResNet18 (the stem keeps its 64 channels)
EPS = 1e-5


def _torchvision_dict(rng, num_classes=10):
    sd = {}

    def conv(name, o, i, k):
        sd[name] = rng.normal(0, 0.2, (o, i, k, k)).astype(np.float32)

    def bn(name, c):
        sd[name + ".weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[name + ".bias"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[name + ".running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
        sd[name + ".running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[name + ".num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for g, c in enumerate(CH, start=1):
        for b in range(2):
            p = f"layer{g}.{b}"
            conv(f"{p}.conv1.weight", c, cin if b == 0 else c, 3)
            bn(f"{p}.bn1", c)
            conv(f"{p}.conv2.weight", c, c, 3)
            bn(f"{p}.bn2", c)
            if b == 0 and g > 1:
                conv(f"{p}.downsample.0.weight", c, cin, 1)
                bn(f"{p}.downsample.1", c)
        cin = c
    sd["fc.weight"] = rng.normal(0, 0.2, (num_classes, cin)).astype(np.float32)
    sd["fc.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return sd


def _np_conv(x, w, stride, pad):  # NCHW, OIHW, PyTorch's symmetric padding
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    ho = (x.shape[2] - k) // stride + 1
    wo = (x.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo), np.float64)
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def _np_bn(x, sd, name):
    shape = (1, -1, 1, 1)
    mean, var = sd[name + ".running_mean"].reshape(shape), sd[name + ".running_var"].reshape(shape)
    scale, bias = sd[name + ".weight"].reshape(shape), sd[name + ".bias"].reshape(shape)
    return (x - mean) / np.sqrt(var + EPS) * scale + bias


def _np_resnet18_eval(sd, x):
    """torchvision's ResNet18 forward pass in eval mode, in numpy (NCHW)."""
    relu = lambda a: np.maximum(a, 0)
    out = relu(_np_bn(_np_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1"))
    out = np.pad(out, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ho = (out.shape[2] - 3) // 2 + 1
    wo = (out.shape[3] - 3) // 2 + 1
    out = np.max(
        [out[:, :, i : i + 2 * ho : 2, j : j + 2 * wo : 2] for i in range(3) for j in range(3)],
        axis=0,
    )
    for g in range(1, 5):
        for b in range(2):
            p = f"layer{g}.{b}"
            stride = 2 if (b == 0 and g > 1) else 1
            y = relu(_np_bn(_np_conv(out, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
            y = _np_bn(_np_conv(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
            short = out
            if f"{p}.downsample.0.weight" in sd:
                short = _np_conv(out, sd[f"{p}.downsample.0.weight"], stride, 0)
                short = _np_bn(short, sd, f"{p}.downsample.1")
            out = relu(y + short)
    return out.mean(axis=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_torchvision_resnet18_npz_loads_with_one_call(tmp_path, data_format):
    sd = _torchvision_dict(np.random.default_rng(0))
    np.savez(tmp_path / "resnet18.npz", **sd)
    net = pax.nets.ResNet18(
        10,
        channels_per_group=CH,
        bn_config={"running_stats": True},
        padding="symmetric",
        data_format=data_format,
    )
    net = pax.load_state_dict(net, np.load(tmp_path / "resnet18.npz"), rename="torchvision_resnet")
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    want = _np_resnet18_eval(sd, x.astype(np.float64))
    got = net.eval()(x if data_format == "channels_first" else np.transpose(x, (0, 2, 3, 1)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # running statistics survive a training step with PyTorch's momentum (no debiasing)
    bn = net.initial_batchnorm
    assert bn.running_stats
    np.testing.assert_allclose(bn.running_mean, sd["bn1.running_mean"])


def test_load_state_dict_unknown_preset_names_the_presets():
    with pytest.raises(
        ValueError, match=r"rename='torchvision' is not a preset.*torchvision_resnet"
    ):
        pax.load_state_dict(pax.nn.Linear(2, 3), {}, rename="torchvision")


def test_batchnorm_running_stats_pytorch_momentum():
    x = np.random.default_rng(0).normal(size=(6, 4, 4, 3)).astype(np.float32)
    bn = pax.nn.BatchNorm2D(3, decay=0.9, running_stats=True)
    bn(x)
    bn(x + 1)
    mean, var = np.zeros(3), np.ones(3)
    for batch in (x, x + 1):
        flat = batch.reshape(-1, 3).astype(np.float64)
        mean = 0.9 * mean + 0.1 * flat.mean(0)
        var = 0.9 * var + 0.1 * flat.var(0, ddof=1)  # PyTorch: unbiased, no zero-debiasing
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-5)
    sd = pax.state_dict(bn)
    assert {".running_mean", ".running_var"} <= set(sd)


def test_batchnorm_running_stats_must_be_bool():
    with pytest.raises(
        TypeError, match=r"BatchNorm2D: running_stats must be a bool \(True or False\)"
    ):
        pax.nn.BatchNorm2D(3, running_stats="yes")
    pax.nn.BatchNorm2D(3, running_stats=False)  # false alarm check


def test_native_batchnorm_test_local_stats_as_haiku():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    fwd = hk.transform_with_state(
        lambda x, t, s: hk.BatchNorm(True, True, 0.9)(x, t, test_local_stats=s)
    )
    params, state = fwd.init(None, x, True, False)
    want, _ = fwd.apply(params, state, None, x, False, True)
    bn = pax.haiku.load_haiku_params(pax.nn.BatchNorm(3), params, state).eval()
    np.testing.assert_allclose(bn(x, test_local_stats=True), want, atol=1e-6)
    average = state["batch_norm/~/mean_ema"]["average"].reshape(-1)
    np.testing.assert_allclose(bn.moving_mean, average)  # eval: the averages stay


def test_name_on_a_user_module_is_a_haiku_scope():
    class Encoder(pax.Module):
        def __init__(self):
            super().__init__(name="encoder")
            self.fc = pax.nn.Linear(2, 3)

        def __call__(self, x):
            return self.fc(x)

    class HkEncoder(hk.Module):  # layers made in __init__, as pax builds them
        def __init__(self, name=None):
            super().__init__(name=name)
            self.fc = hk.Linear(3)

        def __call__(self, x):
            return self.fc(x)

    def f(x):
        return HkEncoder(name="encoder")(x)

    fwd = hk.transform(f)
    x = jnp.ones((1, 2))
    params = fwd.init(jax.random.PRNGKey(0), x)
    assert set(params) == {"encoder/~/linear"}
    net = pax.haiku.load_haiku_params(Encoder(), params)
    np.testing.assert_allclose(net(x), fwd.apply(params, None, x))


def test_to_native_converts_hk_nets_resnet18():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    model = pax.from_haiku(hk.nets.ResNet18, pass_is_training=True)(num_classes=3)
    model = model.hk_init(x)
    native, report = pax.haiku.to_native(model)
    assert type(native).__name__ == "ResNet18", report
    assert report.converted == ("<the model>: hk.nets.ResNet18 -> pax.nets.ResNet18",)
    np.testing.assert_allclose(native.eval()(x), model.eval()(x), atol=1e-5)
    np.testing.assert_allclose(native(x), model(x), atol=1e-5)


def test_to_native_reports_what_stays_wrapped():
    model = pax.from_haiku(hk.nets.ResNet18, pass_is_training=True)(
        num_classes=3, logits_config={"with_bias": False}
    ).hk_init(jnp.ones((1, 16, 16, 3)))
    _, report = pax.haiku.to_native(model)
    assert report.converted == ()
    assert "logits_config" in report.kept[0]
