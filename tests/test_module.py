"""The core `pax.Module`: registry, pytree flatten, functional views, transformations, copies
and pickling."""

import copy
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax import nn
from pax._src.core import registry


class Counter(pax.Module):
    """The seed README's example."""

    def __init__(self, start_value: int = 0):
        super().__init__()
        self.register_state("counter", jnp.array(start_value))
        self.register_parameter("bias", jnp.array(0.0))

    def __call__(self, x):
        self.counter = self.counter + 1
        return self.counter * x + self.bias


def counter_loss(params, model, x):
    model = model.update(params)
    y = model(x)
    loss = jnp.mean(jnp.square(x - y))
    return loss, (loss, model)


@pytest.mark.parametrize("jit", [False, True])
def test_seed_counter_example(jit):
    grad_fn = jax.grad(counter_loss, has_aux=True)
    if jit:
        grad_fn = jax.jit(grad_fn)
    net = Counter(3)
    grads, (loss, net2) = grad_fn(net.parameters(), net, jnp.array(10.0))
    assert grads.counter is None
    assert grads.bias == 60.0
    assert loss == 900.0
    assert net2.counter == 4
    assert net.counter == 3  # the input model is untouched: update() returned a copy


class SGD(pax.Optimizer):
    """The seed README's optimizer, which does not call super().__init__()."""

    def __init__(self, params, learning_rate: float = 1e-2, momentum: float = 0.9):
        self.momentum = momentum
        self.learning_rate = learning_rate
        self.register_state_subtree("velocity", jax.tree_util.tree_map(jnp.zeros_like, params))

    def step(self, grads, model):
        self.velocity = jax.tree_util.tree_map(
            lambda v, g: v * self.momentum + g * self.learning_rate, self.velocity, grads
        )
        params = model.parameters()
        new_params = jax.tree_util.tree_map(lambda p, v: p - v, params, self.velocity)
        return model.update(new_params)


def test_seed_sgd_state_subtree_without_super_init():
    net = Counter(3)
    opt = SGD(net.parameters())
    # A module held in a state subtree contributes state only.
    assert jax.tree_util.tree_leaves(opt.parameters()) == []
    assert len(jax.tree_util.tree_leaves(opt.states())) == 1

    @jax.jit
    def train_step(net, opt, x):
        grads, (loss, net) = jax.grad(counter_loss, has_aux=True)(net.parameters(), net, x)
        net = opt.step(grads, net)
        return net, opt, loss

    net, opt, _ = train_step(net, opt, jnp.array(10.0))
    np.testing.assert_allclose(opt.velocity.bias, 0.6)
    np.testing.assert_allclose(net.bias, -0.6)
    assert opt.velocity.counter is None
    assert net.counter == 4


def test_seed_fine_tuning_example():
    net = pax.nn.Sequential(
        pax.nn.Linear(28 * 28, 64),
        jax.nn.relu,
        pax.nn.Linear(64, 10),
    )
    net.modules[2] = pax.nn.Linear(64, 2)
    net.modules[0] = net.modules[0].freeze()
    leaves = jax.tree_util.tree_leaves_with_path(net.parameters())
    assert [jax.tree_util.keystr(p) for p, _ in leaves] == [
        ".modules[2].weight",
        ".modules[2].bias",
    ]
    assert net(jnp.ones((1, 784))).shape == (1, 2)


def test_key_paths_and_deterministic_order():
    net = pax.nn.MLP([3, 4, 5])
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(net)]
    assert paths == [".layers[0].weight", ".layers[0].bias", ".layers[1].weight", ".layers[1].bias"]
    assert jax.tree_util.tree_structure(net) == jax.tree_util.tree_structure(net.copy())


class Mixed(pax.Module):
    def __init__(self):
        super().__init__()
        self.register_parameter("w", jnp.ones((2,)))
        self.register_state("s", jnp.zeros((3,), jnp.int32))
        self.register_parameter_subtree("ptree", {"a": jnp.ones(1), "b": [jnp.ones(2)]})
        self.register_state_subtree("stree", (jnp.zeros(1),))
        self.sub = pax.nn.Linear(2, 2)
        self.blocks = {"x": pax.nn.Linear(1, 1), "y": [pax.nn.Identity()]}
        self.name = "mixed"
        self.sizes = (1, 2)


