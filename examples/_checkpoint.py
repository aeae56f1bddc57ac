"""The examples' checkpoints: a `pax.CheckpointManager` directory; ``--resume`` its latest step.

``--checkpoint DIR`` (default ``checkpoints/<example>/``; '' saves nothing) holds numbered
checkpoints ``step_{step:08d}.npz`` of ``(model, optimizer)``, the last `KEEP` of them, with the
training loss as each one's metric. A run saves at its end (and every ``--checkpoint-every N``
steps); ``--resume`` restores the latest step and counts on from it, so a resumed run of K steps
ends with the checkpoint of step latest + K. One process saves in the background
(``async_save``); several processes save together, synchronously (every process calls `save`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax

import pax

KEEP = 3  # the most recent checkpoints kept


def add_flags(p: argparse.ArgumentParser, default: str) -> None:
    """Adds ``--checkpoint``, ``--checkpoint-every`` and ``--resume`` to `p`."""
    p.add_argument(
        "--checkpoint", default=default, help="directory of the checkpoints ('' to skip saving)"
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=0, help="also save every N steps (0: at the end)"
    )
    p.add_argument("--resume", action="store_true", help="start from the latest --checkpoint")


def open_manager(args: argparse.Namespace) -> tuple[pax.CheckpointManager | None, int]:
    """The manager of ``--checkpoint`` (None for '') and the step training starts after.

    Raises:
      ValueError: if ``--checkpoint-every`` is negative.
      FileNotFoundError: with ``--resume``, if ``--checkpoint`` holds no checkpoint.
      FileExistsError: without ``--resume``, if ``--checkpoint`` already holds checkpoints
        (their steps would collide with this run's).
    """
    directory = args.checkpoint
    if args.checkpoint_every < 0:
        raise ValueError(
            f"--checkpoint-every must be >= 0, got {args.checkpoint_every}. Fix: "
            f"--checkpoint-every 100 saves every 100 steps; 0 saves only at the end."
        )
    manager, latest = None, None
    if directory and os.path.isdir(directory):
        manager = pax.CheckpointManager(
            directory, max_to_keep=KEEP, async_save=jax.process_count() == 1
        )
        latest = manager.latest_step()
    if args.resume and latest is None:
        raise FileNotFoundError(
            f"--resume: no checkpoint in --checkpoint {directory!r}. Fix: train once without "
            f"--resume (it writes checkpoints there), or point --checkpoint at the directory "
            f"of a run."
        )
    if not args.resume and latest is not None:
        raise FileExistsError(
            f"--checkpoint {directory!r} already holds the checkpoints of a run (latest step "
            f"{latest}). Fix: add --resume to continue it, or give another --checkpoint "
            f"directory (or remove this one) to start afresh."
        )
    if not directory:
        return None, 0
    if manager is None:  # creates the directory
        manager = pax.CheckpointManager(
            directory, max_to_keep=KEEP, async_save=jax.process_count() == 1
        )
    return manager, latest or 0


def save(manager: pax.CheckpointManager, step: int, tree: Any, loss: Any = None) -> None:
    """Saves `tree` as checkpoint `step`, with ``loss`` (if given) as its metric."""
    manager.save(step, tree, None if loss is None else {"loss": float(loss)})
