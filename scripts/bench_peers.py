"""Benchmarks pax against plain JAX, Haiku, Equinox and Flax NNX, side by side in one process.

Workloads (same math, shapes and float32 in every system):

1. a jitted training step (forward, grad, Adam) of a deep narrow MLP: 64 layers of width 32,
   batch 8 (dispatch-bound; microseconds per step);
2. a small ConvNet + BatchNorm on 28x28x1 images, batch 128 (compute-bound; steps per second);
3. tree operations on the model of workload 1: ``jax.tree_util`` flatten + unflatten, and the
   system's split + merge (``parameters()``/``update()``, ``eqx.partition``/``combine``,
   ``nnx.split``/``merge``, Haiku's ``data_structures.partition``/``merge``, a dict copy);
4. the first call (trace + compile + run) of workload 1's step;
5. workload 1 at depth 16, 64 and 256.

Systems run round-robin (each round visits every system, starting one further along), every step
is timed alone and blocked on its loss, and the tables report medians and each system's time
relative to plain JAX (lower is better). Before timing, every system's losses over the first two
steps are checked against plain JAX, so all compute the same thing.

glibc's malloc thresholds are raised first (see `tune_malloc`; ``--system-malloc`` keeps them),
so that XLA's large per-step buffers are reused instead of page-faulted in on every step.

Usage: ``python scripts/bench_peers.py [--quick] [--system-malloc] [--out bench_results]``.
Writes ``peers.md`` and ``overhead_vs_depth.png`` to the output folder (``--quick``: a smoke
run in under a minute on an idle 2-core machine). The benchmark-only dependencies are listed in
``scripts/requirements-bench.txt``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import _bench_convnet as bc
import _bench_models as bm
import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Config:
    """How long to measure. A block is one system's turn in a round; it runs for at least
    `*_block` seconds and at least `min_steps` steps (or 10 calls for tree operations)."""

    depths: tuple[int, ...]
    main_depth: int
    main_rounds: int  # workload 1 (the main depth of workload 5)
    main_block: float
    depth_rounds: int  # the other depths of workload 5
    depth_block: float
    min_steps: int
    tree_rounds: int
    tree_block: float
    compile_rounds: int
    compile_depth: int
    conv_rounds: int
    conv_block: float


FULL = Config(
    depths=(16, 64, 256),
    main_depth=64,
    main_rounds=40,
    main_block=0.04,
    depth_rounds=16,
    depth_block=0.05,
    min_steps=3,
    tree_rounds=20,
    tree_block=0.015,
    compile_rounds=3,
    compile_depth=64,
    conv_rounds=30,
    conv_block=0.0,
)
QUICK = Config(  # a smoke run: small depths, one or two rounds
    depths=(8, 16),
    main_depth=16,
    main_rounds=2,
    main_block=0.02,
    depth_rounds=2,
    depth_block=0.02,
    min_steps=2,
    tree_rounds=2,
    tree_block=0.01,
    compile_rounds=1,
    compile_depth=8,
    conv_rounds=1,
    conv_block=0.0,
)


def tune_malloc() -> str:
    """Keeps glibc's malloc from returning XLA's large per-step buffers to the OS.

    By default glibc serves allocations above a (dynamic, at most 32 MiB) threshold with mmap and
    gives freed memory back to the OS, so a compiled step whose temporary buffer crosses that
    line page-faults it in afresh on every call. Which program crosses it depends on XLA's
    buffer assignment, not on the module system (the ConvNet's step needs 31-34 MiB depending
    only on the order of its parameters), so the benchmark raises both thresholds to 1 GiB for
    every system alike. Returns a description for the report.
    """
    if not sys.platform.startswith("linux"):
        return "the system's malloc"
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        ok = False
    return "glibc malloc, mmap and trim thresholds raised to 1 GiB" if ok else "the system's malloc"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rotations(items: Sequence[Any], rounds: int):
    """Yields (round, item) visiting every item per round, each round starting one further."""
    n = len(items)
    for r in range(rounds):
        for k in range(n):
            yield r, items[(r + k) % n]


# --- measurements --------------------------------------------------------------------------------


def check_same_losses(
    benches: Sequence[Any], states: dict, steps: dict, batches: dict, rtol: float, what: str
) -> None:
    """Runs two steps of every system, compares the losses with plain JAX's, keeps the states."""
    losses = {}
    for b in benches:
        state = states[b.name]
        out = []
        for _ in range(2):
            state, loss = steps[b.name](state, *batches[b.name])
            out.append(float(loss))
        states[b.name] = state
        losses[b.name] = out
    ref = losses[benches[0].name]
    for name, got in losses.items():
        if not np.allclose(got, ref, rtol=rtol, atol=0.0):
            raise SystemExit(
                f"{what}: {name} computes losses {got}, plain JAX {ref}; the systems must "
                f"compute the same thing before they are compared."
            )


