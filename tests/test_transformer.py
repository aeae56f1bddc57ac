"""Transformer pieces of pax.nn: causal / grouped-query attention, attention dropout, the
jax.nn.dot_product_attention path, rotary embeddings and the KV cache, checked against numpy."""

import jax
import jax.numpy as jnp
import jmp
import numpy as np
import pytest

import pax

TOL = {"rtol": 2e-5, "atol": 2e-5}
KEY = jax.random.PRNGKey(0)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _np_rope(x, positions, base=10000.0):
    """Reference: rotate each pair (i, i + d/2) of (B, T, H, d) by positions[t] * base^(-2i/d)."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    d = x.shape[-1]
    half = d // 2
    for t, pos in enumerate(positions):
        for i in range(half):
            theta = pos * base ** (-2.0 * i / d)
            c, s = np.cos(theta), np.sin(theta)
            a, b = x[:, t, :, i], x[:, t, :, i + half]
            out[:, t, :, i] = c * a - s * b
            out[:, t, :, i + half] = s * a + c * b
    return out


def _np_attention(mha, x, mask=None, positions=None, keep=None):
    """Reference: self-attention with repeated key/value heads (repeat-kv), a (.., T, S) bool
    mask, rotary positions and a dropout keep-mask on the weights."""

    def proj(layer, v):
        return np.asarray(v, np.float64) @ np.asarray(layer.weight) + np.asarray(layer.bias)

    b, t, _ = x.shape
    h, kv, d = mha.num_heads, mha.num_kv_heads, mha.key_size
    q = proj(mha.query_proj, x).reshape(b, t, h, d)
    k = proj(mha.key_proj, x).reshape(b, t, kv, d)
    v = proj(mha.value_proj, x).reshape(b, t, kv, mha.value_size)
    if positions is not None:
        q, k = _np_rope(q, positions), _np_rope(k, positions)
    k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d)
    if mask is not None:
        logits = np.where(mask, logits, -1e30)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    if keep is not None:
        w = w * keep / (1 - mha.dropout_rate)
    attn = np.einsum("bhts,bshd->bthd", w, v).reshape(b, t, -1)
    return proj(mha.out_proj, attn)


# --- causal, grouped-query, implementations ----------------------------------------------------


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_causal_equals_an_explicit_tril_mask(implementation):
    x = _x((2, 6, 16))
    causal = pax.nn.MultiHeadAttention(16, 4, causal=True, rng_key=KEY)
    causal.implementation = implementation
    plain = pax.nn.MultiHeadAttention(16, 4, rng_key=KEY)
    tril = np.tril(np.ones((6, 6), bool))
    np.testing.assert_allclose(causal(x), plain(x, mask=tril), **TOL)
    np.testing.assert_allclose(causal(x), _np_attention(plain, x, tril), **TOL)


def test_causal_combines_with_a_padding_mask():
    x = _x((2, 5, 8))
    mha = pax.nn.MultiHeadAttention(8, 2, causal=True, rng_key=KEY)
    pad = np.array([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    want = _np_attention(mha, x, pad & np.tril(np.ones((5, 5), bool)))
    np.testing.assert_allclose(mha(x, mask=pad), want, **TOL)


def test_num_kv_heads_equal_to_num_heads_is_standard_attention():
    x = _x((2, 5, 16))
    gqa = pax.nn.MultiHeadAttention(16, 4, num_kv_heads=4, rng_key=KEY)
    mha = pax.nn.MultiHeadAttention(16, 4, rng_key=KEY)
    assert jax.tree_util.tree_structure(gqa) == jax.tree_util.tree_structure(mha)
    np.testing.assert_allclose(gqa(x), mha(x), rtol=0, atol=0)


@pytest.mark.parametrize("num_kv_heads", [1, 2])
@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_grouped_and_multi_query_attention_match_repeat_kv(num_kv_heads, implementation):
    x = _x((3, 7, 16), seed=1)
    mha = pax.nn.MultiHeadAttention(
        16, 4, num_kv_heads=num_kv_heads, causal=True, implementation=implementation
    )
    assert mha.key_proj.weight.shape == (16, num_kv_heads * 4)
    want = _np_attention(mha, x, np.tril(np.ones((7, 7), bool)))
    np.testing.assert_allclose(mha(x), want, **TOL)


@pytest.mark.parametrize("kwargs", [{}, {"causal": True}, {"num_kv_heads": 2, "rope": True}])
def test_xla_implementation_gives_the_reference_numbers(kwargs):
    x = _x((2, 9, 16), seed=2)
    ref = pax.nn.MultiHeadAttention(16, 4, rng_key=KEY, **kwargs)
    xla = pax.nn.MultiHeadAttention(16, 4, rng_key=KEY, implementation="xla", **kwargs)
    mask = np.random.default_rng(3).random((2, 1, 9, 9)) < 0.7
    mask[..., 0] = True
    np.testing.assert_allclose(xla(x), ref(x), **TOL)
    np.testing.assert_allclose(xla(x, mask=mask), ref(x, mask=mask), **TOL)
    jitted = jax.jit(lambda m, x: m(x))
    np.testing.assert_allclose(jitted(xla, x), jitted(ref, x), **TOL)


def test_no_batch_axis_and_several_batch_axes_on_the_xla_path():
    ref = pax.nn.MultiHeadAttention(8, 2, causal=True, rng_key=KEY)
    xla = pax.nn.MultiHeadAttention(8, 2, causal=True, rng_key=KEY, implementation="xla")
    for shape in [(4, 8), (2, 3, 4, 8)]:
        x = _x(shape)
        np.testing.assert_allclose(xla(x), ref(x), **TOL)


# --- dropout -------------------------------------------------------------------------------------


def test_attention_dropout_matches_numpy_and_is_the_identity_in_eval():
    x = _x((2, 5, 8))
    mha = pax.nn.MultiHeadAttention(8, 2, causal=True, dropout_rate=0.3, rng_key=KEY)
    tril = np.tril(np.ones((5, 5), bool))
    key = mha.dropout.rng_key
    _, sub = jax.random.split(key)
    keep = np.asarray(jax.random.bernoulli(sub, 0.7, (2, 2, 5, 5)))
    y, new = jax.jit(lambda m, x: (m(x), m))(mha, x)
    np.testing.assert_allclose(y, _np_attention(mha, x, tril, keep=keep), **TOL)
    assert not np.array_equal(new.dropout.rng_key, key)  # the next call draws a new mask
    ev = mha.eval()
    np.testing.assert_allclose(ev(x), _np_attention(mha, x, tril), **TOL)
    np.testing.assert_allclose(ev(x), ev(x), rtol=0, atol=0)
    assert np.array_equal(ev.dropout.rng_key, key)


def test_no_dropout_keeps_the_structure_and_keys_of_before():
    mha = pax.nn.MultiHeadAttention(8, 2, rng_key=KEY)
    assert mha.dropout is None and mha.cache is None
    assert [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(mha)] == [
        f".{n}_proj.{w}" for n in ("query", "key", "value", "out") for w in ("weight", "bias")
    ]


def test_xla_with_dropout_in_training_names_the_fix():
    mha = pax.nn.MultiHeadAttention(8, 2, dropout_rate=0.1, implementation="xla")
    with pytest.raises(ValueError, match=r"implementation='xla'.*no attention dropout.*Fix"):
        mha(_x((1, 3, 8)))
    assert mha.eval()(_x((1, 3, 8))).shape == (1, 3, 8)  # eval: no dropout, no error


# --- rotary embeddings ---------------------------------------------------------------------------


def test_rotary_embedding_matches_numpy_with_offsets_and_positions():
    x = _x((2, 6, 3, 8))
    rope = pax.nn.RotaryEmbedding(8)
    np.testing.assert_allclose(rope(x), _np_rope(x, range(6)), **TOL)
    np.testing.assert_allclose(rope(x, offset=5), _np_rope(x, range(5, 11)), **TOL)
    off = jax.jit(lambda x, o: rope(x, offset=o))(x, jnp.int32(7))
    np.testing.assert_allclose(off, _np_rope(x, range(7, 13)), **TOL)
    pos = np.array([3, 0, 9, 1, 1, 4])
    np.testing.assert_allclose(rope(x, positions=pos), _np_rope(x, pos), **TOL)
    rope2 = pax.nn.RotaryEmbedding(8, base=100.0)
    np.testing.assert_allclose(rope2(x), _np_rope(x, range(6), base=100.0), **TOL)


def test_rotary_keeps_bfloat16():
    x = jnp.asarray(_x((1, 4, 2, 8)), jnp.bfloat16)
    y = pax.nn.RotaryEmbedding(8)(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(y, np.float32), _np_rope(x.astype(np.float32), range(4)), rtol=2e-2, atol=2e-2
    )


def test_attention_with_rope_matches_numpy():
    x = _x((2, 6, 16))
    mha = pax.nn.MultiHeadAttention(16, 4, num_kv_heads=2, causal=True, rope=True)
    want = _np_attention(mha, x, np.tril(np.ones((6, 6), bool)), positions=range(6))
    np.testing.assert_allclose(mha(x), want, **TOL)


def test_rotary_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"RotaryEmbedding: dim=5 is odd.*Fix: an even size"):
        pax.nn.RotaryEmbedding(5)
    with pytest.raises(ValueError, match=r"expected an input of shape \(\.\.\., T, num_heads, 8\)"):
        pax.nn.RotaryEmbedding(8)(jnp.ones((4, 8)))
    with pytest.raises(ValueError, match=r"rotates 8 features but the heads have key_size=4"):
        pax.nn.MultiHeadAttention(8, 2, rope=pax.nn.RotaryEmbedding(8))
    # false alarms: the fixes
    assert pax.nn.RotaryEmbedding(8)(jnp.ones((4, 1, 8))).shape == (4, 1, 8)
    assert pax.nn.MultiHeadAttention(8, 2, rope=pax.nn.RotaryEmbedding(4)).rope.dim == 4


# --- construction errors -------------------------------------------------------------------------


def test_construction_errors_name_the_argument_and_the_fix():
    with pytest.raises(
        ValueError, match=r"num_kv_heads=3 does not divide num_heads=4.*Fix: num_kv_heads=2"
    ):
        pax.nn.MultiHeadAttention(16, 4, num_kv_heads=3)
    with pytest.raises(
        ValueError, match=r"implementation='flash' is not one of.*Fix: implementation='xla'"
    ):
        pax.nn.MultiHeadAttention(16, 4, implementation="flash")
    with pytest.raises(ValueError, match=r"needs value_size == key_size.*Fix: value_size=4"):
        pax.nn.MultiHeadAttention(16, 4, value_size=8, implementation="xla")
    with pytest.raises(ValueError, match=r"dropout_rate"):
        pax.nn.MultiHeadAttention(16, 4, dropout_rate=1.5)
    # false alarms
    assert pax.nn.MultiHeadAttention(16, 4, num_kv_heads=2).num_kv_heads == 2
    assert pax.nn.MultiHeadAttention(16, 4, value_size=8).value_size == 8


# --- KV cache ------------------------------------------------------------------------------------

DIM = 16


class Block(pax.Module):
    def __init__(self, *, rng_key):
        super().__init__()
        k1, k2 = jax.random.split(rng_key)
        self.norm = pax.nn.LayerNorm(DIM)
        self.attn = pax.nn.MultiHeadAttention(
            DIM, 4, num_kv_heads=2, causal=True, rope=True, rng_key=k1
        )
        self.fc = pax.nn.Linear(DIM, DIM, rng_key=k2)

    def __call__(self, x, decode=False):
        x = x + self.attn(self.norm(x), decode=decode)
        return x + jax.nn.gelu(self.fc(x))


@jax.jit
def _decode_each(model, x):
    """Runs `x` (B, T, D) one position at a time through the cache: the (B, T, D) outputs."""

    def step(model, xt):
        return model, model(xt[:, None], decode=True)[:, 0]

    _, ys = jax.lax.scan(step, model, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1)


@pytest.mark.parametrize("implementation", ["reference", "xla"])
def test_cached_decode_equals_the_full_sequence_at_every_position(implementation):
    x = _x((2, 10, 16), seed=4)
    mha = pax.nn.MultiHeadAttention(
        16, 4, num_kv_heads=2, causal=True, rope=True, implementation=implementation
    )
    full = mha(x)
    cached = _decode_each(mha.init_cache(2, 12), x)
    np.testing.assert_allclose(cached, full, **TOL)


def test_cached_decode_in_a_stack_at_every_position_and_after_a_prompt():
    stack = pax.nn.Stack(lambda key: Block(rng_key=key), 3, remat=True, rng_key=KEY)
    x = _x((2, 9, DIM), seed=5)
    full = stack(x)
    model = pax.nn.init_cache(stack, batch_size=2, max_length=9)
    assert model.stacked.attn.cache.key.shape == (3, 2, 9, 2, 4)
    np.testing.assert_allclose(_decode_each(model, x), full, **TOL)
    # a prompt of 4 positions at once, then one at a time
    step = jax.jit(lambda m, x: (m(x, decode=True), m))
    y, model = step(model, x[:, :4])
    np.testing.assert_allclose(y, full[:, :4], **TOL)
    for t in range(4, 9):
        y, model = step(model, x[:, t : t + 1])
        np.testing.assert_allclose(y, full[:, t : t + 1], **TOL)
    assert model.stacked.attn.cache.index.tolist() == [9, 9, 9]
    assert stack.stacked.attn.cache is None  # init_cache made a copy


def test_cached_decode_in_bfloat16_under_a_policy():
    policy = jmp.get_policy("params=float32,compute=bfloat16,output=float32")
    stack = pax.nn.Stack(lambda key: Block(rng_key=key), 2, rng_key=KEY).mixed_precision(policy)
    x = _x((2, 8, DIM), seed=6)
    full = stack(x)
    model = pax.nn.init_cache(stack, 2, 8)
    assert model.stacked.attn.cache.key.dtype == jnp.float32  # the weights' dtype
    cached = _decode_each(model, x)
    assert cached.dtype == full.dtype == jnp.float32
    np.testing.assert_allclose(cached, full, rtol=5e-2, atol=5e-2)
    small = pax.nn.init_cache(stack, 2, 8, dtype=jnp.bfloat16)
    assert small.stacked.attn.cache.value.dtype == jnp.bfloat16
    np.testing.assert_allclose(_decode_each(small, x), full, rtol=5e-2, atol=5e-2)


def test_cache_is_neither_read_nor_written_without_decode():
    mha = pax.nn.MultiHeadAttention(8, 2, causal=True).init_cache(1, 4)
    x = _x((1, 3, 8))
    np.testing.assert_allclose(mha(x), mha.eval()(x), **TOL)
    assert int(mha.cache.index) == 0


def test_decode_without_a_cache_names_the_fix():
    mha = pax.nn.MultiHeadAttention(8, 2, causal=True)
    with pytest.raises(
        ValueError, match=r"decode=True needs a KV cache.*Fix: model = pax.nn.init_cache"
    ):
        mha(jnp.ones((1, 1, 8)), decode=True)
    stack = pax.nn.Stack(lambda key: Block(rng_key=key), 2)
    with pytest.raises(ValueError, match=r"decode=True needs a KV cache"):
        jax.jit(lambda m, x: m(x, decode=True))(stack, jnp.ones((1, 1, DIM)))
    assert mha.init_cache(1, 2)(jnp.ones((1, 1, 8)), decode=True).shape == (1, 1, 8)


def test_full_cache_raises_eagerly_and_under_jit():
    mha = pax.nn.MultiHeadAttention(8, 2, causal=True).init_cache(1, 3)
    mha(jnp.ones((1, 3, 8)), decode=True)  # exactly full: fine
    with pytest.raises(ValueError, match=r"KV cache is full: it holds 3 of max_length=3.*Fix"):
        mha(jnp.ones((1, 1, 8)), decode=True)
    step = jax.jit(lambda m, x: (m(x, decode=True), m))
    model = pax.nn.MultiHeadAttention(8, 2, causal=True).init_cache(1, 2)
    for _ in range(2):
        _, model = step(model, jnp.ones((1, 1, 8)))  # fills it: no error
    with pytest.raises(Exception, match=r"KV cache is full: it holds 2 of max_length=2"):
        jax.block_until_ready(step(model, jnp.ones((1, 1, 8))))
    with pytest.raises(ValueError, match=r"KV cache is full"):
        mha.init_cache(1, 2)(jnp.ones((1, 3, 8)), decode=True)  # a prompt longer than the cache


def test_decode_misuse_names_the_fix():
    mha = pax.nn.MultiHeadAttention(8, 2, causal=True).init_cache(2, 4)
    with pytest.raises(ValueError, match=r"takes only the query.*Fix: mha\(x, decode=True\)"):
        mha(jnp.ones((2, 1, 8)), jnp.ones((2, 1, 8)), decode=True)
    with pytest.raises(ValueError, match=r"cache of batch size 2 got a query.*Fix"):
        mha(jnp.ones((3, 1, 8)), decode=True)
    with pytest.raises(ValueError, match=r"init_cache: Linear holds no pax.nn.MultiHeadAttention"):
        pax.nn.init_cache(pax.nn.Linear(2, 2), 1, 4)
    assert mha(jnp.ones((2, 1, 8)), decode=True).shape == (2, 1, 8)
