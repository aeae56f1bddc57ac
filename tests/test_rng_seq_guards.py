"""pax.utils.RngSeq: a key shared by every example of a jax.vmap warns; constructor checks."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

SHARED = r"RngSeq.next_rng_key: called under jax.vmap with an unbatched rng_key.*Fix: RngSeq\("


def _noise(seq, x):
    return x + jax.random.normal(seq.next_rng_key()), seq  # the advanced state comes back


SHARED_AXES = {"in_axes": (None, 0), "out_axes": (0, None)}


def _no_warning(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args)


# --- the shared key under vmap ---------------------------------------------------------------


def test_unbatched_key_under_vmap_warns():
    seq = pax.utils.RngSeq(seed=0)
    with pytest.warns(UserWarning, match=SHARED):
        y, seq = jax.vmap(_noise, **SHARED_AXES)(seq, jnp.zeros(3))
    assert np.unique(np.asarray(y)).size == 1  # what the warning is about: one key for all


def test_unbatched_key_under_jit_of_vmap_warns():
    seq = pax.utils.RngSeq(seed=0)
    with pytest.warns(UserWarning, match=SHARED):
        jax.jit(jax.vmap(_noise, **SHARED_AXES))(seq, jnp.zeros(3))


def test_unbatched_key_under_vmap_of_grad_warns():
    seq = pax.utils.RngSeq(seed=0)
    with pytest.warns(UserWarning, match=SHARED):
        grad = jax.grad(_noise, argnums=1, has_aux=True)
        jax.vmap(grad, **SHARED_AXES)(seq, jnp.zeros(3))


def test_batched_key_under_vmap_does_not_warn():
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    seqs = jax.vmap(lambda k: pax.utils.RngSeq(rng_key=k))(keys)
    y, seqs = _no_warning(jax.vmap(_noise), seqs, jnp.zeros(3))
    assert np.unique(np.asarray(y)).size == 3
    _no_warning(jax.jit(jax.vmap(_noise)), seqs, jnp.zeros(3))
    _no_warning(jax.vmap(jax.jit(_noise)), seqs, jnp.zeros(3))  # jitted body: a tracer, no guess


def test_no_vmap_does_not_warn():
    seq = pax.utils.RngSeq(seed=0)
    _no_warning(_noise, seq, jnp.zeros(()))
    _no_warning(jax.jit(_noise), seq, jnp.zeros(()))


def test_eval_mode_under_vmap_does_not_warn():
    # eval mode returns the same keys on every call by design
    seq = pax.utils.RngSeq(seed=0).eval()
    _no_warning(jax.vmap(_noise, **SHARED_AXES), seq, jnp.zeros(3))


def test_axis_name_gives_each_example_its_own_key_without_warning():
    seq = pax.utils.RngSeq(seed=0, axis_name="batch")
    f = jax.vmap(_noise, **SHARED_AXES, axis_name="batch")
    y, seq = _no_warning(f, seq, jnp.zeros(3))
    assert np.unique(np.asarray(y)).size == 3
    # the same values as folding the index in by hand
    key = jax.random.split(jax.random.PRNGKey(0), 2)[1]
    expected = [jax.random.normal(jax.random.fold_in(key, i)) for i in range(3)]
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_axis_name_not_bound_is_an_error():
    seq = pax.utils.RngSeq(seed=0, axis_name="batch")
    with pytest.raises(ValueError, match=r"RngSeq: axis_name 'batch' is not bound here.*Fix"):
        seq.next_rng_key()


# --- the constructor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, shown",
    [
        ("k", "str"),
        (-1, "int"),
        (jnp.zeros((2,), jnp.float32), r"f32\[2\]"),
        (jnp.zeros((3,), jnp.uint32), r"u32\[3\]"),
        (jax.random.split(jax.random.PRNGKey(0), 4), r"u32\[4,2\]"),
    ],
)
def test_rng_key_must_be_one_key(bad, shown):
    with pytest.raises(
        TypeError,
        match=rf"RngSeq: rng_key must be one JAX random key .*got {shown}\. Fix: "
        r"RngSeq\(rng_key=jax.random.PRNGKey\(0\)\)",
    ):
        pax.utils.RngSeq(rng_key=bad)


def test_valid_keys_and_seeds_are_accepted():
    pax.utils.RngSeq(rng_key=jax.random.PRNGKey(1))
    pax.utils.RngSeq(rng_key=jax.random.key(1))
    a = pax.utils.RngSeq(seed=np.int64(3)).next_rng_key()
    np.testing.assert_array_equal(a, pax.utils.RngSeq(seed=3).next_rng_key())


@pytest.mark.parametrize("axis_name", [1, "", ("batch", 2), ["batch", None]])
def test_axis_name_must_be_names(axis_name):
    with pytest.raises(TypeError, match=r"RngSeq: axis_name must be None, an axis name"):
        pax.utils.RngSeq(seed=0, axis_name=axis_name)
