"""Dispatch overhead of pax modules against plain nested dicts, side by side in one process.

Workload: a jitted training step (forward, grad, optax adam) of a deep narrow MLP (64 layers of
width 32, batch 8), and a flatten + unflatten round trip of the same model. The pax steps: raw
optax with its state mirroring the module tree, `pax.optim.from_optax` (flat state), and the same
optimizer through `pax.utils.build_update_fn`. Systems are
interleaved round by round; medians are reported with the ratio to plain JAX.

Usage:
  python scripts/bench_overhead.py [--depth 64] [--rounds 30] [--steps 50]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jmp
import optax

import pax

WIDTH, BATCH = 32, 8


def make_plain(depth: int, key: jax.Array) -> list[dict[str, jax.Array]]:
    keys = jax.random.split(key, depth)
    return [
        {"w": jax.random.normal(k, (WIDTH, WIDTH)) / WIDTH**0.5, "b": jnp.zeros((WIDTH,))}
        for k in keys
    ]


def plain_forward(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    last = len(params) - 1
    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < last:
            x = jax.nn.relu(x)
    return x


def build_steps(depth: int) -> dict[str, tuple[Callable, tuple]]:
    tx = optax.adam(1e-3)
    x = jnp.ones((BATCH, WIDTH))
    y = jnp.zeros((BATCH, WIDTH))

    params = make_plain(depth, jax.random.PRNGKey(0))

    @jax.jit
    def plain_step(params, opt_state, x, y):
        def loss_fn(p):
            return jnp.mean((plain_forward(p, x) - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    model = pax.nn.MLP([WIDTH] * (depth + 1), rng_key=jax.random.PRNGKey(0))

    def loss_fn(params, model, x, y):
        model = model.update(params)
        loss = jnp.mean((model(x) - y) ** 2)
        return loss, (loss, model)

    @jax.jit
    def pax_step(model, opt_state, x, y):
        params = model.parameters()
        grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(params, model, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return model.update(optax.apply_updates(params, updates)), opt_state, loss

    steps = {
        "plain": (plain_step, (params, tx.init(params), x, y)),
        "pax + optax": (pax_step, (model, tx.init(model.parameters()), x, y)),
    }
    opt = pax.optim.from_optax(tx)(model.parameters())

    @jax.jit
    def pax_optim_step(model, opt, x, y):
        grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(model.parameters(), model, x, y)
        model = opt.step(grads, model)
        return model, opt, loss

    update_fn = pax.utils.build_update_fn(lambda p, m, inputs: loss_fn(p, m, *inputs))

    def pax_update_fn_step(model, opt, x, y):
        loss, model, opt = update_fn(model, opt, (x, y))
        return model, opt, loss

    steps["pax + from_optax"] = (pax_optim_step, (model, opt, x, y))
    steps["pax + build_update_fn"] = (pax_update_fn_step, (model, opt, x, y))
    # The policy wrapper on every layer: with a float32 policy the compiled program is the
    # plain one, so this row is the wrapper's own cost; bfloat16 adds the CPU's bf16 speed.
    for name, compute in (("f32 policy", jnp.float32), ("bf16 policy", jnp.bfloat16)):
        policy = jmp.Policy(jnp.float32, compute, jnp.float32)
        mixed = pax.mixed_precision.apply_policy(model, {pax.nn.Linear: policy})
        steps[f"pax + {name}"] = (pax_update_fn_step, (mixed, opt, x, y))
    return steps


def time_step(fn: Callable, state: tuple, n: int) -> tuple[float, tuple]:
    a, b, x, y = state
    t0 = time.perf_counter()
    for _ in range(n):
        a, b, loss = fn(a, b, x, y)
    loss.block_until_ready()
    return (time.perf_counter() - t0) / n, (a, b, x, y)


def time_round_trip(tree: Any, n: int) -> float:
    flatten, unflatten = jax.tree_util.tree_flatten, jax.tree_util.tree_unflatten
    t0 = time.perf_counter()
    for _ in range(n):
        leaves, treedef = flatten(tree)
        tree = unflatten(treedef, leaves)
    return (time.perf_counter() - t0) / n


def count_gc(fn: Callable, state: tuple, n: int) -> int:
    collections = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(callback)
    try:
        time_step(fn, state, n)
    finally:
        gc.callbacks.remove(callback)
    return len(collections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    steps = build_steps(args.depth)
    states = {}
    for name, (fn, state) in steps.items():  # compile and warm up
        _, states[name] = time_step(fn, state, 3)

    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, (fn, _) in steps.items():
            dt, states[name] = time_step(fn, states[name], args.steps)
            samples[name].append(dt)

    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}; MLP depth {args.depth}, width "
        f"{WIDTH}, batch {BATCH}, adam; medians of {args.rounds} rounds x {args.steps} steps"
    )
    base = statistics.median(samples["plain"])
    print(f"{'train step':<22}{'us/step':>10}{'ratio':>8}{'gc/1000 steps':>15}")
    for name, (fn, _) in steps.items():
        med = statistics.median(samples[name])
        n_gc = count_gc(fn, states[name], 1000)
        print(f"{name:<22}{med * 1e6:>10.1f}{med / base:>8.3f}{n_gc:>15}")

    plain_tree = states["plain"][0]
    model = states["pax + optax"][0]
    rt: dict[str, list[float]] = {"plain": [], "pax": []}
    for _ in range(args.rounds):
        rt["plain"].append(time_round_trip(plain_tree, 200))
        rt["pax"].append(time_round_trip(model, 200))
    base_rt = statistics.median(rt["plain"])
    n_modules = 1 + len(model.layers)
    print(f"\n{'flatten+unflatten':<22}{'us':>10}{'ratio':>8}{'us/module':>15}")
    for name, values in rt.items():
        med = statistics.median(values)
        per = f"{med * 1e6 / n_modules:.2f}" if name == "pax" else "-"
        print(f"{name:<22}{med * 1e6:>10.1f}{med / base_rt:>8.2f}{per:>15}")

    per_module_costs(list(model.layers))


def per_module_costs(modules: list, n: int = 2000, rounds: int = 7) -> None:
    """Median cost of pax's own flatten and unflatten functions on one module, and of the
    same round trip through jax.tree_util (which adds the C++/Python crossing)."""
    from pax._src.core.pytree import flatten as _flatten
    from pax._src.core.pytree import make_unflatten as _make_unflatten

    unflatten = _make_unflatten(type(modules[0]))
    flat = [_flatten(m) for m in modules]
    trees = [jax.tree_util.tree_flatten(m) for m in modules]

    def per_call(fn: Callable[[], None]) -> float:
        values = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            values.append((time.perf_counter() - t0) / n / len(modules))
        return statistics.median(values)

    def empty() -> None:
        for _m in modules:
            pass

    def do_flatten() -> None:
        for m in modules:
            _flatten(m)

    def do_unflatten() -> None:
        for children, aux in flat:
            unflatten(aux, children)

    def do_jax_round_trip() -> None:
        for leaves, treedef in trees:
            jax.tree_util.tree_flatten(jax.tree_util.tree_unflatten(treedef, leaves))

    loop = per_call(empty)
    print(
        f"\nper module (median): pax flatten {(per_call(do_flatten) - loop) * 1e6:.3f} us, "
        f"pax unflatten {(per_call(do_unflatten) - loop) * 1e6:.3f} us; "
        f"jax.tree_util unflatten+flatten of one Linear {per_call(do_jax_round_trip) * 1e6:.3f} us"
    )


if __name__ == "__main__":
    main()
