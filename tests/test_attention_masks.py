"""pax.nn.MultiHeadAttention masks: boolean only, and exact shape rules (checked against numpy)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

TOL = {"rtol": 2e-5, "atol": 2e-5}


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _np_attention(mha, x, mask):
    """Reference: attention of self-attention `x` (B, T, D) with a full (B, H, T, S) bool mask."""

    def proj(layer, v):
        return v @ np.asarray(layer.weight) + np.asarray(layer.bias)

    b, t, _ = x.shape
    h, d = mha.num_heads, mha.key_size
    q = proj(mha.query_proj, x).reshape(b, t, h, d)
    k = proj(mha.key_proj, x).reshape(b, t, h, d)
    v = proj(mha.value_proj, x).reshape(b, t, h, mha.value_size)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d)
    logits = np.where(mask, logits, -1e30)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attn = np.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, -1)
    return proj(mha.out_proj, attn)


def _random_mask(shape, seed):
    mask = np.random.default_rng(seed).random(shape) < 0.6
    mask[..., 0] = True  # every query sees at least one key
    return mask


# --- 1. non-boolean masks --------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask, dtype",
    [
        (np.where(np.tril(np.ones((4, 4))) > 0, 0.0, -1e9).astype(np.float32), "float32"),
        (jnp.where(jnp.tril(jnp.ones((4, 4))) > 0, 0.0, -jnp.inf), "float32"),
        (np.tril(np.ones((4, 4))), "float64"),
        (np.tril(np.ones((4, 4), np.int32)), "int32"),
    ],
)
def test_non_boolean_mask_is_refused_with_the_fix(mask, dtype):
    mha = pax.nn.MultiHeadAttention(8, 2)
    with pytest.raises(
        TypeError,
        match=rf"MultiHeadAttention: mask must be a boolean array.*dtype {dtype}.*"
        r"Fix: mask=additive_mask == 0 for an additive mask, mask=mask.astype\(bool\)",
    ):
        mha(jnp.asarray(_x((2, 4, 8))), mask=mask)


def test_non_boolean_mask_is_refused_under_jit():
    mha = pax.nn.MultiHeadAttention(8, 2)
    additive = jnp.where(jnp.tril(jnp.ones((4, 4))) > 0, 0.0, -1e9)
    with pytest.raises(TypeError, match=r"mask must be a boolean array.*dtype float32"):
        jax.jit(lambda m, x, mask: m(x, mask=mask))(mha, jnp.asarray(_x((2, 4, 8))), additive)


def test_non_array_mask_is_refused():
    with pytest.raises(TypeError, match=r"mask must be a boolean array.*got a str, not an array"):
        pax.nn.MultiHeadAttention(8, 2)(jnp.ones((2, 4, 8)), mask="causal")


def test_converted_additive_mask_attends_where_it_is_zero():
    # the false-alarm test: the documented fix gives the additive mask's meaning
    mha = pax.nn.MultiHeadAttention(8, 2)
    x = _x((2, 4, 8))
    additive = np.where(np.tril(np.ones((4, 4))) > 0, 0.0, -1e9).astype(np.float32)
    out = mha(jnp.asarray(x), mask=jnp.asarray(additive) == 0)
    causal = np.broadcast_to(np.tril(np.ones((4, 4), bool)), (2, 2, 4, 4))
    np.testing.assert_allclose(out, _np_attention(mha, x, causal), **TOL)


# --- 2. shapes ---------------------------------------------------------------------------------


def test_per_example_mask_with_batch_equal_to_heads_is_applied_per_example():
    # B == num_heads == 2: a (B, T, S) mask must not be read as (num_heads, T, S)
    mha = pax.nn.MultiHeadAttention(8, 2)
    x, mask = _x((2, 4, 8)), _random_mask((2, 4, 4), 1)
    mask[0] = np.eye(4, dtype=bool)  # example 0: only itself; example 1: random
    out = mha(jnp.asarray(x), mask=jnp.asarray(mask))
    expected = _np_attention(mha, x, np.broadcast_to(mask[:, None], (2, 2, 4, 4)))
    np.testing.assert_allclose(out, expected, **TOL)
    per_head = _np_attention(mha, x, np.broadcast_to(mask[None], (2, 2, 4, 4)))
    assert not np.allclose(out, per_head, **TOL)


@pytest.mark.parametrize(
    "shape, full",
    [
        ((4, 4), lambda m: np.broadcast_to(m, (2, 2, 4, 4))),  # (T, S) shared
        ((2, 4, 4), lambda m: np.broadcast_to(m[:, None], (2, 2, 4, 4))),  # (B, T, S)
        ((2, 2, 4, 4), lambda m: m),  # (B, H, T, S)
        ((1, 2, 4, 4), lambda m: np.broadcast_to(m, (2, 2, 4, 4))),  # (1, H, T, S)
        ((2, 1, 1, 4), lambda m: np.broadcast_to(m, (2, 2, 4, 4))),  # key padding
    ],
)
def test_accepted_mask_shapes_match_numpy(shape, full):
    mha = pax.nn.MultiHeadAttention(8, 2)
    x, mask = _x((2, 4, 8)), _random_mask(shape, 2)
    out = jax.jit(lambda m, x, mask: m(x, mask=mask))(mha, jnp.asarray(x), jnp.asarray(mask))
    np.testing.assert_allclose(out, _np_attention(mha, x, full(mask)), **TOL)


def test_per_example_mask_under_vmap_is_a_t_s_mask():
    mha = pax.nn.MultiHeadAttention(8, 2)
    x, mask = _x((2, 4, 8)), _random_mask((2, 4, 4), 3)
    out = jax.vmap(lambda x, mask: mha(x, mask=mask))(jnp.asarray(x), jnp.asarray(mask))
    expected = _np_attention(mha, x, np.broadcast_to(mask[:, None], (2, 2, 4, 4)))
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize(
    "shape, match",
    [
        (
            (1, 2, 2, 4, 4),
            r"mask of shape \(1, 2, 2, 4, 4\) does not fit the logits "
            r"\(B, num_heads, T, S\) = \(2, 2, 4, 4\).*Fix: a mask of at most 4 axes",
        ),
        ((4,), r"mask of shape \(4,\) does not fit.*Fix: mask\[None, :\] for one \(S,\) key"),
        (
            (2, 4),
            r"mask of shape \(2, 4\), read as \(1, 1, 2, 4\), has size 2 on the "
            r"T \(query length\) axis where the logits have 4.*\(B, T, S\) = \(2, 4, 4\) per "
            r"example.*For a \(B, S\) key-padding mask: mask\[:, None, None, :\]",
        ),
        (
            (3, 4, 4),
            r"mask of shape \(3, 4, 4\), read as \(3, 1, 4, 4\), has size 3 on the "
            r"batch axis where the logits have 2",
        ),
        (
            (2, 3, 4, 4),
            r"mask of shape \(2, 3, 4, 4\) has size 3 on the num_heads axis where the logits have 2",
        ),
    ],
)
def test_mask_shape_errors_name_the_accepted_forms(shape, match):
    mha = pax.nn.MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="MultiHeadAttention: " + match):
        mha(jnp.ones((2, 4, 8)), mask=jnp.ones(shape, bool))


def test_partial_batch_mask_with_two_batch_axes_names_the_axes_to_add():
    mha = pax.nn.MultiHeadAttention(8, 2)
    with pytest.raises(
        ValueError,
        match=r"does not fit the logits \(B0, B1, num_heads, T, S\) = \(3, 2, 2, 4, 4\).*"
        r"\(B0, B1, T, S\) = \(3, 2, 4, 4\) per example.*Fix: mask\[None\] to share",
    ):
        mha(jnp.ones((3, 2, 4, 8)), mask=jnp.ones((2, 4, 4), bool))


def test_unbatched_query_takes_t_s_and_per_head_masks():
    mha = pax.nn.MultiHeadAttention(8, 2)
    x, mask = _x((4, 8)), _random_mask((2, 4, 4), 4)
    out = mha(jnp.asarray(x), mask=jnp.asarray(mask))  # (H, T, S)
    np.testing.assert_allclose(out, _np_attention(mha, x[None], mask[None])[0], **TOL)
    with pytest.raises(ValueError, match=r"logits \(num_heads, T, S\) = \(2, 4, 4\)"):
        mha(jnp.asarray(x), mask=jnp.ones((1, 2, 4, 4), bool))


# --- the sweep: constructor and call arguments ---------------------------------------------


@pytest.mark.parametrize("name", ["value_size", "out_dim", "key_in_dim", "value_in_dim"])
@pytest.mark.parametrize("value", [0, jnp.ones((2,))])
def test_zero_or_array_sizes_are_refused_not_replaced_by_the_default(name, value):
    with pytest.raises(ValueError, match=rf"MultiHeadAttention: {name} must be a positive int"):
        pax.nn.MultiHeadAttention(8, 2, **{name: value})


def test_explicit_sizes_are_kept():
    mha = pax.nn.MultiHeadAttention(8, 2, value_size=3, out_dim=5, key_in_dim=6, value_in_dim=7)
    assert (mha.value_size, mha.out_dim) == (3, 5)
    assert (mha.key_proj.in_dim, mha.value_proj.in_dim) == (6, 7)


@pytest.mark.parametrize(
    "arg, bad", [("query", None), ("query", "x"), ("key", "x"), ("value", "x"), ("key", object())]
)
def test_non_array_inputs_are_refused(arg, bad):
    mha = pax.nn.MultiHeadAttention(8, 2)
    kwargs = {"query": jnp.ones((2, 4, 8)), arg: bad}
    with pytest.raises(TypeError, match=rf"MultiHeadAttention: {arg} must be an array"):
        mha(**kwargs)
