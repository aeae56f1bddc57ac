"""The MLP workloads of `bench_peers.py`, written once per system.

Every system gets the same weights (He-normal, from numpy), the same float32 math
(``x @ w + b`` with ReLU between layers, mean squared error, Adam) and its own idiomatic
training step. A `Bench` bundles what the harness needs: a fresh training state, a factory for a
fresh (not yet compiled) step function and the system's tree operations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import pax

WIDTH = 32
BATCH = 8
LEARNING_RATE = 1e-3

Step = Callable[[Any, jax.Array, jax.Array], tuple[Any, jax.Array]]


@dataclasses.dataclass
class Bench:
    """One system's implementation of a workload.

    Attributes:
      name: the system, as printed in the tables.
      init: returns a fresh training state.
      make_step: returns a fresh step ``step(state, x, y) -> (state, loss)`` whose first call
        traces and compiles.
      model: returns the model (the object a user holds) from a training state.
      flatten_unflatten: ``jax.tree_util`` flatten then unflatten of a model.
      split_merge: the system's "take the parameters out, put them back" round trip.
      prepare: maps the batch ``(x, y)`` to the layout the system takes (untimed).
    """

    name: str
    init: Callable[[], Any]
    make_step: Callable[[], Step]
    model: Callable[[Any], Any]
    flatten_unflatten: Callable[[Any], Any]
    split_merge: Callable[[Any], Any]
    prepare: Callable[..., tuple] = lambda *batch: batch


def mlp_weights(depth: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-normal weights ``[in, out]`` and small biases for a `depth`-layer MLP."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((WIDTH, WIDTH)) * np.sqrt(2.0 / WIDTH)).astype(np.float32),
            (rng.standard_normal(WIDTH) * 0.01).astype(np.float32),
        )
        for _ in range(depth)
    ]


def mlp_batch(seed: int = 1) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((BATCH, WIDTH)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((BATCH, WIDTH)), jnp.float32)
    return x, y


def _mse(out: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(out - y))


def flatten_unflatten(tree: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _copy(x: Any) -> Any:
    return x


def _take(_: Any, new: Any) -> Any:
    return new


# --- plain JAX: nested dicts + optax


def plain_mlp(weights: list) -> Bench:
    depth = len(weights)
    tx = optax.adam(LEARNING_RATE)
    names = [f"linear_{i}" for i in range(depth)]

    def forward(params: dict, x: jax.Array) -> jax.Array:
        for i, name in enumerate(names):
            x = x @ params[name]["w"] + params[name]["b"]
            if i < depth - 1:
                x = jax.nn.relu(x)
        return x

    def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
        return _mse(forward(params, x), y)

    def init() -> Any:
        params = {
            n: {"w": jnp.asarray(w), "b": jnp.asarray(b)} for n, (w, b) in zip(names, weights)
        }
        return params, tx.init(params)

    def make_step() -> Step:
        @jax.jit
        def train_step(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def step(state, x, y):
            params, opt_state, loss = train_step(*state, x, y)
            return (params, opt_state), loss

        return step

    def split_merge(params: dict) -> dict:
        trainable = jax.tree_util.tree_map(_copy, params)
        return jax.tree_util.tree_map(_take, params, trainable)

    return Bench("plain JAX", init, make_step, lambda s: s[0], flatten_unflatten, split_merge)


# --- pax


def _pax_optimizer(tx: optax.GradientTransformation) -> Any:
    """`pax.optim.from_optax(tx)` when it exists, else None (the step then calls optax)."""
    try:
        from pax.optim import from_optax
    except ImportError:
        return None
    return from_optax(tx)


def pax_mlp(weights: list) -> Bench:
    depth = len(weights)
    tx = optax.adam(LEARNING_RATE)
    make_opt = _pax_optimizer(tx)

    def init() -> Any:
        pax.seed_rng_key(0)
        model = pax.nn.MLP([WIDTH] * (depth + 1), activation=jax.nn.relu)
        for layer, (w, b) in zip(model.layers, weights):
            layer.weight = jnp.asarray(w)
            layer.bias = jnp.asarray(b)
        params = model.parameters()
        return model, (make_opt(params) if make_opt else tx.init(params))

    def loss_fn(params, model, x, y):
        model = model.update(params)
        loss = _mse(model(x), y)
        return loss, (loss, model)

    def make_step() -> Step:
        if make_opt:

            @jax.jit
            def train_step(model, opt, x, y):
                grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(
                    model.parameters(), model, x, y
                )
                model = opt.step(grads, model)
                return model, opt, loss

        else:

            @jax.jit
            def train_step(model, opt_state, x, y):
                params = model.parameters()
                grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(params, model, x, y)
                updates, opt_state = tx.update(grads, opt_state, params)
                model = model.update(optax.apply_updates(params, updates))
                return model, opt_state, loss

        def step(state, x, y):
            model, opt, loss = train_step(*state, x, y)
            return (model, opt), loss

        return step

    def split_merge(model: pax.Module) -> pax.Module:
        return model.update(model.parameters())

    name = "pax" if make_opt else "pax (raw optax)"
    return Bench(name, init, make_step, lambda s: s[0], flatten_unflatten, split_merge)


# --- Haiku: hk.transform + optax


def haiku_mlp(weights: list) -> Bench:
    depth = len(weights)
    tx = optax.adam(LEARNING_RATE)

    def forward(x: jax.Array) -> jax.Array:
        for i in range(depth):
            x = hk.Linear(WIDTH, name=f"linear_{i}")(x)
            if i < depth - 1:
                x = jax.nn.relu(x)
        return x

    net = hk.without_apply_rng(hk.transform(forward))

    def loss_fn(params, x, y):
        return _mse(net.apply(params, x), y)

    def init() -> Any:
        params = {
            f"linear_{i}": {"w": jnp.asarray(w), "b": jnp.asarray(b)}
            for i, (w, b) in enumerate(weights)
        }
        return params, tx.init(params)

    def make_step() -> Step:
        @jax.jit
        def train_step(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        def step(state, x, y):
            params, opt_state, loss = train_step(*state, x, y)
            return (params, opt_state), loss

        return step

    def split_merge(params: dict) -> dict:
        trainable, rest = hk.data_structures.partition(lambda m, n, v: n in ("w", "b"), params)
        return hk.data_structures.merge(trainable, rest)

    return Bench("Haiku", init, make_step, lambda s: s[0], flatten_unflatten, split_merge)


# --- Equinox: eqx.Module, filter_jit or jax.jit


class _EqxMLP(eqx.Module):
    layers: list

    def __init__(self, weights: list) -> None:
        keys = jax.random.split(jax.random.key(0), len(weights))
        layers = []
        for (w, b), key in zip(weights, keys):
            layer = eqx.nn.Linear(WIDTH, WIDTH, key=key)
            layer = eqx.tree_at(
                lambda m: (m.weight, m.bias), layer, (jnp.asarray(w.T), jnp.asarray(b))
            )
            layers.append(layer)
        self.layers = layers

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def equinox_mlp(weights: list, filter_jit: bool) -> Bench:
    tx = optax.adam(LEARNING_RATE)

    def loss_fn(model, x, y):
        return _mse(jax.vmap(model)(x), y)

    def init() -> Any:
        model = _EqxMLP(weights)
        return model, tx.init(eqx.filter(model, eqx.is_array))

    def make_step() -> Step:
        if filter_jit:

            @eqx.filter_jit
            def train_step(model, opt_state, x, y):
                loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
                updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
                return eqx.apply_updates(model, updates), opt_state, loss

        else:

            @jax.jit
            def train_step(model, opt_state, x, y):
                loss, grads = jax.value_and_grad(loss_fn)(model, x, y)
                updates, opt_state = tx.update(grads, opt_state, model)
                return eqx.apply_updates(model, updates), opt_state, loss

        def step(state, x, y):
            model, opt_state, loss = train_step(*state, x, y)
            return (model, opt_state), loss

        return step

    def split_merge(model: eqx.Module) -> eqx.Module:
        params, static = eqx.partition(model, eqx.is_array)
        return eqx.combine(params, static)

    name = "Equinox (filter_jit)" if filter_jit else "Equinox (jax.jit)"
    return Bench(name, init, make_step, lambda s: s[0], flatten_unflatten, split_merge)


# --- Flax NNX: nnx.jit, or split/merge + jax.jit


class _NnxMLP(nnx.Module):
    def __init__(self, weights: list) -> None:
        rngs = nnx.Rngs(0)
        layers = []
        for w, b in weights:
            layer = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
            layer.kernel.value = jnp.asarray(w)
            layer.bias.value = jnp.asarray(b)
            layers.append(layer)
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = jax.nn.relu(x)
        return x


def nnx_mlp(weights: list, nnx_jit: bool) -> Bench:
    tx = optax.adam(LEARNING_RATE)

    def loss_fn(model, x, y):
        return _mse(model(x), y)

    def init() -> Any:
        model = _NnxMLP(weights)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        if nnx_jit:
            return model, optimizer
        return nnx.split((model, optimizer))

    def make_step() -> Step:
        if nnx_jit:

            @nnx.jit
            def train_step(model, optimizer, x, y):
                loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
                optimizer.update(model, grads)
                return loss

            def step(state, x, y):
                return state, train_step(*state, x, y)

            return step

        @jax.jit
        def pure_step(graphdef, state, x, y):
            model, optimizer = nnx.merge(graphdef, state)
            loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
            optimizer.update(model, grads)
            return nnx.split((model, optimizer))[1], loss

        def step(state, x, y):
            graphdef, params = state
            params, loss = pure_step(graphdef, params, x, y)
            return (graphdef, params), loss

        return step

    def model(state: Any) -> Any:
        return state[0] if nnx_jit else nnx.merge(*state)[0]

    def split_merge(model: nnx.Module) -> nnx.Module:
        graphdef, state = nnx.split(model)
        return nnx.merge(graphdef, state)

    name = "Flax NNX (nnx.jit)" if nnx_jit else "Flax NNX (split/merge + jax.jit)"
    return Bench(name, init, make_step, model, flatten_unflatten, split_merge)


def mlp_benches(depth: int) -> list[Bench]:
    """All systems for the `depth`-layer MLP, plain JAX first."""
    weights = mlp_weights(depth)
    return [
        plain_mlp(weights),
        pax_mlp(weights),
        haiku_mlp(weights),
        equinox_mlp(weights, filter_jit=True),
        equinox_mlp(weights, filter_jit=False),
        nnx_mlp(weights, nnx_jit=True),
        nnx_mlp(weights, nnx_jit=False),
    ]