def time_steps(
    step: Callable, state: Any, batch: tuple, budget: float, min_steps: int
) -> tuple[Any, list[float]]:
    """Times steps one by one (each blocked on its loss) for `budget` seconds."""
    times: list[float] = []
    clock = time.perf_counter
    end = clock() + budget
    while len(times) < min_steps or clock() < end:
        t0 = clock()
        state, loss = step(state, *batch)
        loss.block_until_ready()
        times.append(clock() - t0)
    return state, times


def time_calls(fn: Callable, arg: Any, budget: float) -> list[float]:
    times: list[float] = []
    clock = time.perf_counter
    end = clock() + budget
    while len(times) < 10 or clock() < end:
        t0 = clock()
        fn(arg)
        times.append(clock() - t0)
    return times


def step_medians(
    benches, batch, rounds: int, budget: float, min_steps: int, rtol: float, what: str
) -> tuple[dict, dict]:
    """Median seconds per training step of each system, measured round-robin."""
    states = {b.name: b.init() for b in benches}
    step_fns = {b.name: b.make_step() for b in benches}
    batches = {b.name: b.prepare(*batch) for b in benches}
    check_same_losses(benches, states, step_fns, batches, rtol, what)
    samples: dict[str, list[float]] = {b.name: [] for b in benches}
    for _, b in rotations(benches, rounds):
        gc.collect(1)  # the young garbage of the previous block is not this system's to collect
        states[b.name], times = time_steps(
            step_fns[b.name], states[b.name], batches[b.name], budget, min_steps
        )
        samples[b.name] += times
    return {name: statistics.median(t) for name, t in samples.items()}, states


def tree_medians(benches, states: dict, rounds: int, budget: float) -> tuple[dict, dict]:
    """Median seconds of flatten+unflatten and of split+merge of each system's model."""
    models = {b.name: b.model(states[b.name]) for b in benches}
    flat: dict[str, list[float]] = {b.name: [] for b in benches}
    split: dict[str, list[float]] = {b.name: [] for b in benches}
    for _, b in rotations(benches, rounds):
        flat[b.name] += time_calls(b.flatten_unflatten, models[b.name], budget)
        split[b.name] += time_calls(b.split_merge, models[b.name], budget)
    return (
        {n: statistics.median(t) for n, t in flat.items()},
        {n: statistics.median(t) for n, t in split.items()},
    )


def first_call_medians(benches, batch, rounds: int) -> dict:
    """Median seconds of a fresh step's first call (trace + compile + one run)."""
    states = {b.name: b.init() for b in benches}
    samples: dict[str, list[float]] = {b.name: [] for b in benches}
    for _, b in rotations(benches, rounds):
        step = b.make_step()
        gc.collect()  # not the garbage of earlier workloads
        t0 = time.perf_counter()
        _, loss = step(states[b.name], *b.prepare(*batch))
        loss.block_until_ready()
        samples[b.name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in samples.items()}


# --- report --------------------------------------------------------------------------------------