def test_children_and_static_classification():
    m = Mixed()
    children, treedef = jax.tree_util.tree_flatten(m)
    assert len(children) == 1 + 1 + 2 + 1 + 2 + 2  # w s ptree(a,b0) stree sub(w,b) blocks.x(w,b)
    assert registry.layout_of(m).static == ("training", "name", "sizes")
    assert m.registry["blocks"] is pax.Kind.MODULE_SUBTREE
    assert m.registry["sub"] is pax.Kind.MODULE
    assert list(m.registry) == ["w", "s", "ptree", "stree", "sub", "blocks"]
    rebuilt = jax.tree_util.tree_unflatten(treedef, children)
    assert type(rebuilt) is Mixed and rebuilt.name == "mixed"
    assert jax.tree_util.tree_structure(rebuilt) == treedef


def test_parameters_and_states_partition_leaves():
    m = Mixed()
    p_leaves = jax.tree_util.tree_leaves(m.parameters())
    s_leaves = jax.tree_util.tree_leaves(m.states())
    assert len(p_leaves) + len(s_leaves) == len(jax.tree_util.tree_leaves(m))
    assert m.parameters().s is None and m.states().w is None
    assert m.states().ptree == {"a": None, "b": [None]}
    # update restores the full module from either half.
    restored = m.parameters().update(m.states())
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(m)
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(m)):
        assert a is b


def test_update_with_several_trees_later_wins():
    net = pax.nn.Linear(2, 2)
    a = jax.tree_util.tree_map(lambda x: x + 1, net.parameters())
    b = jax.tree_util.tree_map(lambda x: x * 0, net.parameters())
    np.testing.assert_array_equal(net.update(a, b).weight, 0)
    np.testing.assert_array_equal(net.update(b, a).weight, net.weight + 1)


def test_freeze_unfreeze_recursive_and_new_modules():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
    frozen = net.freeze()
    assert frozen is not net and frozen.modules[0] is not net.modules[0]
    assert jax.tree_util.tree_leaves(frozen.parameters()) == []
    assert len(jax.tree_util.tree_leaves(frozen.states())) == 4
    assert jax.tree_util.tree_leaves(net.states()) == []  # original untouched
    back = frozen.unfreeze()
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(net)


def test_unfreeze_keeps_true_states():
    c = Counter().freeze().unfreeze()
    assert c.parameters().counter is None and c.parameters().bias is not None


def test_train_eval_recursive():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
    ev = net.eval()
    assert not ev.training and not ev.modules[1].training
    assert net.training and net.modules[1].training
    assert ev.train().modules[0].training
    assert jax.tree_util.tree_structure(ev.train()) == jax.tree_util.tree_structure(net)
    assert jax.tree_util.tree_structure(ev) != jax.tree_util.tree_structure(net)


def test_copy_is_independent():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
    other = net.copy()
    other.modules[1] = pax.nn.Linear(3, 5)
    assert net.modules[1].out_dim == 1


def test_list_mutation_is_seen_by_next_flatten():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
    before = jax.tree_util.tree_structure(net)
    net.modules[1] = pax.nn.Linear(3, 4, with_bias=False)
    after = jax.tree_util.tree_structure(net)
    assert before != after
    assert len(jax.tree_util.tree_leaves(net)) == 3


def test_static_list_later_filled_with_modules_is_promoted():
    class Lazy(pax.Module):
        def __init__(self):
            super().__init__()
            self.layers = []
            self.layers.append(pax.nn.Linear(2, 2))

    m = Lazy()
    assert len(jax.tree_util.tree_leaves(m)) == 2
    assert m.registry["layers"] is pax.Kind.MODULE_SUBTREE


