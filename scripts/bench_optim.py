"""Cost of a pax optimizer in a jitted training step, against plain JAX + optax, in one process.

Workload: a deep narrow MLP (64 `pax.nn.Linear(32, 32)` layers, batch 8) trained with adam.
Systems, interleaved round by round in a shuffled order (medians, ratio to plain JAX):

- plain:           nested dicts of arrays, `tx.update` + `optax.apply_updates`.
- pax + optax:     a pax model with optax state mirroring the module tree (no pax optimizer).
- pax + from_optax: `pax.optim.from_optax(tx)` (optax state over a flat key-path mapping).
- pax + update_fn: the same optimizer through `pax.utils.build_update_fn`.

Usage:
  python scripts/bench_optim.py [--depth 64] [--rounds 30] [--steps 50]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

import pax

WIDTH, BATCH = 32, 8


def build(depth: int) -> dict[str, tuple[Callable, tuple]]:
    tx = optax.adam(1e-3)
    x = jnp.ones((BATCH, WIDTH))
    y = jnp.zeros((BATCH, WIDTH))
    keys = jax.random.split(jax.random.PRNGKey(0), depth)
    layers = [pax.nn.Linear(WIDTH, WIDTH, rng_key=k) for k in keys]
    model = pax.nn.Sequential(*layers)
    plain = [{"w": m.weight, "b": m.bias} for m in layers]

    @jax.jit
    def plain_step(params, opt_state, inputs):
        def loss_fn(p):
            h, target = inputs
            for layer in p:
                h = h @ layer["w"] + layer["b"]
            return jnp.mean((h - target) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, optax.apply_updates(params, updates), opt_state

    def loss_fn(params, model, inputs):
        model = model.update(params)
        h, target = inputs
        loss = jnp.mean((model(h) - target) ** 2)
        return loss, (loss, model)

    @jax.jit
    def mirror_step(model, opt_state, inputs):
        params = model.parameters()
        grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(params, model, inputs)
        updates, opt_state = tx.update(grads, opt_state, params)
        return loss, model.update(optax.apply_updates(params, updates)), opt_state

    @jax.jit
    def optim_step(model, opt, inputs):
        grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(model.parameters(), model, inputs)
        model = opt.step(grads, model)
        return loss, model, opt

    opt = pax.optim.from_optax(tx)(model.parameters())
    return {
        "plain": (plain_step, (plain, tx.init(plain), (x, y))),
        "pax + optax": (mirror_step, (model, tx.init(model.parameters()), (x, y))),
        "pax + from_optax": (optim_step, (model, opt, (x, y))),
        "pax + update_fn": (pax.utils.build_update_fn(loss_fn), (model, opt, (x, y))),
    }


def run(fn: Callable, state: tuple, n: int) -> tuple[float, float, tuple]:
    """Runs `n` steps; returns (wall seconds, process CPU seconds) per step and the new state."""
    a, b, inputs = state
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        loss, a, b = fn(a, b, inputs)
    loss.block_until_ready()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall / n, cpu / n, (a, b, inputs)


def round_trip(state: tuple, n: int) -> float:
    """Host-side pytree cost of one call: flatten the arguments, unflatten the results."""
    flatten, unflatten = jax.tree_util.tree_flatten, jax.tree_util.tree_unflatten
    t0 = time.perf_counter()
    for _ in range(n):
        leaves, treedef = flatten(state)
        state = unflatten(treedef, leaves)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    systems = build(args.depth)
    states = {}
    for name, (fn, state) in systems.items():  # compile and warm up
        *_, states[name] = run(fn, state, 5)
    walls: dict[str, list[float]] = {name: [] for name in systems}
    cpus: dict[str, list[float]] = {name: [] for name in systems}
    trips: dict[str, list[float]] = {name: [] for name in systems}
    order = list(systems)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            fn = systems[name][0]
            wall, cpu, states[name] = run(fn, states[name], args.steps)
            walls[name].append(wall)
            cpus[name].append(cpu)
            trips[name].append(round_trip(states[name], 20))

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0].platform}; "
        f"{args.depth} x Linear({WIDTH}, {WIDTH}), batch {BATCH}, adam; medians of "
        f"{args.rounds} interleaved rounds x {args.steps} steps"
    )
    columns = (("wall", walls, 10), ("cpu", cpus, 10), ("pytree", trips, 12))
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d, _ in columns}
    print(f"{'train step':<20}" + "".join(f"{k + ' us':>{w}}{'ratio':>8}" for k, _, w in columns))
    for name in systems:
        cells = "".join(
            f"{med[k][name] * 1e6:>{w}.1f}{med[k][name] / med[k]['plain']:>8.3f}"
            for k, _, w in columns
        )
        print(f"{name:<20}{cells}")
    print(
        "wall: per step; cpu: process CPU time per step (all threads; steadier on a busy\n"
        "machine); pytree: flatten of (model, optimizer, inputs) + unflatten, per call"
    )


if __name__ == "__main__":
    main()