def versions() -> str:
    names = ["jax", "jaxlib", "optax", "dm-haiku", "equinox", "flax", "numpy"]
    parts = []
    for n in names:
        try:
            parts.append(f"{n} {metadata.version(n)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{n} (missing)")
    return f"Python {platform.python_version()}, " + ", ".join(parts)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {platform.system()}, JAX backend {jax.default_backend()}"


def cell(value: float | None, ref: float | None, fmt: str) -> str:
    if value is None:
        return "–"
    ratio = f" ({value / ref:.2f}x)" if ref else ""
    return fmt.format(value) + ratio


def render(results: dict, cfg: Config, names: list[str], command: str) -> str:
    plain = names[0]
    steps = results["steps"]
    main = steps[cfg.main_depth]
    flat, split = results["flatten"], results["split"]
    first = results["first_call"]
    conv = results.get("conv") or {}
    lines = [
        f"Measured {results['date']} with `{command}`.",
        "",
        f"Machine: {machine()}; load average {results['load']:.1f} at the start; "
        f"{results['allocator']}.",
        f"Versions: {versions()}.",
        "",
        "Medians, with the time relative to plain JAX in parentheses (lower is better; for "
        "workload 2 the ratio is of step times).",
        "",
        f"| system | 1. MLP {cfg.main_depth}x{bm.WIDTH} train step (µs) "
        f"| 2. ConvNet+BN train (steps/s) "
        f"| 3a. flatten+unflatten (µs) | 3b. split+merge (µs) "
        f"| 4. first call, depth {cfg.compile_depth} (s) |",
        "|---|---|---|---|---|---|",
    ]
    conv_plain = conv.get(plain)
    for n in names:
        conv_cell = "–"
        if n in conv:
            ratio = f" ({conv[n] / conv_plain:.2f}x)" if conv_plain else ""
            conv_cell = f"{1.0 / conv[n]:.1f}{ratio}"
        lines.append(
            f"| {n} | {cell(main[n] * 1e6, main[plain] * 1e6, '{:.0f}')} "
            f"| {conv_cell} "
            f"| {cell(flat[n] * 1e6, flat[plain] * 1e6, '{:.1f}')} "
            f"| {cell(split[n] * 1e6, split[plain] * 1e6, '{:.1f}')} "
            f"| {cell(first[n], first[plain], '{:.2f}')} |"
        )
    lines += [
        "",
        "5. Training step (µs) against MLP depth (width 32, batch 8):",
        "",
        "| system | " + " | ".join(f"depth {d}" for d in cfg.depths) + " |",
        "|---|" + "---|" * len(cfg.depths),
    ]
    for n in names:
        row = [cell(steps[d][n] * 1e6, steps[d][plain] * 1e6, "{:.0f}") for d in cfg.depths]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"1 and 5: one jitted step (forward, gradient, Adam) of an MLP of width {bm.WIDTH}, "
        f"batch {bm.BATCH}, blocked on its loss. 2: Conv-BN-ReLU x2 (16 and 32 channels), "
        f"global mean, Linear, batch {bc.BATCH} of {bc.SIZE}x{bc.SIZE}x1, one variant per "
        "library (Equinox takes channels-first images). 3: on the model of workload 1; 3b is "
        "`model.update(model.parameters())` for pax, `eqx.combine(*eqx.partition(m, "
        "eqx.is_array))` for Equinox, `nnx.merge(*nnx.split(m))` for NNX (both NNX rows time "
        "the same model), `hk.data_structures.partition` + `merge` for Haiku and two "
        "`tree_map` copies of the nested dict for plain JAX. 4: a fresh step's first call "
        "(trace, compile, one run).",
    ]
    if not conv:
        lines += ["", "Workload 2 was skipped: " + results.get("conv_skipped", "") + "."]
    return "\n".join(lines) + "\n"