def test_unhashable_static_values_are_compared_by_content():
    class WithList(pax.Module):
        def __init__(self, sizes):
            super().__init__()
            self.sizes = sizes
            self.register_parameter("w", jnp.ones(1))

    a, b, c = WithList([1, 2]), WithList([1, 2]), WithList([1, 3])
    ta, tb, tc = (jax.tree_util.tree_structure(x) for x in (a, b, c))
    assert ta == tb and hash(ta) == hash(tb)
    assert ta != tc
    a.sizes.append(3)  # in-place mutation is seen
    assert jax.tree_util.tree_structure(a) != tb


def test_registry_shared_between_copies_until_changed():
    a, b = pax.nn.Linear(2, 2), pax.nn.Linear(2, 2)
    assert registry.layout_of(a) is registry.layout_of(b)
    _, aux_a = jax.tree_util.tree_flatten(a)[1].node_data()
    copy = a.copy()
    assert registry.cached_aux(copy.__dict__) is registry.cached_aux(a.__dict__) is not None
    assert isinstance(aux_a, tuple)
    hash(aux_a)  # raises TypeError if any static value were unhashable
    b.extra = 1
    assert registry.layout_of(b) is not registry.layout_of(a)


def test_unflatten_bypasses_init():
    calls = []

    class Tracked(pax.Module):
        def __init__(self):
            super().__init__()
            calls.append(1)
            self.register_parameter("w", jnp.ones(1))

    t = Tracked()
    jax.tree_util.tree_map(lambda x: x, t)
    assert calls == [1]


def test_delattr_unregisters():
    m = Mixed()
    del m.w
    assert "w" not in m.registry
    assert len(jax.tree_util.tree_leaves(m)) == len(jax.tree_util.tree_leaves(Mixed())) - 1


def test_property_setter_is_respected():
    class WithProp(pax.Module):
        def __init__(self):
            super().__init__()
            self._scale = 1.0

        @property
        def scale(self):
            return self._scale

        @scale.setter
        def scale(self, value):
            self._scale = float(value)

    m = WithProp()
    m.scale = 3
    assert m._scale == 3.0


def test_repr_and_summary():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), jax.nn.relu, Counter())
    text = repr(net)
    assert "Linear(in_dim=2, out_dim=3" in text and "weight=f32[2,3]" in text
    assert "counter=i32[] (state)" in text and "Lambda(fn=relu)" in text
    summary = net.summary()
    lines = summary.splitlines()
    assert lines[0].split() == ["module", "type", "params", "states", "leaves", "t/f/s", "bytes"]
    assert lines[1].split() == ["Sequential", "Sequential", "10", "1", "3/0/1", "44", "B"]
    assert lines[2].split() == [".modules[0]", "Linear", "9", "0", "2/0/0", "36", "B"]
    assert lines[4].split() == [".modules[2]", "Counter", "1", "1", "1/0/1", "8", "B"]
    assert lines[5].split() == ["total", "10", "1", "3/0/1", "44", "B"]


def test_vmap_over_module():
    nets = jax.vmap(lambda k: pax.nn.Linear(2, 3, rng_key=k))(
        jax.random.split(jax.random.PRNGKey(0), 4)
    )
    assert nets.weight.shape == (4, 2, 3)
    out = jax.vmap(lambda n, x: n(x))(nets, jnp.ones((4, 2)))
    assert out.shape == (4, 3)


def test_scan_carries_module_state():
    def body(net, x):
        y = net(x)
        return net, y

    net, ys = jax.lax.scan(body, Counter(0), jnp.arange(3.0))
    assert net.counter == 3
    np.testing.assert_allclose(ys, [0.0, 2.0, 6.0])


def test_pmap_replicated_module():
    n = jax.local_device_count()
    net = pax.nn.Linear(2, 3)
    replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), net)
    out = jax.pmap(lambda m, x: m(x))(replicated, jnp.ones((n, 1, 2)))
    np.testing.assert_allclose(out[0], net(jnp.ones((1, 2))), rtol=1e-6)


