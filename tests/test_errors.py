"""Every user-facing error of the core names the class, the attribute and the fix."""

import types
from dataclasses import dataclass

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


# --- arrays or modules hidden in a static object ----------------------------------------------


@dataclass
class Config:
    size: int
    weight: object = None


def test_array_inside_a_dataclass_is_refused():
    m = pax.Module()
    with pytest.raises(TypeError, match=r"Module\.config\.weight: .*array.*static.*Fix"):
        m.config = Config(2, jnp.ones(2))
    m.config = Config(2)  # no array: fine


def test_module_inside_a_namespace_is_refused():
    m = pax.Module()
    with pytest.raises(TypeError, match=r"Module\.ns\.fc: .*Linear module.*static.*Fix"):
        m.ns = types.SimpleNamespace(fc=pax.nn.Linear(2, 2))
    m.fn = jax.nn.relu
    m.cls = pax.nn.Linear
    m.mod = np
    m.ns2 = types.SimpleNamespace(n=3, fn=jnp.tanh)


def test_array_inside_an_object_inside_a_list_is_refused():
    m = pax.Module()
    with pytest.raises(TypeError, match=r"Module\.items\[0\]\.weight: .*array"):
        m.items = [Config(2, np.zeros(2))]


# --- plain assignment shadowing a method ---------------------------------------------------


def test_assignment_shadowing_a_method_is_refused():
    m = pax.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"Linear\.update: .*shadow the function Linear\.update"):
        m.update = pax.nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"Linear\.eval: .*shadow.*Fix: choose another name"):
        m.eval = True
    m.training = False  # the flag stays assignable


def test_property_with_a_setter_stays_assignable():
    class WithProperty(pax.Module):
        def __init__(self):
            super().__init__()
            self._size = 1

        @property
        def size(self):
            return self._size

        @size.setter
        def size(self, value):
            self._size = value

    m = WithProperty()
    m.size = 3
    assert m.size == 3


# --- update with other shapes or dtypes ------------------------------------------------------


def test_update_with_another_shape_names_the_key_path():
    net = pax.nn.Linear(2, 3)
    other = jax.tree_util.tree_map(lambda x: jnp.zeros((5, 7)) if x.ndim == 2 else x, net)
    with pytest.raises(
        ValueError, match=r"Linear\.update: .*\.weight: f32\[2,3\] here, f32\[5,7\] given"
    ):
        net.update(other.parameters())


def test_update_with_another_dtype_names_the_key_path():
    net = pax.nn.Linear(2, 3)
    half = jax.tree_util.tree_map(lambda x: x.astype(jnp.float16), net.parameters())
    with pytest.raises(ValueError, match=r"\.weight: f32\[2,3\] here, f16\[2,3\] given"):
        net.update(half)
    net.update(net.parameters())  # None leaves are wildcards


# --- integer parameters --------------------------------------------------------------------


def test_integer_parameter_is_refused():
    m = pax.Module()
    with pytest.raises(TypeError, match=r"Module\.n: a parameter must be .*float.*int32.*Fix"):
        m.register_parameter("n", jnp.array(1))
    with pytest.raises(TypeError, match=r"Module\.t\['b'\]: .*bool.*register_state_subtree"):
        m.register_parameter_subtree("t", {"a": jnp.ones(2), "b": jnp.array(True)})
    m.register_parameter("w", jnp.ones(2))
    with pytest.raises(TypeError, match=r"Module\.w: .*int32.*astype\(jnp\.float32\)"):
        m.w = jnp.ones(2, jnp.int32)
    m.register_state("count", jnp.array(0))  # states may be integers


# --- numpy inputs and state dtypes ----------------------------------------------------------


def test_numpy_float64_parameter_follows_jax_dtype_rules():
    m = pax.Module()
    m.register_parameter("w", np.ones(3))
    assert m.w.dtype == jnp.asarray(np.ones(3)).dtype
    assert isinstance(m.w, jax.Array)


def test_state_keeps_its_dtype():
    m = pax.Module()
    m.register_state("mean", jnp.zeros(2, jnp.float32))
    with pytest.raises(TypeError, match=r"Module\.mean: .*float32.*float16.*astype"):
        m.mean = jnp.zeros(2, jnp.float16)
    m.mean = jnp.ones(2, jnp.float32)


def test_a_big_endian_numpy_array_registers_with_its_values():
    class Net(pax.Module):
        def __init__(self):
            super().__init__()
            self.register_state("s", np.array([1.5, 2.5, -3.0], dtype=">f4"))
            self.register_parameter("w", np.array([1.0], dtype=">f8"))

    net = Net()
    np.testing.assert_array_equal(net.s, [1.5, 2.5, -3.0])
    assert net.s.dtype == jnp.float32 and net.w.dtype == jnp.float32
