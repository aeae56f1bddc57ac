"""Workload 2 of `bench_peers.py`: a small ConvNet + BatchNorm, written once per system.

The network: Conv 3x3 (1 -> 16, stride 1) -> BatchNorm -> ReLU -> Conv 3x3 (16 -> 32,
stride 2) -> BatchNorm -> ReLU -> mean over space -> Linear (32 -> 10), "SAME" padding and no
convolution biases; softmax cross-entropy on 28x28x1 images, batch 128, Adam. BatchNorm uses the
batch statistics and updates moving averages with decay 0.9, eps 1e-5. Every system starts from
the same weights. Equinox's layers are per-example and channels-first, so it gets the images
already transposed to ``(N, C, H, W)`` and maps over the batch with ``jax.vmap``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _bench_models import LEARNING_RATE, Bench, Step, _pax_optimizer, flatten_unflatten
from flax import nnx

import pax

BATCH = 128
SIZE = 28
CHANNELS = (16, 32)
CLASSES = 10
DECAY = 0.9
EPS = 1e-5


def conv_weights(seed: int = 2) -> dict[str, np.ndarray]:
    """Kernels ``HWIO`` and the linear layer ``[in, out]``, He-normal."""
    rng = np.random.default_rng(seed)
    c1, c2 = CHANNELS

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "k1": he((3, 3, 1, c1), 9),
        "k2": he((3, 3, c1, c2), 9 * c1),
        "w": he((c2, CLASSES), c2),
        "b": np.zeros(CLASSES, np.float32),
    }


def conv_batch(seed: int = 3) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.standard_normal((BATCH, SIZE, SIZE, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
    return images, labels


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _tuple_step(train_step: Any) -> Step:
    """Adapts ``train_step(*state, x, y) -> (*state, loss)`` to ``step(state, x, y)``."""

    def step(state, x, y):
        *state, loss = train_step(*state, x, y)
        return tuple(state), loss

    return step


# --- plain JAX


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _batch_norm(x: jax.Array, p: dict, s: dict) -> tuple[jax.Array, dict]:
    """Haiku's BatchNorm: batch statistics, zero-debiased moving averages."""
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x), (0, 1, 2)) - jnp.square(mean)
    counter = s["counter"] + 1
    debias = 1.0 - jnp.power(DECAY, counter)
    hidden_mean = s["hidden_mean"] * DECAY + mean * (1.0 - DECAY)
    hidden_var = s["hidden_var"] * DECAY + var * (1.0 - DECAY)
    new_s = {
        "counter": counter,
        "hidden_mean": hidden_mean,
        "hidden_var": hidden_var,
        "mean": hidden_mean / debias,
        "var": hidden_var / debias,
    }
    y = (x - mean) * (p["scale"] * jax.lax.rsqrt(var + EPS)) + p["offset"]
    return y, new_s


def plain_convnet(weights: dict) -> Bench:
    tx = optax.adam(LEARNING_RATE)

    def forward(params, state, x):
        x, bn1 = _batch_norm(_conv(x, params["conv1"], 1), params["bn1"], state["bn1"])
        x = jax.nn.relu(x)
        x, bn2 = _batch_norm(_conv(x, params["conv2"], 2), params["bn2"], state["bn2"])
        x = jnp.mean(jax.nn.relu(x), (1, 2))
        return x @ params["linear"]["w"] + params["linear"]["b"], {"bn1": bn1, "bn2": bn2}

    def loss_fn(params, state, x, y):
        logits, state = forward(params, state, x)
        return _xent(logits, y), state

    def bn_init(c: int) -> tuple[dict, dict]:
        zeros = jnp.zeros(c, jnp.float32)
        params = {"scale": jnp.ones(c, jnp.float32), "offset": zeros}
        state = {
            "counter": jnp.array(0, jnp.int32),
            "hidden_mean": zeros,
            "hidden_var": zeros,
            "mean": zeros,
            "var": jnp.ones(c, jnp.float32),
        }
        return params, state

    def init() -> Any:
        (p1, s1), (p2, s2) = bn_init(CHANNELS[0]), bn_init(CHANNELS[1])
        params = {
            "conv1": jnp.asarray(weights["k1"]),
            "bn1": p1,
            "conv2": jnp.asarray(weights["k2"]),
            "bn2": p2,
            "linear": {"w": jnp.asarray(weights["w"]), "b": jnp.asarray(weights["b"])},
        }
        return params, {"bn1": s1, "bn2": s2}, tx.init(params)

    def make_step() -> Step:
        @jax.jit
        def train_step(params, state, opt_state, x, y):
            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), state, opt_state, loss

        return _tuple_step(train_step)

    return Bench("plain JAX", init, make_step, lambda s: s[0], flatten_unflatten, _none)


