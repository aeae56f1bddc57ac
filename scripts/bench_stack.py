"""Deep models unrolled vs `pax.nn.Stack` (scan) vs Stack with remat, side by side in one process.

Workloads: a 64-layer MLP (width 32, batch 8) and a stack of 24 small transformer blocks
(LayerNorm + MultiHeadAttention + MLP, residual; width 32, 4 heads, sequence 16, batch 4).
For each: the first call (build a new jitted Adam training step, trace, compile and run it
once; median of `--repeats` fresh builds for the MLP, `--block-repeats` for the blocks, whose
unrolled compilation alone takes tens of seconds) and the step time (median of `--rounds`
rounds of `--steps` steps, systems interleaved round by round). Ratios are to the unrolled
model.

Usage:
  python scripts/bench_stack.py [--repeats 3] [--block-repeats 1] [--rounds 15] [--steps 20]
      [--unroll 1] [--workloads mlp blocks]
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

import pax
from pax import nn

WIDTH = 32


class Block(pax.Module):
    """A pre-norm transformer block: attention and an MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, *, rng_key: jax.Array) -> None:
        super().__init__()
        k1, k2, k3, k4, k5 = jax.random.split(rng_key, 5)
        self.ln1 = nn.LayerNorm(dim, rng_key=k1)
        self.attn = nn.MultiHeadAttention(dim, heads, rng_key=k2)
        self.ln2 = nn.LayerNorm(dim, rng_key=k3)
        self.fc1 = nn.Linear(dim, 2 * dim, rng_key=k4)
        self.fc2 = nn.Linear(2 * dim, dim, rng_key=k5)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


def mlp_layer(key: jax.Array) -> pax.Module:
    return nn.Sequential(nn.Linear(WIDTH, WIDTH, rng_key=key), jax.nn.relu)


def block(key: jax.Array) -> pax.Module:
    return Block(WIDTH, 4, rng_key=key)


WORKLOADS: dict[str, tuple[Callable[[jax.Array], pax.Module], int, tuple[int, ...]]] = {
    "MLP 64 x 32": (mlp_layer, 64, (8, WIDTH)),
    "transformer 24 blocks": (block, 24, (4, 16, WIDTH)),
}


def make_model(system: str, make_layer: Callable, depth: int, unroll: int) -> pax.Module:
    key = jax.random.PRNGKey(0)
    if system == "unrolled":
        return nn.Sequential(*[make_layer(k) for k in jax.random.split(key, depth)])
    return nn.Stack(make_layer, depth, remat=system == "Stack + remat", unroll=unroll, rng_key=key)


def loss_fn(params: Any, model: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    model = model.update(params)
    loss = jnp.mean(model(x) ** 2)
    return loss, (loss, model)


def new_step() -> Callable:
    """A new jitted step function, so that nothing is reused from an earlier trace."""

    def step(model: Any, opt: Any, x: jax.Array) -> tuple[Any, Any, jax.Array]:
        grads, (loss, model) = jax.grad(loss_fn, has_aux=True)(model.parameters(), model, x)
        return opt.step(grads, model), opt, loss

    return jax.jit(step)


def first_call(model: pax.Module, x: jax.Array) -> tuple[float, Callable, tuple]:
    """Seconds to build, trace, compile and run a new step once; the step and its state."""
    opt = pax.optim.adam(model.parameters(), 1e-3)
    step = new_step()
    gc.collect()  # no collection of an earlier system's garbage inside this measurement
    t0 = time.perf_counter()
    model, opt, loss = step(model, opt, x)
    loss.block_until_ready()
    return time.perf_counter() - t0, step, (model, opt, x)


def time_steps(step: Callable, state: tuple, n: int) -> tuple[float, tuple]:
    model, opt, x = state
    t0 = time.perf_counter()
    for _ in range(n):
        model, opt, loss = step(model, opt, x)
    loss.block_until_ready()
    return (time.perf_counter() - t0) / n, (model, opt, x)


def run(name: str, repeats: int, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    make_layer, depth, shape = WORKLOADS[name]
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    systems = ["unrolled", "Stack", "Stack + remat"]
    models = {s: make_model(s, make_layer, depth, args.unroll) for s in systems}
    firsts: dict[str, list[float]] = {s: [] for s in systems}
    steps, states = {}, {}
    for r in range(repeats):
        for s in systems[r % 3 :] + systems[: r % 3]:  # each system first in turn
            dt, steps[s], states[s] = first_call(models[s], x)
            firsts[s].append(dt)
    for s in systems:  # warm up the last compiled step of each system
        _, states[s] = time_steps(steps[s], states[s], 3)
    samples: dict[str, list[float]] = {s: [] for s in systems}
    for _ in range(args.rounds):
        for s in systems:
            dt, states[s] = time_steps(steps[s], states[s], args.steps)
            samples[s].append(dt)
    return {s: (statistics.median(firsts[s]), statistics.median(samples[s])) for s in systems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="first calls of the MLP")
    parser.add_argument(
        "--block-repeats", type=int, default=1, help="first calls of the transformer blocks"
    )
    parser.add_argument("--workloads", nargs="+", choices=["mlp", "blocks"], default=None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--unroll", type=int, default=1)
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}; adam training step; first call: "
        f"median of {args.repeats} (MLP) / {args.block_repeats} (blocks) fresh builds; step: "
        f"median of {args.rounds} rounds x {args.steps} steps; Stack unroll={args.unroll}"
    )
    print("| workload | model | first call (s) | ratio | step (µs) | ratio |")
    print("|---|---|---|---|---|---|")
    chosen = args.workloads or ["mlp", "blocks"]
    for key, name in zip(["mlp", "blocks"], WORKLOADS):
        if key not in chosen:
            continue
        repeats = args.repeats if key == "mlp" else args.block_repeats
        results = run(name, repeats, args)
        base_first, base_step = results["unrolled"]
        for system, (first, step) in results.items():
            print(
                f"| {name} | {system} | {first:.2f} | {first / base_first:.2f}x | "
                f"{step * 1e6:.0f} | {step / base_step:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
