"""pax.nn.Stack: stacked layers run with jax.lax.scan equal the same layers unrolled."""

from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax import nn

KEY = jax.random.PRNGKey(0)
WIDTH = 6


def _block(key):
    return nn.Sequential(nn.Linear(WIDTH, WIDTH, rng_key=key), jax.nn.tanh)


def _bn_block(key):
    k1, k2 = jax.random.split(key)
    return nn.Sequential(
        nn.Linear(WIDTH, WIDTH, rng_key=k1), nn.BatchNorm1D(WIDTH, rng_key=k2), jax.nn.relu
    )


def _close(a, b, tol=1e-5):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _loss(params, model, x):
    model = model.update(params)
    y = model(x)
    loss = jnp.mean(y**2)
    return loss, (loss, model)


def _grad(model, x):
    return jax.jit(jax.grad(_loss, has_aux=True))(model.parameters(), model, x)


def test_layers_get_independent_keys_and_stacked_arrays():
    stack = nn.Stack(_block, 5, rng_key=KEY)
    assert len(stack) == 5
    assert stack.stacked.modules[0].weight.shape == (5, WIDTH, WIDTH)
    w = np.asarray(stack.stacked.modules[0].weight)
    assert len({w[i].tobytes() for i in range(5)}) == 5
    keys = jax.random.split(KEY, 5)
    _close(stack[3], _block(keys[3]))


@pytest.mark.parametrize("remat", [False, True])
def test_stack_equals_unrolled_outputs_and_gradients(remat):
    stack = nn.Stack(_block, 4, remat=remat, unroll=2, rng_key=KEY)
    unrolled = nn.Sequential(*stack.unstack())
    x = jax.random.normal(jax.random.PRNGKey(1), (3, WIDTH))
    _close(stack(x), unrolled(x))
    grads, (loss, _) = _grad(stack, x)
    ugrads, (uloss, _) = _grad(unrolled, x)
    _close(loss, uloss)
    _close(grads.unstack(), [m for m in ugrads.modules])


def test_remat_gives_the_same_gradients():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, WIDTH))
    plain = nn.Stack(_bn_block, 3, rng_key=KEY)
    remat = nn.Stack(_bn_block, 3, remat=True, rng_key=KEY)
    (g1, (_, m1)), (g2, (_, m2)) = _grad(plain, x), _grad(remat, x)
    _close(g1, g2)
    _close(m1, m2)


def test_batchnorm_statistics_come_back_updated_as_unrolled():
    stack = nn.Stack(_bn_block, 3, rng_key=KEY)
    unrolled = nn.Sequential(*stack.unstack())
    x = jax.random.normal(jax.random.PRNGKey(2), (8, WIDTH))
    grads, (loss, stack2) = _grad(stack, x)
    ugrads, (uloss, unrolled2) = _grad(unrolled, x)
    _close(loss, uloss)
    _close(grads.unstack(), list(ugrads.modules))
    _close(stack2.unstack(), list(unrolled2.modules))
    assert not np.allclose(stack2[1].modules[1].moving_mean, stack[1].modules[1].moving_mean)
    y = stack(x)  # eager call updates in place too
    _close(y, unrolled(x))
    _close(stack.unstack(), list(unrolled.modules))
    eval_stack = stack.eval()
    before = eval_stack.stacked.modules[1].moving_mean
    _close(eval_stack(x), unrolled.eval()(x))
    assert eval_stack.stacked.modules[1].moving_mean is before  # nothing changed


def test_dropout_keys_advance_per_layer():
    stack = nn.Stack(lambda k: nn.Dropout(0.5, rng_key=k), 3, rng_key=KEY)
    keys = np.asarray(stack.stacked.rng_key)
    y, stack = jax.jit(lambda m, x: (m(x), m))(stack, jnp.ones((50,)))
    assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, 8.0}
    new = np.asarray(stack.stacked.rng_key)
    assert new.shape == keys.shape and (new != keys).any(axis=1).all()


def test_unchanged_state_under_jit_needs_no_return():
    stack = nn.Stack(_block, 3, rng_key=KEY)
    y = jax.jit(lambda m, x: m(x))(stack, jnp.ones((2, WIDTH)))
    _close(y, stack(jnp.ones((2, WIDTH))))