def _none(_: Any) -> None:
    return None


# --- pax


class _PaxConvNet(pax.Module):
    def __init__(self, weights: dict) -> None:
        super().__init__()
        c1, c2 = CHANNELS
        self.conv1 = pax.nn.Conv2D(1, c1, 3, with_bias=False)
        self.bn1 = pax.nn.BatchNorm2D(c1, decay=DECAY, eps=EPS)
        self.conv2 = pax.nn.Conv2D(c1, c2, 3, stride=2, with_bias=False)
        self.bn2 = pax.nn.BatchNorm2D(c2, decay=DECAY, eps=EPS)
        self.linear = pax.nn.Linear(c2, CLASSES)
        self.conv1.weight = jnp.asarray(weights["k1"])
        self.conv2.weight = jnp.asarray(weights["k2"])
        self.linear.weight = jnp.asarray(weights["w"])
        self.linear.bias = jnp.asarray(weights["b"])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        return self.linear(jnp.mean(x, (1, 2)))


def pax_convnet(weights: dict) -> Bench:
    tx = optax.adam(LEARNING_RATE)
    make_opt = _pax_optimizer(tx)

    def init() -> Any:
        pax.seed_rng_key(0)
        model = _PaxConvNet(weights)
        params = model.parameters()
        return model, (make_opt(params) if make_opt else tx.init(params))

    def loss_fn(params, model, x, y):
        model = model.update(params)
        loss = _xent(model(x), y)
        return loss, (loss, model)

    def make_step() -> Step:
        @jax.jit
        def train_step(model, opt, x, y):
            params = model.parameters()
            grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(params, model, x, y)
            if make_opt:
                return opt.step(grads, model), opt, loss
            updates, opt = tx.update(grads, opt, params)
            return model.update(optax.apply_updates(params, updates)), opt, loss

        return _tuple_step(train_step)

    name = "pax" if make_opt else "pax (raw optax)"
    return Bench(name, init, make_step, lambda s: s[0], flatten_unflatten, _none)


# --- Haiku


def haiku_convnet(weights: dict) -> Bench:
    tx = optax.adam(LEARNING_RATE)
    c1, c2 = CHANNELS

    def forward(x: jax.Array) -> jax.Array:
        bn = dict(create_scale=True, create_offset=True, decay_rate=DECAY, eps=EPS)
        x = hk.Conv2D(c1, 3, with_bias=False, name="conv1")(x)
        x = jax.nn.relu(hk.BatchNorm(**bn, name="bn1")(x, is_training=True))
        x = hk.Conv2D(c2, 3, stride=2, with_bias=False, name="conv2")(x)
        x = jax.nn.relu(hk.BatchNorm(**bn, name="bn2")(x, is_training=True))
        return hk.Linear(CLASSES, name="linear")(jnp.mean(x, (1, 2)))

    net = hk.without_apply_rng(hk.transform_with_state(forward))

    def loss_fn(params, state, x, y):
        logits, state = net.apply(params, state, x)
        return _xent(logits, y), state

    def init() -> Any:
        params, state = net.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1), jnp.float32))
        params = hk.data_structures.to_mutable_dict(params)
        params["conv1"]["w"] = jnp.asarray(weights["k1"])
        params["conv2"]["w"] = jnp.asarray(weights["k2"])
        params["linear"] = {"w": jnp.asarray(weights["w"]), "b": jnp.asarray(weights["b"])}
        return params, state, tx.init(params)

    def make_step() -> Step:
        @jax.jit
        def train_step(params, state, opt_state, x, y):
            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), state, opt_state, loss

        return _tuple_step(train_step)

    return Bench("Haiku", init, make_step, lambda s: s[0], flatten_unflatten, _none)


# --- Equinox (filter_jit)


