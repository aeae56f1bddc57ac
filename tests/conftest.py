"""Shared test set-up: 8 simulated CPU devices for the data-parallel tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

import pax


@pytest.fixture(autouse=True)
def _seed() -> None:
    pax.seed_rng_key(42)


@pytest.fixture
def key() -> jax.Array:
    return jax.random.PRNGKey(0)
