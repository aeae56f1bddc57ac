"""`Module.apply` (post-order map over submodules) and `Module.astype` (mixed precision)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax


def _model() -> pax.nn.Sequential:
    return pax.nn.Sequential(pax.nn.Linear(3, 4), pax.nn.BatchNorm1D(4), pax.nn.Dropout(0.5))


# --- apply -------------------------------------------------------------------------------------


def test_apply_visits_children_before_parents_and_leaves_the_original_unchanged():
    model = pax.nn.Sequential(pax.nn.Linear(2, 2), pax.nn.Sequential(pax.nn.Dropout(0.5)))
    seen = []

    def fn(m):
        seen.append(type(m).__name__)
        return m

    out = model.apply(fn)
    assert seen[-1] == "Sequential" and seen.index("Dropout") < seen.index("Sequential")
    assert seen.count("Sequential") == 2 and len(seen) == 4
    assert out is not model and out.modules[0] is not model.modules[0]
    assert out.modules[0].weight is model.modules[0].weight  # arrays shared


def test_apply_eval_on_dropout_only():
    model = _model()
    out = model.apply(lambda m: m.eval() if isinstance(m, pax.nn.Dropout) else m)
    assert [m.training for m in out.modules] == [True, True, False]
    assert [m.training for m in model.modules] == [True, True, True]


def test_apply_sees_replaced_children_and_may_replace_modules():
    model = _model()
    out = model.apply(lambda m: pax.nn.Identity() if isinstance(m, pax.nn.Dropout) else m)
    assert isinstance(out.modules[2], pax.nn.Identity)
    assert isinstance(model.modules[2], pax.nn.Dropout)
    kinds = []

    def fn(m):
        if isinstance(m, pax.nn.Sequential):
            kinds.extend(type(c).__name__ for c in m.modules)
        return m

    _model().apply(lambda m: pax.nn.Identity() if isinstance(m, pax.nn.Dropout) else m).apply(fn)
    assert kinds[-1] == "Identity"
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(out.eval()(x), model.eval()(x), rtol=1e-6)


def test_apply_result_is_a_pytree_with_the_new_treedef():
    out = _model().apply(lambda m: m.eval())
    leaves, treedef = jax.tree_util.tree_flatten(out)
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    assert [m.training for m in again.modules] == [False, False, False]


def test_apply_refuses_a_non_module_return():
    with pytest.raises(
        TypeError, match=r"returned None of type NoneType for a Linear.*Fix: return"
    ):
        _model().apply(lambda m: None)


# --- astype ------------------------------------------------------------------------------------


def test_astype_casts_floating_leaves_only():
    model = _model()
    half = model.astype(jnp.bfloat16)
    linear, bn, drop = half.modules
    assert linear.weight.dtype == jnp.bfloat16 and linear.bias.dtype == jnp.bfloat16
    assert bn.mean_ema.counter.dtype == jnp.int32
    for leaf in jax.tree_util.tree_leaves(bn):
        assert leaf.dtype in (jnp.bfloat16, jnp.int32)
    assert drop.rng_key.dtype == model.modules[2].rng_key.dtype
    np.testing.assert_array_equal(
        jax.random.key_data(drop.rng_key), jax.random.key_data(model.modules[2].rng_key)
    )
    assert model.modules[0].weight.dtype == jnp.float32  # the original is unchanged
    assert half.parameters().modules[1].mean_ema is not None  # structure kept


def test_astype_model_still_runs_and_keeps_state_dtypes():
    half = _model().astype(jnp.bfloat16)
    y = half(jnp.ones((4, 3), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    bn = half.modules[1]
    assert bn.mean_ema.counter.dtype == jnp.int32
    assert bn.mean_ema.average.dtype == jnp.bfloat16

    @jax.jit
    def step(model, x):
        y = model(x)
        return y, model

    y, half = step(half, jnp.ones((4, 3), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and half.modules[1].mean_ema.counter.dtype == jnp.int32


def test_astype_keeps_typed_keys():
    model = pax.nn.Dropout(0.5, rng_key=jax.random.key(0))
    half = model.astype("float16")
    assert half.rng_key.dtype == model.rng_key.dtype
    assert half(jnp.ones(3, jnp.float16)).dtype == jnp.float16


def test_tree_map_cast_breaks_the_keys_that_astype_keeps():
    model = _model()
    cast = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), model)
    with pytest.raises(TypeError, match="invalid PRNG key data"):  # jax's own error
        cast(jnp.ones((2, 3), jnp.bfloat16))
    typed = pax.nn.Dropout(0.5, rng_key=jax.random.key(0))
    with pytest.raises(NotImplementedError, match="astype"):  # a typed key refuses the cast
        jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), typed)


def test_astype_back_to_float32_matches_the_original():
    model = pax.nn.Linear(3, 2)
    back = model.astype(jnp.float16).astype(jnp.float32)
    assert back.weight.dtype == jnp.float32
    np.testing.assert_allclose(back.weight, model.weight, atol=1e-2)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(model)


def test_astype_refuses_a_non_floating_dtype():
    with pytest.raises(ValueError, match=r"int32 is not a floating-point dtype.*Fix: pass"):
        _model().astype(jnp.int32)


def test_astype_refuses_a_non_dtype():
    with pytest.raises(TypeError, match=r"'bf16' is not a dtype.*Fix: pass"):
        _model().astype("bf16")


def test_load_dtype_mismatch_suggests_astype_and_the_fix_works(tmp_path):
    path = tmp_path / "model.npz"
    model = _model()
    pax.save(path, model)
    with pytest.raises(
        pax.CheckpointMismatchError, match=r"like bfloat16\[3, 4\](.|\n)*model\.astype\("
    ):
        pax.load(path, model.astype(jnp.bfloat16))
    half = pax.load(path, _model()).astype(jnp.bfloat16)
    assert half.modules[0].weight.dtype == jnp.bfloat16
    assert half.modules[1].mean_ema.counter.dtype == jnp.int32
