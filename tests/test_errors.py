"""Every user-facing error of the core names the class, the attribute and the fix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax


class Empty(pax.Module):
    def method(self):
        return 1


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("abc", r"Empty\.w: a parameter must be a jax or numpy array, got 'abc' of type str"),
        (object(), r"Empty\.w: a parameter must be a jax or numpy array, got <object"),
        (None, r"Empty\.w: a parameter must be a jax or numpy array, got None"),
        (1.5, r"Fix: self\.register_parameter\('w', jnp\.asarray\(value\)\)"),
    ],
)
def test_register_parameter_rejects_non_arrays(value, match):
    with pytest.raises(TypeError, match=match):
        Empty().register_parameter("w", value)


def test_register_state_rejects_non_arrays():
    with pytest.raises(TypeError, match=r"Empty\.s: a state must be a jax or numpy array"):
        Empty().register_state("s", [1, 2])


def test_subtree_leaf_must_be_array():
    with pytest.raises(TypeError, match=r"Empty\.t\['b'\]: every leaf of a state subtree"):
        Empty().register_state_subtree("t", {"a": jnp.ones(1), "b": "x"})
    with pytest.raises(TypeError, match=r"Empty\.t: cannot register None as a parameter subtree"):
        Empty().register_parameter_subtree("t", None)


def test_register_twice_with_another_kind():
    m = Empty()
    m.register_parameter("w", jnp.ones(1))
    with pytest.raises(
        ValueError,
        match=r"Empty\.w is already registered as a parameter; cannot register it "
        r"again as a state\. Fix: use another name, or `del self\.w` first",
    ):
        m.register_state("w", jnp.ones(1))
    m.register_parameter("w", jnp.zeros(1))  # same kind: fine
    np.testing.assert_array_equal(m.w, 0)


@pytest.mark.parametrize("name", ["method", "parameters", "update"])
def test_register_name_shadowing_a_method(name):
    with pytest.raises(
        ValueError, match=rf"Empty\.{name}: cannot register '{name}': it would shadow"
    ):
        Empty().register_parameter(name, jnp.ones(1))


def test_register_training_is_reserved():
    with pytest.raises(ValueError, match=r"Empty\.training: cannot register 'training'"):
        Empty().register_state("training", jnp.ones(1))


def test_register_invalid_names():
    with pytest.raises(ValueError, match="must be an identifier"):
        Empty().register_parameter("a b", jnp.ones(1))
    with pytest.raises(ValueError, match="reserved"):
        Empty().register_parameter("_pax_x", jnp.ones(1))


def test_register_module_type_checked():
    with pytest.raises(TypeError, match=r"Empty\.m: register_module expects a pax\.Module"):
        Empty().register_module("m", jnp.ones(1))


@pytest.mark.parametrize("array", [jnp.ones(2), np.ones(2)])
def test_unregistered_array_attribute(array):
    m = Empty()
    with pytest.raises(
        TypeError,
        match=r"Empty\.w: cannot assign a f\d+\[2\] array to an unregistered attribute; it "
        r"would be static .* Fix: self\.register_parameter\('w', value\)",
    ):
        m.w = array


def test_unregistered_array_inside_container():
    with pytest.raises(
        TypeError, match=r"Empty\.ws: this list holds an array .* self\.register_parameter_subtree"
    ):
        Empty().ws = [jnp.ones(1), jnp.ones(2)]


def test_array_appended_to_static_list_detected_at_flatten():
    m = Empty()
    m.items = []
    m.items.append(jnp.ones(3))
    with pytest.raises(
        TypeError, match=r"Empty\.items: this list is a static attribute but now holds"
    ):
        jax.tree_util.tree_flatten(m)


def test_module_container_with_non_module():
    with pytest.raises(TypeError, match=r"Empty\.layers\[1\]: .* Fix: wrap functions in a module"):
        Empty().layers = [pax.nn.Linear(1, 1), jax.nn.relu]


def test_assigning_wrong_type_to_registered_parameter():
    m = Empty()
    m.register_parameter("w", jnp.ones(1))
    with pytest.raises(TypeError, match=r"Empty\.w: a parameter must be a jax or numpy array"):
        m.w = "oops"


def test_update_with_different_structure_names_the_key_path():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), pax.nn.Linear(3, 1))
    other = net.copy()
    other.modules[1] = pax.nn.Linear(3, 1, with_bias=False)
    with pytest.raises(
        ValueError,
        match=r"Sequential\.update: the tree to merge has a different structure: at "
        r"\.modules\[1\]\.bias: Linear\.bias is a parameter \(expected\) but a static attribute "
        r"\(got\)",
    ):
        net.update(other.parameters())
    with pytest.raises(
        ValueError, match=r"at \.modules\[0\]\.weight: Linear\.weight is a parameter"
    ):
        net.update(net.freeze())
    renamed = net.copy()
    renamed.modules[1].out_dim = 7
    with pytest.raises(
        ValueError, match=r"static attribute Linear\.out_dim is 1 \(expected\) but 7"
    ):
        net.update(renamed)


def loss_fn(params, model, x):
    model = model.update(params)
    y = model(x)
    return jnp.sum(y), (jnp.sum(y), model)


class PyCounter(pax.Module):
    """The classic mistake: a Python int counter incremented in __call__."""

    def __init__(self):
        super().__init__()
        self.register_parameter("w", jnp.ones(()))
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return self.w * x


def test_static_field_changed_inside_jit_is_reported():
    class NoOpt(pax.Module):
        def step(self, grads, model):
            return model

    update_fn = pax.utils.build_update_fn(loss_fn)
    with pytest.raises(
        pax.StructureChangedError,
        match=r"model returned by loss_fn changed .* at \.calls: static attribute "
        r"PyCounter\.calls is 0 \(before\) but 1 \(after\).*register_state",
    ):
        update_fn(PyCounter(), NoOpt(), jnp.ones(()))


def test_registry_changed_inside_jit_is_reported():
    class Grows(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_parameter("w", jnp.ones(()))

        def __call__(self, x):
            self.register_state("cache", x)
            return self.w * x

    with pytest.raises(
        pax.StructureChangedError,
        match=r"at \.cache: Grows\.cache is absent \(before\) but a state",
    ):
        pax.utils.check_same_structure(Grows(), jax.jit(lambda m: (m(jnp.ones(())), m)[1])(Grows()))


class Counter(pax.Module):
    def __init__(self):
        super().__init__()
        self.register_state("count", jnp.array(0))

    def __call__(self, x):
        self.count = self.count + 1
        return x * self.count


def test_leaked_tracer_reported_on_next_call():
    net = Counter()
    jax.jit(lambda x: net(x))(1.0)  # mutates `net` inside jit without returning it
    with pytest.raises(
        RuntimeError,
        match=r"Counter\.count holds a JAX tracer from a transformation .* already returned"
        r"(.|\n)*return y, model",
    ):
        net(2.0)


def test_leaked_tracer_reported_on_next_jit():
    net = Counter()
    jax.jit(lambda x: net(x))(1.0)
    with pytest.raises(RuntimeError, match=r"Counter\.count holds a JAX tracer"):
        jax.jit(lambda m: m)(net)


def test_returned_module_is_fine():
    net = Counter()

    @jax.jit
    def step(net, x):
        return net(x), net

    y, net = step(net, 1.0)
    y, net = step(net, 1.0)
    assert net.count == 2 and y == 2.0
