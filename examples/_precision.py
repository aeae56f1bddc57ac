"""The examples' ``--precision`` flag: a `jmp` policy for the model, loss scaling for float16.

float32 changes nothing. bfloat16 and float16 keep float32 parameters (and optimizer state)
and compute in the half type, with float32 outputs so the loss is computed in float32; the
normalization layers compute their statistics in float32 whatever the policy. float16 also
wraps the optimizer in a dynamic loss scale (`pax.optim.with_loss_scale`), since its small
range underflows gradients.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax.numpy as jnp
import jmp

import pax

PRECISIONS = ("float32", "bfloat16", "float16")


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="compute dtype (parameters stay float32; float16 adds loss scaling)",
    )


def policy(precision: str) -> jmp.Policy:
    """float32 parameters and outputs, `precision` compute."""
    return jmp.Policy(
        param_dtype=jnp.float32, compute_dtype=jnp.dtype(precision), output_dtype=jnp.float32
    )


def apply(model: Any, optimizer: Any, precision: str, where: str | None = None) -> tuple[Any, Any]:
    """The model under `precision`'s policy, and the optimizer (loss-scaled for float16).

    `where` (a key-path regex) gives the policy to those submodules only (their ``__call__`` is
    what a policy wraps); by default the whole model gets it.
    """
    if precision == "float32":
        return model, optimizer
    if where is None:
        model = model.mixed_precision(policy(precision))
    else:
        model = pax.mixed_precision.apply_policy(model, {where: policy(precision)})
    if precision == "float16":
        scale = jmp.DynamicLossScale(jnp.float32(2**15))
        optimizer = pax.optim.with_loss_scale(optimizer, scale)
    return model, optimizer