def test_indexing_unstack_from_layers_round_trip():
    stack = nn.Stack(_bn_block, 4, rng_key=KEY)
    layers = stack.unstack()
    assert all(isinstance(m, nn.Sequential) for m in layers)
    _close(stack[-1], layers[3])
    again = nn.Stack.from_layers(layers, remat=True)
    assert again.remat and len(again) == 4
    _close(again, stack)
    assert jax.tree_util.tree_structure(again.stacked) == jax.tree_util.tree_structure(
        stack.stacked
    )


def test_parameters_states_freeze_classify_like_the_layer():
    stack = nn.Stack(_bn_block, 2, rng_key=KEY)
    params = jax.tree_util.tree_leaves(stack.parameters())
    layer_params = jax.tree_util.tree_leaves(stack[0].parameters())
    assert [p.shape for p in params] == [(2, *p.shape) for p in layer_params]
    assert len(jax.tree_util.tree_leaves(stack.states())) == len(
        jax.tree_util.tree_leaves(stack[0].states())
    )
    assert jax.tree_util.tree_leaves(stack.freeze().parameters()) == []
    frozen = stack.freeze()
    _close(frozen(jnp.ones((4, WIDTH))), nn.Sequential(*stack.unstack()).freeze()(jnp.ones((4, 6))))


def test_save_load_round_trip():
    stack = nn.Stack(_bn_block, 3, rng_key=KEY)
    stack(jnp.ones((4, WIDTH)))  # move the statistics
    path = os.path.join(tempfile.mkdtemp(), "stack.npz")
    pax.save(path, stack)
    fresh = nn.Stack(_bn_block, 3, rng_key=jax.random.PRNGKey(9))
    loaded = pax.load(path, fresh)
    _close(loaded, stack)
    x = jnp.ones((2, WIDTH))
    _close(loaded.eval()(x), stack.eval()(x))


def test_stack_in_a_model_trains_with_build_update_fn():
    net = nn.Sequential(
        nn.Linear(2, WIDTH, rng_key=KEY),
        nn.Stack(_bn_block, 3, remat=True, rng_key=jax.random.PRNGKey(3)),
        nn.Linear(WIDTH, 1, rng_key=jax.random.PRNGKey(4)),
    )
    opt = pax.optim.adam(net.parameters(), 1e-2)

    def loss_fn(params, model, inputs):
        model = model.update(params)
        x, y = inputs
        loss = jnp.mean((model(x) - y) ** 2)
        return loss, (loss, model)

    update_fn = pax.utils.build_update_fn(loss_fn)
    x = jax.random.normal(jax.random.PRNGKey(5), (32, 2))
    y = jnp.sin(x[:, :1])
    first = None
    for _ in range(30):
        loss, net, opt = update_fn(net, opt, (x, y))
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first
    assert net.modules[1].stacked.modules[0].weight.shape == (3, WIDTH, WIDTH)


# --- errors ---------------------------------------------------------------------------------


def test_bad_arguments_name_the_argument_and_the_fix():
    with pytest.raises(ValueError, match=r"Stack: n must be a positive int, got 0"):
        nn.Stack(_block, 0)
    with pytest.raises(TypeError, match=r"Stack: make_layer must be a function .*got Linear. Fix:"):
        nn.Stack(nn.Linear(2, 2), 2)
    with pytest.raises(TypeError, match=r"Stack: remat must be a bool.*remat=False"):
        nn.Stack(_block, 2, remat="yes")
    with pytest.raises(ValueError, match=r"Stack: unroll must be a positive int, got 0"):
        nn.Stack(_block, 2, unroll=0)
    with pytest.raises(TypeError, match=r"Stack: layer 0 is a f32\[2\], not a pax module. Fix:"):
        nn.Stack(lambda k: jnp.ones(2), 2)


def test_layers_of_another_structure_are_refused():
    with pytest.raises(ValueError, match=r"Stack: layer 1 differs from layer 0 .*out_dim.* Fix:"):
        nn.Stack.from_layers([nn.Linear(2, 2), nn.Linear(2, 3)])
    with pytest.raises(ValueError, match=r"Stack: layer 1 differs from layer 0 .*Fix:"):
        nn.Stack.from_layers([nn.Linear(2, 2), nn.Linear(2, 2).freeze()])
    with pytest.raises(ValueError, match=r"Stack: layers 0 and 1 are the same module object"):
        layer = nn.Linear(2, 2)
        nn.Stack(lambda k: layer, 2)
    with pytest.raises(ValueError, match=r"Stack: needs at least one layer"):
        nn.Stack.from_layers([])
    with pytest.raises(TypeError, match=r"Stack.from_layers: layers must be a list of modules"):
        nn.Stack.from_layers(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"static attribute Lambda.fn .* defined outside"):
        nn.Stack(lambda k: nn.Lambda(lambda x: x), 2)