def test_eval_shape_and_tree_util():
    net = pax.nn.Linear(2, 3)
    shapes = jax.eval_shape(lambda m: m, net)
    assert shapes.weight.shape == (2, 3)
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, net)
    np.testing.assert_allclose(doubled.weight, 2 * net.weight)


def test_module_without_attributes_and_without_super_init():
    class Bare(pax.Module):
        def __init__(self):
            pass

    b = Bare()
    leaves, treedef = jax.tree_util.tree_flatten(b)
    assert leaves == []
    assert type(jax.tree_util.tree_unflatten(treedef, leaves)) is Bare
    assert not b.eval().training and b.training


def test_sharding_device_put_and_jit():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    net = jax.device_put(pax.nn.Linear(2, 3), NamedSharding(mesh, PartitionSpec()))
    assert net.weight.sharding.is_fully_replicated
    x = jax.device_put(
        jnp.ones((len(jax.devices()), 2)), NamedSharding(mesh, PartitionSpec("data"))
    )
    y = jax.jit(lambda m, x: m(x))(net, x)
    np.testing.assert_allclose(
        y, jnp.ones((len(jax.devices()), 2)) @ net.weight + net.bias, rtol=1e-6
    )


def test_summary_warns_about_shared_submodule():
    block = pax.nn.Linear(2, 2)
    net = pax.nn.Sequential(block, block)
    last = net.summary().splitlines()[-1]
    assert last.startswith("warning: .modules[1] is the same object as .modules[0]")
    assert "warning" not in pax.nn.Sequential(block, pax.nn.Linear(2, 2)).summary()


def test_pickle_and_deepcopy_keep_treedef():
    import copy
    import pickle

    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Identity()).copy()  # has a cached aux
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert jax.tree_util.tree_structure(clone) == jax.tree_util.tree_structure(net)
        np.testing.assert_array_equal(clone.modules[0].weight, net.modules[0].weight)


# --- the flatten cache -----------------------------------------------------------------------


def test_flatten_sees_every_reassignment_and_in_place_change():
    class Holder(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("w", jnp.zeros(2))
            self.register_parameter_subtree("tree", {"a": jnp.zeros(1)})
            self.blocks = [pax.nn.Linear(1, 1)]

    m = Holder()
    jax.tree_util.tree_flatten(m)  # fills the cache
    m.w = jnp.ones(2)
    m.tree["a"] = jnp.full(1, 5.0)  # in place: the cached child is the dict itself
    m.blocks.append(pax.nn.Linear(1, 1))  # in place, in a module subtree
    leaves = jax.tree_util.tree_leaves(m)
    assert len(leaves) == 1 + 1 + 2 * 2  # w, tree["a"], two Linears
    np.testing.assert_array_equal(leaves[0], jnp.ones(2))
    np.testing.assert_array_equal(leaves[1], jnp.full(1, 5.0))


def test_unflattened_modules_flatten_from_their_cache_and_stay_correct():
    net = pax.nn.Linear(2, 2)
    leaves, treedef = jax.tree_util.tree_flatten(net)
    rebuilt = jax.tree_util.tree_unflatten(treedef, [x + 1 for x in leaves])
    assert jax.tree_util.tree_structure(rebuilt) == treedef
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(rebuilt)[0], leaves[0] + 1)
    rebuilt.bias = jnp.zeros(2)
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(rebuilt)[1], jnp.zeros(2))
    assert pax.nn.Linear(2, 2).eval().training is False  # views copy without the cache


def test_a_subclass_with_its_own_getattr_still_flattens():
    class Delegating(pax.Module):
        def __init__(self):
            super().__init__()
            self.inner = pax.nn.Linear(2, 2)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    m = Delegating()
    assert len(jax.tree_util.tree_leaves(m)) == 2
    assert m.weight is m.inner.weight
    m.inner = pax.nn.Linear(2, 3)
    assert jax.tree_util.tree_leaves(m)[0].shape == (2, 3)


def test_a_property_raising_attribute_error_keeps_its_own_message():
    class Broken(pax.Module):
        @property
        def size(self):
            raise AttributeError("Broken.size: no size before the first call")

    with pytest.raises(AttributeError, match="no size before the first call"):
        Broken().size
    with pytest.raises(AttributeError, match="'Broken' object has no attribute 'missing'"):
        Broken().missing