def plot(results: dict, cfg: Config, names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    steps = results["steps"]
    plain = names[0]
    fig, (ax_abs, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n in names:
        us = [steps[d][n] * 1e6 for d in cfg.depths]
        rel = [steps[d][n] / steps[d][plain] for d in cfg.depths]
        style = dict(marker="o", linewidth=2.8 if n.startswith("pax") else 1.2)
        ax_abs.plot(cfg.depths, us, label=n, **style)
        ax_rel.plot(cfg.depths, rel, label=n, **style)
    ax_abs.set(xscale="log", yscale="log", xlabel="MLP depth (Linear modules)")
    ax_abs.set(ylabel="µs per training step", title="Training step time (median)")
    ax_rel.set(xscale="log", yscale="log", xlabel="MLP depth (Linear modules)")
    ax_rel.set(ylabel="time / plain JAX time", title="Overhead relative to plain JAX")
    ax_abs.yaxis.set_minor_formatter(NullFormatter())
    ax_rel.axhline(1.0, color="gray", linewidth=0.8)
    ax_rel.yaxis.set_major_locator(FixedLocator([0.8, 1, 1.25, 1.5, 2, 3, 5, 10, 20, 50]))
    ax_rel.yaxis.set_minor_locator(NullLocator())
    for ax in (ax_abs, ax_rel):
        ax.xaxis.set_major_locator(FixedLocator(list(cfg.depths)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(alpha=0.3)
    ax_rel.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_rel.legend(fontsize=8)
    fig.suptitle(
        f"MLP width {bm.WIDTH}, batch {bm.BATCH}, Adam, {jax.default_backend()} ({results['date']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    parser.add_argument("--out", default="bench_results", help="output folder")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds alone (see tune_malloc)",
    )
    args = parser.parse_args(argv)
    allocator = "the system's malloc" if args.system_malloc else tune_malloc()
    cfg = QUICK if args.quick else FULL
    flags = [
        f for f, on in (("--quick", args.quick), ("--system-malloc", args.system_malloc)) if on
    ]
    command = " ".join(["python scripts/bench_peers.py", *flags])
    start = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "allocator": allocator,
        "steps": {},
    }

    batch = bm.mlp_batch()
    names: list[str] = []
    for depth in sorted(cfg.depths, key=lambda d: d != cfg.main_depth):
        benches = bm.mlp_benches(depth)
        names = [b.name for b in benches]
        main = depth == cfg.main_depth
        log(f"[{time.perf_counter() - start:5.0f}s] workload {1 if main else 5}: MLP depth {depth}")
        medians, states = step_medians(
            benches,
            batch,
            cfg.main_rounds if main else cfg.depth_rounds,
            cfg.main_block if main else cfg.depth_block,
            cfg.min_steps,
            1e-4,
            f"MLP depth {depth}",
        )
        results["steps"][depth] = medians
        if main:
            log(f"[{time.perf_counter() - start:5.0f}s] workload 3: tree operations")
            results["flatten"], results["split"] = tree_medians(
                benches, states, cfg.tree_rounds, cfg.tree_block
            )
        del states

    log(f"[{time.perf_counter() - start:5.0f}s] workload 4: first call, depth {cfg.compile_depth}")
    results["first_call"] = first_call_medians(
        bm.mlp_benches(cfg.compile_depth), batch, cfg.compile_rounds
    )

    conv_benches, skipped = bc.convnet_benches()
    if conv_benches:
        log(f"[{time.perf_counter() - start:5.0f}s] workload 2: ConvNet + BatchNorm")
        results["conv"], _ = step_medians(
            conv_benches,
            bc.conv_batch(),
            cfg.conv_rounds,
            cfg.conv_block,
            1,
            1e-3,
            "ConvNet",
        )
    else:
        results["conv_skipped"] = skipped

    os.makedirs(args.out, exist_ok=True)
    table = render(results, cfg, names, command)
    with open(os.path.join(args.out, "peers.md"), "w") as f:
        f.write(table)
    plot(results, cfg, names, os.path.join(args.out, "overhead_vs_depth.png"))
    print(table)
    log(
        f"[{time.perf_counter() - start:5.0f}s] wrote {args.out}/peers.md and "
        f"{args.out}/overhead_vs_depth.png"
    )


if __name__ == "__main__":
    main()
