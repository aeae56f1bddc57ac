"""Reads never change the module they read: flatten, the views, summary, repr, pax.check.

A property test: any sequence of assignments, container mutations and reads; before and after
each read, ``module.__dict__`` (all but the flatten caches) and every registry view are the same.
"""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pax
from pax._src.core import registry

CACHES = {registry.AUX_KEY, registry.FLAT_KEY}


def _state(module):
    """What a read must leave alone: every non-cache entry (by identity), the registry, the
    submodules' states too."""
    d = {k: v for k, v in module.__dict__.items() if k not in CACHES}
    inner = {}
    for name, value in list(d.items()):
        if isinstance(value, list):
            inner[name] = tuple(value)  # the content, by identity of the items
            for item in value:
                if pax.Module in type(item).__mro__:
                    inner[f"{name}:{id(item)}"] = _state(item)
        elif isinstance(value, pax.Module):
            inner[name] = _state(value)
    return (
        {k: id(v) for k, v in d.items()},
        inner,
        tuple(registry.layout_in(module.__dict__).kind_of.items()),
        tuple(registry.layout_in(module.__dict__).static),
    )


READS = {
    "flatten": lambda m: jax.tree_util.tree_leaves(m),
    "treedef": lambda m: jax.tree_util.tree_structure(m),
    "parameters": lambda m: m.parameters(),
    "states": lambda m: m.states(),
    "registry": lambda m: dict(m.registry),
    "submodules": lambda m: m.submodules(),
    "summary": lambda m: m.summary(),
    "repr": repr,
    "check": lambda m: pax.check(m),
    "find_shared": lambda m: pax.find_shared(m),
    "freeze": lambda m: m.freeze(),
    "eval": lambda m: m.eval(),
}

ACTIONS = [
    "static_int",
    "static_list",
    "append_module",
    "append_int",
    "assign_module",
    "assign_module_list",
    "register_state",
    "set_state",
    "dict_item_module",
]


def _act(model, action, i):
    if action == "static_int":
        model.size = i
    elif action == "static_list":
        model.items = []
    elif action == "append_module":
        if isinstance(model.__dict__.get("items"), list):
            model.items.append(pax.nn.Linear(1, 1))
    elif action == "append_int":
        if isinstance(model.__dict__.get("items"), list):
            model.items.append(i)
    elif action == "assign_module":
        model.child = pax.nn.Linear(1, 2)
    elif action == "assign_module_list":
        model.layers = [pax.nn.Linear(1, 1), pax.nn.BatchNorm1D(1)]
    elif action == "register_state":
        if "count" not in model.registry:
            model.register_state("count", jnp.zeros(()))
    elif action == "set_state":
        if "count" in model.registry:
            model.count = jnp.full((), float(i))
    elif action == "dict_item_module":
        if not isinstance(model.__dict__.get("table"), dict):
            model.table = {}
        model.table[f"k{i}"] = pax.nn.Linear(1, 1)


steps = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.sampled_from(sorted(READS))), min_size=1, max_size=8
)


@settings(
    max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(steps)
def test_reads_never_change_the_module(sequence):
    model = pax.Module()
    for i, (action, read) in enumerate(sequence):
        try:
            _act(model, action, i)
        except TypeError:  # a list holding ints and modules: refused when read, still a read
            pass
        before = _state(model)
        try:
            READS[read](model)
        except (TypeError, pax.SharedObjectError):
            pass
        assert _state(model) == before, read


@pytest.mark.parametrize("read", sorted(READS))
def test_a_static_list_filled_later_reads_as_modules_without_being_rewritten(read):
    model = pax.Module()
    model.layers = []
    model.layers.append(pax.nn.Linear(2, 2))
    layout = registry.layout_in(model.__dict__)
    READS[read](model)
    assert registry.layout_in(model.__dict__) is layout  # the stored layout is untouched
    assert model.registry["layers"] is pax.Kind.MODULE_SUBTREE  # yet read as flatten reads it
    assert len(jax.tree_util.tree_leaves(model)) == 2
    assert len(jax.tree_util.tree_leaves(model.parameters())) == 2


def test_cycles_are_refused_at_assignment():
    class Node(pax.Module):
        pass

    node = Node()
    with pytest.raises(ValueError, match=r"Node\.me: this value contains the Node module itself"):
        node.me = node
    with pytest.raises(ValueError, match=r"Node\.layers: this value contains the Node module"):
        node.layers = [pax.nn.Linear(1, 1), node]
    with pytest.raises(ValueError, match=r"Node\.table: this value contains the Node module"):
        node.register_module_subtree("table", {"a": node})
    later = Node()
    later.items = []
    later.items.append(later)  # a static list filled later: refused when read
    with pytest.raises(ValueError, match=r"Node\.items: this value contains the Node module"):
        jax.tree_util.tree_leaves(later)
    print(pax.nn.Linear(1, 1))  # the interpreter is fine


def test_a_tree_of_modules_that_is_not_a_cycle_is_accepted():
    class Node(pax.Module):
        pass

    a, b = Node(), Node()
    a.child = b
    b.sibling_like = Node()
    shared = pax.nn.Linear(1, 1)
    a.first, a.second = shared, shared  # shared, not a cycle: pax.check's business
    assert len(jax.tree_util.tree_leaves(a)) == 4


def test_very_deep_nesting_is_refused_with_a_clear_error():
    class Wrap(pax.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    model = pax.nn.Linear(2, 2)
    for _ in range(255):
        model = Wrap(model)
    jax.tree_util.tree_leaves(model)  # 256 deep: fine
    with pytest.raises(ValueError, match=r"Wrap\.inner: this module nests more than 256 modules"):
        Wrap(model)