@pytest.mark.parametrize("view", ["parameters", "states"])
def test_calling_a_view_as_a_model_names_the_view_and_the_fix(view):
    model = pax.nn.Sequential(pax.nn.Linear(3, 3), pax.nn.BatchNorm1D(3))
    partial = getattr(model, view)()
    with pytest.raises(TypeError, match=rf"Sequential: this module is the view model\.{view}\(\)"):
        partial(jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"Fix: call the model itself, `model\(x\)`"):
        partial.modules[1](jnp.ones((2, 3)))  # a BatchNorm states view would run silently


def test_views_merged_back_or_passed_through_grad_are_models_again():
    model = pax.nn.Sequential(pax.nn.Linear(3, 3), pax.nn.BatchNorm1D(3))
    x = jnp.ones((2, 3))
    model.update(model.parameters())(x)
    model.states().update(model.parameters())  # still a view: not called

    def loss(params, model):
        model = model.update(params)
        return jnp.sum(model(x)), model

    grads, model = jax.grad(loss, has_aux=True)(model.parameters(), model)
    model(x)
    jax.tree_util.tree_map(lambda p, g: p - g, model.parameters(), grads)
    pax.nn.Linear(3, 3).parameters().copy()  # views still copy, flatten, pickle


# --- a list filled after assignment is classified like flatten does, before any flatten ----


class Filled(pax.Module):
    def __init__(self):
        super().__init__()
        self.layers = []
        self.layers.append(pax.nn.Linear(2, 2))
        self.layers.append(pax.nn.BatchNorm1D(2))


def _count(tree):
    return len(jax.tree_util.tree_leaves(tree))


def test_list_filled_after_assignment_is_classified_before_the_first_flatten():
    net = Filled()
    assert _count(net.parameters()) == 4  # Linear weight, bias; BatchNorm scale, offset
    net = Filled()
    assert _count(net.states()) == _count(net) - 4
    net = Filled()
    assert [type(m).__name__ for m in net.submodules()] == ["Linear", "BatchNorm1D"]
    net = Filled()
    assert net.registry["layers"] is pax.Kind.MODULE_SUBTREE
    net = Filled()
    frozen = net.freeze()
    assert _count(frozen.parameters()) == 0
    net = Filled()
    assert "BatchNorm1D" in net.summary()


# --- copies and pickling ------------------------------------------------------------------------


def test_copy_of_a_model_is_accepted_by_check():
    online = pax.nn.Linear(2, 2)
    target = online.copy()
    pax.check((online, target))


def _roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("fn", [jax.nn.relu, jnp.tanh, jax.nn.gelu, jax.nn.sigmoid])
def test_models_holding_jax_functions_pickle(fn):
    net = nn.Sequential(nn.Linear(2, 2), fn)
    back = _roundtrip(net)
    assert back.modules[1].fn is fn
    x = jnp.array([[1.0, -2.0]])
    np.testing.assert_array_equal(back(x), net(x))


@pytest.mark.parametrize(
    "make", [lambda: nn.MLP([2, 3, 1]), lambda: nn.VanillaRNN(2, 3)], ids=["MLP", "VanillaRNN"]
)
def test_layers_keeping_an_activation_pickle(make):
    net = make()
    back = _roundtrip(net)
    assert back.activation is jax.nn.relu
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(net)


def _local():
    def act(x):
        return x

    return act


@pytest.mark.parametrize("fn", [lambda x: x, _local()], ids=["lambda", "local"])
def test_pickling_a_lambda_of_a_local_function_names_the_fix(fn):
    net = nn.Sequential(nn.Linear(2, 2), fn)
    with pytest.raises(TypeError, match=r"Lambda: cannot pickle fn=.*module level.*pax.save"):
        pickle.dumps(net)
    # copies still work
    assert copy.deepcopy(net).modules[1].fn is fn
    assert copy.copy(net.modules[1]).fn is fn
