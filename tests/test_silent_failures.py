"""Mistakes that used to fail silently (or far from their line) now raise where they are made."""

import types
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import pax


def _loss_fn(params, model, inputs):
    model = model.update(params)
    x, y = inputs
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, model)


# --- 0: a list filled after assignment is classified like flatten does, before any flatten ----


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


# --- 3: arrays or modules hidden in a static object ----------------------------------------------


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


# --- 4: plain assignment shadowing a method ---------------------------------------------------


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


# --- 5: update with other shapes or dtypes ------------------------------------------------------


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


# --- 6: integer parameters --------------------------------------------------------------------


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


# --- 8c: numpy inputs and state dtypes ----------------------------------------------------------


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


# --- 8a: model.update(params) forgotten in loss_fn ------------------------------------------------


def test_forgotten_update_in_loss_fn_is_explained():
    def loss_fn(params, model, inputs):
        x, y = inputs
        loss = jnp.mean((model(x) - y) ** 2)
        return loss, (loss, model)

    net = pax.nn.Linear(1, 1)
    opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
    x = jnp.ones((4, 1))
    for jit in (False, True):
        update_fn = pax.utils.build_update_fn(loss_fn, jit=jit)
        with pytest.raises(ValueError, match=r"model = model\.update\(params\)"):
            update_fn(net, opt, (x, 2 * x))


# --- 9: an optax transform passed as the optimizer ---------------------------------------------


def test_raw_optax_transform_is_explained_before_jax_sees_it():
    update_fn = pax.utils.build_update_fn(_loss_fn)
    net = pax.nn.Linear(1, 1)
    x = jnp.ones((4, 1))
    with pytest.raises(TypeError, match=r"pax\.optim\.from_optax"):
        update_fn(net, optax.adam(1e-3), (x, x))


# --- 12: optimizers that keep the initial parameters; copies ------------------------------------


def test_optimizer_holding_the_initial_parameters_is_accepted():
    net = pax.nn.Linear(1, 1)
    opt = pax.optim.from_optax(optax.contrib.prodigy(1.0))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x = jnp.ones((4, 1))
    loss, net, opt = update_fn(net, opt, (x, 2 * x))
    assert np.isfinite(float(loss))


def test_shared_arrays_are_refused_when_donated():
    net = pax.nn.Linear(1, 1)
    opt = pax.optim.from_optax(optax.contrib.prodigy(1.0))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn, donate=True)
    x = jnp.ones((4, 1))
    with pytest.raises(pax.SharedObjectError, match="donat"):
        update_fn(net, opt, (x, 2 * x))


def test_copy_of_a_model_is_accepted_by_check():
    online = pax.nn.Linear(2, 2)
    target = online.copy()
    pax.check((online, target))


# --- 8 (part): sharing introduced after the first call -----------------------------------------


def test_sharing_introduced_after_the_first_call_is_caught():
    class Two(pax.Module):
        def __init__(self):
            super().__init__()
            self.a = pax.nn.Linear(1, 1)
            self.b = pax.nn.Linear(1, 1)

        def __call__(self, x):
            return self.b(self.a(x))

    net = Two()
    opt = pax.optim.from_optax(optax.sgd(0.1))(net.parameters())
    update_fn = pax.utils.build_update_fn(_loss_fn)
    x = jnp.ones((4, 1))
    _, net, opt = update_fn(net, opt, (x, 2 * x))
    net.b = net.a
    with pytest.raises(
        pax.SharedObjectError, match=r"tree\[0\]\.b is the same Linear module as tree\[0\]\.a"
    ):
        update_fn(net, opt, (x, 2 * x))
