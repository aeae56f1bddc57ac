"""The global RNG key: reproducible, thread-safe, refused inside transformations."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax


def test_seed_makes_initialization_reproducible():
    pax.seed_rng_key(7)
    a = pax.nn.Linear(3, 4)
    pax.seed_rng_key(7)
    b = pax.nn.Linear(3, 4)
    np.testing.assert_array_equal(a.weight, b.weight)
    c = pax.nn.Linear(3, 4)
    assert not np.array_equal(a.weight, c.weight)


def test_explicit_rng_key_does_not_touch_global_key():
    pax.seed_rng_key(1)
    expected = pax.next_rng_key()
    pax.seed_rng_key(1)
    a = pax.nn.Linear(3, 4, rng_key=jax.random.PRNGKey(5))
    b = pax.nn.Linear(3, 4, rng_key=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(pax.next_rng_key(), expected)


@pytest.mark.parametrize("transform", [jax.jit, jax.grad, jax.vmap])
def test_next_rng_key_inside_a_transformation_raises(transform):
    def f(x):
        return jnp.sum(jax.random.normal(pax.next_rng_key(), ()) * x)

    x = jnp.ones((2,)) if transform is jax.vmap else jnp.ones(())
    with pytest.raises(
        RuntimeError, match=r"next_rng_key\(\) was called inside a JAX transformation"
    ):
        transform(f)(x)


def test_module_built_inside_jit_without_key_raises():
    with pytest.raises(RuntimeError, match=r"pass a key explicitly: Module\(\.\.\., rng_key=key\)"):
        jax.jit(lambda x: pax.nn.Linear(2, 2)(x))(jnp.ones((1, 2)))


def test_failed_call_inside_jit_does_not_advance_global_key():
    pax.seed_rng_key(3)
    with pytest.raises(RuntimeError):
        jax.jit(lambda: pax.next_rng_key())()
    pax.seed_rng_key(3)
    expected = pax.next_rng_key()
    pax.seed_rng_key(3)
    with pytest.raises(RuntimeError):
        jax.jit(lambda: pax.next_rng_key())()
    np.testing.assert_array_equal(pax.next_rng_key(), expected)


def test_thread_safe_keys_are_all_distinct():
    pax.seed_rng_key(0)
    keys: list = []
    lock = threading.Lock()

    def draw():
        local = [pax.next_rng_key() for _ in range(20)]
        with lock:
            keys.extend(local)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({tuple(np.asarray(k).tolist()) for k in keys}) == 80


def test_seed_must_be_int():
    with pytest.raises(TypeError, match=r"pax\.seed_rng_key expects an int seed, got 'a'"):
        pax.seed_rng_key("a")