class _EqxConvNet(eqx.Module):
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    linear: eqx.nn.Linear

    def __init__(self, weights: dict) -> None:
        c1, c2 = CHANNELS
        k = jax.random.split(jax.random.key(0), 3)
        bn = dict(axis_name="batch", eps=EPS, momentum=DECAY, mode="batch")
        conv1 = eqx.nn.Conv2d(1, c1, 3, padding="SAME", use_bias=False, key=k[0])
        conv2 = eqx.nn.Conv2d(c1, c2, 3, stride=2, padding="SAME", use_bias=False, key=k[1])
        linear = eqx.nn.Linear(c2, CLASSES, key=k[2])
        oihw = (3, 2, 0, 1)
        self.conv1 = eqx.tree_at(
            lambda m: m.weight, conv1, jnp.asarray(weights["k1"]).transpose(oihw)
        )
        self.conv2 = eqx.tree_at(
            lambda m: m.weight, conv2, jnp.asarray(weights["k2"]).transpose(oihw)
        )
        self.linear = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            linear,
            (jnp.asarray(weights["w"].T), jnp.asarray(weights["b"])),
        )
        self.bn1 = eqx.nn.BatchNorm(c1, **bn)
        self.bn2 = eqx.nn.BatchNorm(c2, **bn)

    def __call__(self, x: jax.Array, state: eqx.nn.State) -> tuple[jax.Array, eqx.nn.State]:
        x, state = self.bn1(self.conv1(x), state)
        x, state = self.bn2(self.conv2(jax.nn.relu(x)), state)
        return self.linear(jnp.mean(jax.nn.relu(x), (1, 2))), state


def equinox_convnet(weights: dict) -> Bench:
    tx = optax.adam(LEARNING_RATE)

    def loss_fn(model, state, x, y):
        batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        logits, state = batched(x, state)
        return _xent(logits, y), state

    def init() -> Any:
        model, state = eqx.nn.make_with_state(_EqxConvNet)(weights)
        return model, state, tx.init(eqx.filter(model, eqx.is_array))

    def make_step() -> Step:
        @eqx.filter_jit
        def train_step(model, state, opt_state, x, y):
            grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
            (loss, state), grads = grad_fn(model, state, x, y)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), state, opt_state, loss

        return _tuple_step(train_step)

    def to_nchw(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x.transpose(0, 3, 1, 2), y

    return Bench(
        "Equinox (filter_jit)",
        init,
        make_step,
        lambda s: s[0],
        flatten_unflatten,
        _none,
        prepare=to_nchw,
    )


# --- Flax NNX (nnx.jit)


class _NnxConvNet(nnx.Module):
    def __init__(self, weights: dict) -> None:
        c1, c2 = CHANNELS
        rngs = nnx.Rngs(0)
        bn = dict(momentum=DECAY, epsilon=EPS, use_running_average=False, rngs=rngs)
        self.conv1 = nnx.Conv(1, c1, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(c1, **bn)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), strides=2, padding="SAME", use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(c2, **bn)
        self.linear = nnx.Linear(c2, CLASSES, rngs=rngs)
        self.conv1.kernel.value = jnp.asarray(weights["k1"])
        self.conv2.kernel.value = jnp.asarray(weights["k2"])
        self.linear.kernel.value = jnp.asarray(weights["w"])
        self.linear.bias.value = jnp.asarray(weights["b"])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        return self.linear(jnp.mean(x, (1, 2)))


def nnx_convnet(weights: dict) -> Bench:
    tx = optax.adam(LEARNING_RATE)

    def loss_fn(model, x, y):
        return _xent(model(x), y)

    def init() -> Any:
        model = _NnxConvNet(weights)
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    def make_step() -> Step:
        @nnx.jit
        def train_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
            optimizer.update(model, grads)
            return loss

        def step(state, x, y):
            return state, train_step(*state, x, y)

        return step

    return Bench("Flax NNX (nnx.jit)", init, make_step, lambda s: s[0], flatten_unflatten, _none)


def convnet_benches() -> tuple[list[Bench], str]:
    """All systems for workload 2 (plain JAX first), or ``([], why)`` when pax lacks a layer."""
    missing = [n for n in ("Conv2D", "BatchNorm2D") if not hasattr(pax.nn, n)]
    if missing:
        return [], f"pax.nn has no {', '.join(missing)} yet"
    weights = conv_weights()
    return [
        plain_convnet(weights),
        pax_convnet(weights),
        haiku_convnet(weights),
        equinox_convnet(weights),
        nnx_convnet(weights),
    ], ""
