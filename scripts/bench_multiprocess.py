"""char_rnn's training step: 1 process x 8 devices against 2 processes x 4 devices.

Both runs use simulated CPU devices (``--xla_force_host_platform_device_count``) and the same
global batch, started with `pax.launch.launch` (``-n 1`` is an ordinary single-process run).
The 2-process run adds the cost of the cross-process collectives (gloo over TCP on 127.0.0.1)
to the gradient reduction. Each run writes its per-step times (char_rnn ``--metrics``: each
step is waited for); the first `--warmup` steps (compilation) are left out. The runs of the two
layouts alternate, `--repeats` times; the figure per layout is the median step time over all
its timed steps, and the ratio is 2x4 over 1x8.

Usage:
  python scripts/bench_multiprocess.py [--repeats 3] [--steps 40] [--warmup 5]
      [--batch-size 32] [--seq-len 32] [--hidden-dim 128] [--sharding data]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import jax

from pax.launch import launch

CHAR_RNN = Path(__file__).resolve().parent.parent / "examples" / "char_rnn.py"
LAYOUTS = {"1 process x 8 devices": (1, 8), "2 processes x 4 devices": (2, 4)}


def run_once(args: argparse.Namespace, processes: int, devices: int, out: Path) -> list[float]:
    """One char_rnn run; returns its per-step seconds after the warm-up steps."""
    metrics = out / f"metrics_{processes}x{devices}.json"
    argv = [str(CHAR_RNN), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    argv += ["--seq-len", str(args.seq_len), "--hidden-dim", str(args.hidden_dim)]
    argv += ["--sharding", args.sharding, "--sample-every", "0", "--sample-length", "1"]
    argv += ["--no-progress", "--checkpoint", "", "--metrics", str(metrics)]
    code = launch(argv, processes, timeout=args.timeout, devices_per_process=devices)
    if code:
        sys.exit(f"bench_multiprocess: the {processes} x {devices} run failed (exit code {code})")
    seconds = json.loads(metrics.read_text())["step_seconds"]
    return seconds[args.warmup :]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per layout, alternating")
    p.add_argument("--steps", type=int, default=40, help="training steps per run")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out (compilation)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--seq-len", type=int, default=32, help="bytes per sequence")
    p.add_argument("--hidden-dim", type=int, default=128, help="LSTM state size")
    p.add_argument("--sharding", default="data", choices=("data", "fsdp", "tensor"))
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    args = p.parse_args()
    if args.steps <= args.warmup:
        p.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")

    times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, (processes, devices) in LAYOUTS.items():
                steps = run_once(args, processes, devices, Path(tmp))
                times[name] += steps
                print(
                    f"run {repeat + 1}/{args.repeats}, {name}: median step "
                    f"{statistics.median(steps) * 1e3:.1f} ms",
                    file=sys.stderr,
                )
    print(
        f"char_rnn step, --sharding {args.sharding}, global batch {args.batch_size} x "
        f"{args.seq_len}, hidden {args.hidden_dim}; jax {jax.__version__}, CPU (simulated "
        f"devices), median of {args.repeats} x {args.steps - args.warmup} steps"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"  {name:<24} {median * 1e3:8.1f} ms")
    one, two = medians.values()
    print(f"  ratio 2x4 / 1x8: {two / one:.2f}")


if __name__ == "__main__":
    main()