def _first_column(x):
    return x[:, 0]


def test_a_layer_that_changes_the_shape_is_refused():
    stack = nn.Stack(lambda k: nn.Linear(2, 2, rng_key=k), 2)
    with pytest.raises(ValueError, match=r"Stack: a layer mapped an input f32\[3,2\] to f32\[3\]"):
        nn.Stack(lambda k: nn.Lambda(_first_column), 2)(jnp.ones((3, 2)))
    assert stack(jnp.ones((3, 2))).shape == (3, 2)


class _Masked(pax.Module):
    def __init__(self, *, rng_key):
        super().__init__()
        self.attn = nn.MultiHeadAttention(4, 2, rng_key=rng_key)

    def __call__(self, x, mask=None):
        return x + self.attn(x, mask=mask)


def test_extra_arguments_reach_every_layer():
    stack = nn.Stack(lambda k: _Masked(rng_key=k), 2, rng_key=KEY)
    x = jax.random.normal(KEY, (1, 3, 4))
    causal = jnp.tril(jnp.ones((3, 3), bool))[None, None]
    unrolled = stack.unstack()
    expected = unrolled[1](unrolled[0](x, mask=causal), mask=causal)
    _close(stack(x, mask=causal), expected)
    assert not np.allclose(stack(x), expected)


def test_indexing_errors():
    stack = nn.Stack(_block, 3)
    with pytest.raises(IndexError, match=r"Stack: layer index 3 is out of range .* \[-3, 3\)"):
        stack[3]
    with pytest.raises(TypeError, match=r"Stack: layers are indexed by an int or a slice, got 'a'"):
        stack["a"]
    with pytest.raises(ValueError, match=r"Stack: the slice slice\(2, 1, None\) selects no layer"):
        stack[2:1]


def test_slicing_gives_a_stack_of_those_layers():
    stack = nn.Stack(lambda k: nn.Linear(3, 3, rng_key=k), 5, remat=True)
    x = jnp.ones((2, 3))
    for index in (slice(1, 4), slice(None, None, 2), slice(None, None, -1)):
        part = stack[index]
        picked = stack.unstack()[index]
        assert isinstance(part, nn.Stack) and len(part) == len(picked) and part.remat
        expected = x
        for layer in picked:
            expected = layer(expected)
        _close(part(x), expected)
    assert len(stack) == 5  # the original is unchanged


def test_stack_under_a_mixed_precision_policy():
    import jmp

    policy = jmp.Policy(jnp.float32, jnp.bfloat16, jnp.bfloat16)
    stack = nn.Stack(lambda k: nn.Linear(4, 4, rng_key=k), 3)
    mixed = stack.mixed_precision(policy)
    x = jnp.ones((2, 4))
    out = mixed(x)
    assert out.dtype == jnp.bfloat16 and mixed.stacked.weight.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out, np.float32), stack(x), rtol=5e-2, atol=5e-2)
    grads = jax.grad(lambda p, m: m.update(p)(x).astype(jnp.float32).sum())(
        mixed.parameters(), mixed
    )
    assert grads.stacked.weight.dtype == jnp.float32
    # a policy on each layer must keep the carried dtype: a bfloat16 output is refused
    per_layer = nn.Stack(lambda k: nn.Linear(4, 4, rng_key=k).mixed_precision(policy), 2)
    with pytest.raises(ValueError, match=r"a layer mapped an input f32\[2,4\] to bf16\[2,4\]"):
        per_layer(x)


class _Counting(pax.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0  # static: changing it changes the treedef

    def __call__(self, x):
        self.calls = self.calls + 1
        return x


def test_a_layer_that_changes_its_structure_is_refused():
    stack = nn.Stack(lambda k: _Counting(), 2)
    with pytest.raises(ValueError, match=r"Stack: a layer changed its structure .*calls.* Fix:"):
        stack(jnp.ones(2))
