"""`pax.check` / `pax.find_shared`: the same module or array reachable twice in one tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax._src.core import sharing as guards
from pax._src.core.sharing import describe_shared


@pytest.fixture(autouse=True, params=["one-pass", "recursive"])
def _implementation(request, monkeypatch):
    """Every test runs with both walks (the recursive one serves JAX without is_leaf paths)."""
    if request.param == "one-pass" and not guards._PATH_IS_LEAF:
        pytest.skip("this JAX has no is_leaf_takes_path")
    monkeypatch.setattr(guards, "_PATH_IS_LEAF", request.param == "one-pass")


class Tied(pax.Module):
    """Two attributes holding the same submodule: the mistake the guard catches."""

    def __init__(self):
        super().__init__()
        self.encoder = pax.nn.Linear(2, 2)
        self.decoder = self.encoder


class TwoWeights(pax.Module):
    def __init__(self, w):
        super().__init__()
        self.register_parameter("a", w)
        self.register_state_subtree("cache", {"w": w})


def test_shared_module_is_reported_with_both_paths_and_the_fix():
    model = Tied()
    assert pax.find_shared(model) == [(".encoder", ".decoder")]
    with pytest.raises(
        pax.SharedObjectError,
        match=r"pax\.check: 1 object is reachable twice in one Tied:\n"
        r"  Tied\.decoder is the same Linear module as Tied\.encoder\n",
    ) as info:
        pax.check(model)
    message = str(info.value)
    assert "jax.jit" in message and "two independent copies" in message
    assert "self.block(self.block(x))" in message
    assert "x @ self.embed.weight.T" in message


def test_the_guard_is_needed_jax_splits_a_shared_module():
    model = Tied()
    assert model.decoder is model.encoder
    out = jax.jit(lambda m: m)(model)
    assert out.decoder is not out.encoder  # what the message warns about
    assert pax.find_shared(out) == []


def test_shared_module_inside_containers():
    fc = pax.nn.Linear(2, 2)
    net = pax.nn.Sequential(fc, pax.nn.Linear(2, 2), fc, fc)
    # the shared module's own arrays are not reported again
    assert pax.find_shared(net) == [(".modules[0]", ".modules[2]"), (".modules[0]", ".modules[3]")]
    with pytest.raises(pax.SharedObjectError, match="2 objects are reachable twice"):
        pax.check(net)


def test_shared_array_is_reported():
    w = jnp.ones((2, 3))
    model = TwoWeights(w)
    assert pax.find_shared(model) == [(".a", ".cache['w']")]
    with pytest.raises(
        pax.SharedObjectError,
        match=r"TwoWeights\.cache\['w'\] is the same f32\[2,3\] array as TwoWeights\.a",
    ):
        pax.check(model)
    # registration converts numpy inputs as jnp.asarray would: each place gets its own buffer
    numpy_model = TwoWeights(np.zeros(2, np.float32))
    assert pax.find_shared(numpy_model) == []


def test_arrays_shared_between_top_level_items_are_values_unless_donated():
    online = pax.nn.Linear(2, 2)
    target = jax.tree_util.tree_map(lambda x: x, online)  # shares the immutable arrays
    pax.check((online, target))  # accepted: values, not a tie
    pax.check({"online": online, "target": target})
    with pytest.raises(
        pax.SharedObjectError,
        match=r"tree\[1\]\.weight is the same f32\[2,2\] array as tree\[0\]\.weight\n"
        r"(.|\n)*donated twice",
    ):
        pax.check((online, target), donate=True)
    with pytest.raises(
        pax.SharedObjectError,
        match=r"tree\[0\]\.cache\['w'\] is the same f32\[2\] array as tree\[0\]\.a",
    ):
        pax.check((TwoWeights(jnp.ones(2)), online))  # inside one model: a tie attempt


def test_sharing_across_the_items_of_a_tuple():
    model = pax.nn.Linear(2, 2)
    pairs = pax.find_shared((model, {"ema": model}))
    assert pairs == [("[0]", "[1]['ema']")]
    message = describe_shared((model, {"ema": model}), who="pax.utils.build_update_fn")
    assert message.startswith(
        "pax.utils.build_update_fn: 1 object is reachable twice in one tree:\n"
        "  tree[1]['ema'] is the same Linear module as tree[0]"
    )
    copy = jax.tree_util.tree_map(lambda x: x, model)  # a new module sharing the arrays
    assert pax.find_shared((model, copy)) == [
        ("[0].weight", "[1].weight"),
        ("[0].bias", "[1].bias"),
    ]


def test_distinct_objects_are_not_reported():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
    pax.check(net)
    pax.check(net.parameters())  # None leaves
    pax.check((net, jax.tree_util.tree_map(jnp.zeros_like, net)))
    scalar = np.float32(1.0)  # scalars and Python numbers are values, not shared buffers
    pax.check({"a": scalar, "b": scalar, "c": 1, "d": 1})
    assert describe_shared(net) is None
    assert pax.find_shared(jnp.ones(2)) == []


def test_a_module_reachable_from_itself_does_not_recurse_forever():
    class Node(pax.Module):
        pass

    a, b = Node(), Node()
    a.child = b
    with pytest.raises(ValueError, match=r"Node\.parent: this value contains the Node module"):
        b.parent = a  # a back-reference: a cycle JAX cannot flatten, refused at assignment
    b.others = [Node()]
    b.others.append(a)  # in place, past the assignment check: the guard must still answer
    assert pax.find_shared(a) == [("", ".child.others[1]")]


class TargetNetwork(pax.Module):
    """DQN / BYOL / EMA-teacher layout: an online network and a copy of it."""

    def __init__(self):
        super().__init__()
        self.online = pax.nn.Linear(3, 2)
        self.target = self.online.copy()

    def __call__(self, x):
        return self.online(x) + jax.lax.stop_gradient(self.target(x))


def test_a_target_network_made_with_copy_is_not_tying():
    model = TargetNetwork()
    assert pax.find_shared(model) == []
    pax.check(model)
    np.testing.assert_array_equal(model.target.weight, model.online.weight)
    opt = pax.optim.sgd(model.parameters(), 0.1)

    def loss_fn(params, model, x):
        model = model.update(params)
        loss = jnp.mean(model(x) ** 2)
        return loss, (loss, model)

    x = jnp.ones((2, 3))
    for donate in (False, True):
        _, model, opt = pax.utils.build_update_fn(loss_fn, donate=donate)(model, opt, x)
    assert not np.allclose(model.target.weight, model.online.weight)  # only online trained


def test_copy_survives_donating_the_original():
    net = pax.nn.Linear(3, 2)
    target = net.copy()
    opt = pax.optim.sgd(net.parameters(), 0.1)

    def loss_fn(params, model, x):
        model = model.update(params)
        loss = jnp.mean(model(x) ** 2)
        return loss, (loss, model)

    pax.utils.build_update_fn(loss_fn, donate=True)(net, opt, jnp.ones((2, 3)))
    assert target(jnp.ones((1, 3))).shape == (1, 2)  # its buffers were not donated


def test_tied_arrays_and_modules_are_still_reported_next_to_a_copy():
    model = TargetNetwork()
    model.tied = model.online  # a module reachable twice
    with pytest.raises(pax.SharedObjectError, match=r"TargetNetwork\.tied is the same Linear"):
        pax.check(model)
    with pytest.raises(pax.SharedObjectError, match=r"\.cache\['w'\] is the same f32\[2\] array"):
        pax.check(TwoWeights(jnp.ones(2)).copy())  # a copy keeps a tie inside the model
