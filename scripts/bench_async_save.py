"""The effect of `pax.CheckpointManager(async_save=True)` on step time, blocking vs async.

A small training loop (an MLP of `--width` trained with Adam by `pax.utils.build_update_fn`)
saves `(model, optimizer)` every `--every` steps. Each step's wall time is measured including
the `save` call and a `block_until_ready` of the loss (what a loop that logs the loss sees). The
two modes run in the same process, alternating round by round; reported are the medians over
every step, over the steps that saved, and the time of the whole loop, per mode.

Usage:
  python scripts/bench_async_save.py [--width 1024] [--steps 60] [--every 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

import pax


def loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


def run(async_save: bool, args: argparse.Namespace) -> tuple[list[float], list[float], float]:
    net = pax.nn.MLP([args.width, args.width, args.width, args.width, 1])
    opt = pax.optim.from_optax(optax.adam(1e-3))(net.parameters())
    update_fn = pax.utils.build_update_fn(loss_fn)
    x = jax.random.normal(jax.random.key(0), (64, args.width))
    batch = (x, jnp.sin(x[:, :1]))
    loss, net, opt = update_fn(net, opt, batch)  # compile outside the timing
    loss.block_until_ready()
    steps, saving = [], []
    with tempfile.TemporaryDirectory() as directory:
        manager = pax.CheckpointManager(directory, max_to_keep=2, async_save=async_save)
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            loss, net, opt = update_fn(net, opt, batch)
            if step % args.every == 0:
                manager.save(step, (net, opt), metrics={"loss": loss})
            loss.block_until_ready()
            elapsed = time.perf_counter() - t0
            (saving if step % args.every == 0 else steps).append(elapsed)
        manager.wait()
        total = time.perf_counter() - start
    return steps, saving, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, tuple[list[float], list[float], list[float]]] = {
        False: ([], [], []),
        True: ([], [], []),
    }
    for _ in range(args.rounds):
        for mode in (False, True):
            steps, saving, total = run(mode, args)
            results[mode][0].extend(steps)
            results[mode][1].extend(saving)
            results[mode][2].append(total)
    params = 3 * args.width * args.width + args.width
    print(f"device: {jax.devices()[0].device_kind}; {params / 1e6:.1f}M parameters (+2x Adam)")
    print(f"{args.steps} steps, a save every {args.every}, {args.rounds} rounds; medians in ms")
    print(f"{'mode':<10}{'step (no save)':>16}{'step with save':>16}{'loop + wait':>14}")
    for mode, name in ((False, "blocking"), (True, "async")):
        steps, saving, totals = results[mode]
        print(
            f"{name:<10}{1e3 * statistics.median(steps):>16.2f}"
            f"{1e3 * statistics.median(saving):>16.2f}{1e3 * statistics.median(totals):>14.1f}"
        )


if __name__ == "__main__":
    main()
