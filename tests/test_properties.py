"""Property-based tests: invariants of random module trees, generated with hypothesis.

The trees are built from small hand-written modules: nested submodules (as attributes, in lists
and in dicts), parameters and states of random shapes (empty ones included) and dtypes (bf16,
float8, int4, ... included), parameter and state subtrees, and frozen parts. While building a
tree, the test records independently which key paths exist and which are trainable: that record
is the oracle the properties are checked against.

The number of examples per property is 25; set ``PAX_HYPOTHESIS_EXAMPLES`` to raise it.
"""

import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pax

EXAMPLES = int(os.environ.get("PAX_HYPOTHESIS_EXAMPLES", "25"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

DTYPES = ["float32", "bfloat16", "float16", "float8_e4m3fn", "int32", "int8", "uint8", "int4"]
DTYPES += ["uint32", "bool"]


# --- specs: plain data drawn by hypothesis ---------------------------------------------------


@dataclass(frozen=True)
class LeafSpec:
    shape: tuple[int, ...]
    dtype: str
    trainable: bool


@dataclass(frozen=True)
class NodeSpec:
    kind: str  # "node" or "pair": which module class builds it
    leaves: tuple[LeafSpec, ...]
    param_subtree: tuple[LeafSpec, ...] | None
    state_subtree: tuple[LeafSpec, ...] | None
    children: tuple["NodeSpec", ...]  # attributes child0, child1, ...
    in_list: tuple["NodeSpec | None", ...]  # attribute `items` (None entries allowed)
    in_dict: tuple[tuple[str, "NodeSpec"], ...]  # attribute `table`
    frozen: bool
    tag: int = 0  # a static attribute


shapes = st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple)
INEXACT = ["float32", "bfloat16", "float16", "float8_e4m3fn"]


def _trainable_inexact(spec: LeafSpec) -> LeafSpec:
    """Parameters must be float arrays: an integer or boolean leaf drawn trainable is a state."""
    if spec.trainable and spec.dtype not in INEXACT:
        return LeafSpec(spec.shape, spec.dtype, False)
    return spec


leaf_specs = st.builds(LeafSpec, shapes, st.sampled_from(DTYPES), st.booleans())
leaf_specs = leaf_specs.map(_trainable_inexact)
leaf_lists = st.lists(leaf_specs, max_size=3).map(tuple)
float_leaf_lists = st.lists(
    st.builds(LeafSpec, shapes, st.sampled_from(INEXACT), st.just(True)), max_size=3
).map(tuple)


def _node_specs(children: st.SearchStrategy) -> st.SearchStrategy:
    small = st.lists(children, max_size=2).map(tuple)
    keyed = st.dictionaries(st.sampled_from(["a", "b", "c/d", "0"]), children, max_size=2)
    return st.builds(
        NodeSpec,
        kind=st.sampled_from(["node", "pair"]),
        leaves=leaf_lists,
        param_subtree=st.none() | float_leaf_lists,
        state_subtree=st.none() | leaf_lists,
        children=small,
        in_list=st.lists(children | st.none(), max_size=3).map(tuple),
        in_dict=keyed.map(lambda d: tuple(sorted(d.items()))),
        frozen=st.booleans(),
        tag=st.integers(0, 3),
    )


_leaf_only = st.builds(
    NodeSpec,
    kind=st.sampled_from(["node", "pair"]),
    leaves=leaf_lists,
    param_subtree=st.none(),
    state_subtree=st.none(),
    children=st.just(()),
    in_list=st.just(()),
    in_dict=st.just(()),
    frozen=st.booleans(),
    tag=st.integers(0, 3),
)
node_specs = st.recursive(_leaf_only, _node_specs, max_leaves=6)


# --- building modules from specs, recording the oracle -----------------------------------------


@dataclass
class Oracle:
    trainable: dict[str, bool] = field(default_factory=dict)  # key path -> trainable
    parameter: dict[str, bool] = field(default_factory=dict)  # registered as a parameter
    modules: list[str] = field(default_factory=list)  # key paths of submodules
    has_frozen: bool = False


def _array(rng: np.random.Generator, spec: LeafSpec) -> jax.Array:
    dtype = jnp.dtype(spec.dtype)
    if dtype == jnp.bool_:
        return jax.device_put(rng.integers(0, 2, spec.shape).astype(bool))
    if spec.dtype == "int4":  # 4 meaningful bits in a byte: draw values, not bytes
        info = jnp.iinfo(dtype)
        values = rng.integers(int(info.min), int(info.max) + 1, spec.shape)
        return jax.device_put(values.astype(dtype))
    bits = rng.integers(0, 2 ** (8 * dtype.itemsize), spec.shape, dtype=f"u{dtype.itemsize}")
    return jax.device_put(bits.view(dtype))  # any bit pattern: NaN payloads, infinities, ...


class Node(pax.Module):
    """Parameters and states registered one by one, subtrees, submodules in all containers."""

    def __init__(self, spec: NodeSpec, rng: np.random.Generator, oracle: Oracle, path: str):
        super().__init__()
        self.tag = spec.tag
        frozen = spec.frozen
        for i, leaf in enumerate(spec.leaves):
            value = _array(rng, leaf)
            if leaf.trainable:
                self.register_parameter(f"p{i}", value)
            else:
                self.register_state(f"s{i}", value)
            where = f"{path}.{'p' if leaf.trainable else 's'}{i}"
            oracle.trainable[where] = leaf.trainable and not frozen
            oracle.parameter[where] = leaf.trainable
        if spec.param_subtree is not None:
            tree = {f"w{i}": _array(rng, leaf) for i, leaf in enumerate(spec.param_subtree)}
            self.register_parameter_subtree("ptree", [tree])
            for name in tree:
                oracle.trainable[f"{path}.ptree[0]['{name}']"] = not frozen
                oracle.parameter[f"{path}.ptree[0]['{name}']"] = True
        if spec.state_subtree is not None:
            tree = tuple(_array(rng, leaf) for leaf in spec.state_subtree)
            self.register_state_subtree("stree", tree)
            for i in range(len(tree)):
                oracle.trainable[f"{path}.stree[{i}]"] = False
                oracle.parameter[f"{path}.stree[{i}]"] = False
        for i, child in enumerate(spec.children):
            setattr(self, f"child{i}", build(child, rng, oracle, f"{path}.child{i}", frozen))
        if spec.in_list:
            self.items = [
                None if c is None else build(c, rng, oracle, f"{path}.items[{i}]", frozen)
                for i, c in enumerate(spec.in_list)
            ]
        if spec.in_dict:
            self.table = {
                k: build(c, rng, oracle, f"{path}.table['{k}']", frozen) for k, c in spec.in_dict
            }


class Pair(Node):
    """A second class with the same registry: the class is part of the treedef."""

    def __init__(self, spec, rng, oracle, path):
        self.label = f"pair{spec.tag}"  # a static attribute set before super().__init__
        super().__init__(spec, rng, oracle, path)


def build(spec: NodeSpec, rng, oracle: Oracle, path: str = "", frozen_above: bool = False):
    frozen = spec.frozen or frozen_above
    # the leaves below are recorded as frozen when this node or one above is frozen
    spec = NodeSpec(**{**spec.__dict__, "frozen": frozen})
    module = (Pair if spec.kind == "pair" else Node)(spec, rng, oracle, path)
    if path:
        oracle.modules.append(path)
    if frozen and not frozen_above:
        module = module.freeze()
        oracle.has_frozen = True
    return module


def make(spec: NodeSpec, seed: int) -> tuple[Node, Oracle]:
    oracle = Oracle()
    return build(spec, np.random.default_rng(seed), oracle), oracle


# --- helpers -----------------------------------------------------------------------------------


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _bits(x) -> tuple:
    x = np.asarray(x)
    return (x.dtype.name, x.shape, x.tobytes())


def _zeros(x) -> jax.Array:
    return jax.device_put(np.zeros(x.shape, x.dtype))  # no compilation, unlike jnp.zeros_like


def assert_bit_identical(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert list(map(_bits, jax.tree_util.tree_leaves(a))) == list(
        map(_bits, jax.tree_util.tree_leaves(b))
    )


def assert_same_leaves(a, b) -> None:
    """Same treedef and the very same leaf objects."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb) and all(x is y for x, y in zip(la, lb))


# --- properties --------------------------------------------------------------------------------


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1))
def test_flatten_unflatten_is_the_identity(spec, seed):
    model, oracle = make(spec, seed)
    assert sorted(_paths(model)) == sorted(oracle.trainable)
    leaves, treedef = jax.tree_util.tree_flatten(model)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is type(model)
    assert_same_leaves(rebuilt, model)
    assert _paths(rebuilt) == _paths(model)
    assert repr(rebuilt) == repr(model)  # static attributes, kinds and containers restored
    copied = model.copy()  # its own arrays: equal values, new buffers (a tie is kept as one)
    assert jax.tree_util.tree_structure(copied) == treedef
    for a, b in zip(jax.tree_util.tree_leaves(copied), jax.tree_util.tree_leaves(model)):
        assert a is not b
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree_util.tree_structure(jax.tree_util.tree_map(lambda x: x, model)) == treedef


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1))
def test_update_with_own_parameters_is_the_identity(spec, seed):
    model, oracle = make(spec, seed)
    assert_same_leaves(model.update(model.parameters()), model)
    assert_same_leaves(model.update(model.states()), model)
    assert_same_leaves(model.update(model.parameters(), model.states()), model)
    # and update really replaces exactly the parameters
    zeros = jax.tree_util.tree_map(_zeros, model.parameters())
    updated = model.update(zeros)
    for (path, new), old in zip(
        jax.tree_util.tree_leaves_with_path(updated), jax.tree_util.tree_leaves(model)
    ):
        if oracle.trainable[jax.tree_util.keystr(path)]:
            assert _bits(new) == _bits(np.zeros(old.shape, old.dtype))
        else:
            assert new is old


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_two_builds_share_a_treedef_and_update_takes_the_other_parameters(spec, seed, other):
    model, oracle = make(spec, seed)
    twin, _ = make(spec, other)
    assert jax.tree_util.tree_structure(twin) == jax.tree_util.tree_structure(model)
    mixed = model.update(twin.parameters())
    for (path, leaf), mine, theirs in zip(
        jax.tree_util.tree_leaves_with_path(mixed),
        jax.tree_util.tree_leaves(model),
        jax.tree_util.tree_leaves(twin),
    ):
        assert leaf is (theirs if oracle.trainable[jax.tree_util.keystr(path)] else mine)
    before = jax.tree_util.tree_leaves(model)
    copy = model.copy()
    names = [n for n in vars(copy) if n[:1] in "ps" and n[1:].isdigit()]  # p0, s1, ...
    for name in names:
        setattr(copy, name, twin.__dict__[name])  # mutate the copy in place
    assert all(x is y for x, y in zip(jax.tree_util.tree_leaves(model), before))
    assert all(getattr(copy, n) is twin.__dict__[n] for n in names)


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1))
def test_parameters_and_states_partition_the_leaves(spec, seed):
    model, oracle = make(spec, seed)
    params, states = model.parameters(), model.states()
    structure = jax.tree_util.tree_structure(model)
    is_none = lambda x: x is None
    p_leaves = jax.tree_util.tree_leaves(params, is_leaf=is_none)
    s_leaves = jax.tree_util.tree_leaves(states, is_leaf=is_none)
    leaves = jax.tree_util.tree_leaves_with_path(model, is_leaf=is_none)  # None kept in place
    assert len(p_leaves) == len(s_leaves) == len(leaves)
    for (path, leaf), p, s in zip(leaves, p_leaves, s_leaves):
        if leaf is None:  # a None entry in a list of modules
            assert p is None and s is None
            continue
        trainable = oracle.trainable[jax.tree_util.keystr(path)]
        assert (p is leaf and s is None) if trainable else (p is None and s is leaf)
    assert sorted(_paths(params)) == sorted(k for k, t in oracle.trainable.items() if t)
    assert sorted(_paths(states)) == sorted(k for k, t in oracle.trainable.items() if not t)
    assert jax.tree_util.tree_structure(model.update(params, states)) == structure


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1))
def test_freeze_then_unfreeze(spec, seed):
    model, oracle = make(spec, seed)
    frozen = model.freeze()
    assert jax.tree_util.tree_leaves(frozen.parameters()) == []
    assert_same_leaves(frozen.states(), model.freeze().states())
    assert _paths(frozen.states()) == _paths(model)
    thawed = frozen.unfreeze()
    assert_same_leaves(thawed, model.unfreeze())
    if not oracle.has_frozen:
        assert_same_leaves(thawed, model)
        assert repr(thawed) == repr(model)
    parameters = sorted(p for p, is_parameter in oracle.parameter.items() if is_parameter)
    assert sorted(_paths(thawed.parameters())) == parameters
    assert sorted(_paths(model.unfreeze().parameters())) == parameters


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_save_then_load_is_the_identity(tmp_path_factory, spec, seed, other_seed):
    model, _ = make(spec, seed)
    like, _ = make(spec, other_seed)
    directory = tmp_path_factory.mktemp("ckpt")
    path = os.path.join(directory, "model.npz")
    pax.save(path, model)
    restored = pax.load(path, like)
    assert_bit_identical(restored, model)
    assert repr(jax.tree_util.tree_structure(restored)) == repr(jax.tree_util.tree_structure(model))
    try:
        pax.save(path, model.parameters())
    except pax.CheckpointError as e:  # a view whose states are None: refused, naming the fix
        assert _paths(model.states()) and "pax.save(path, model)" in str(e)
        return
    if not _paths(model.parameters()) and _paths(like):  # no common key: refused (strict=False too)
        with pytest.raises(pax.CheckpointMismatchError, match="no key path of the checkpoint"):
            pax.load(path, like, strict=False)
        return
    merged, report = pax.load(path, like, strict=False)
    assert_bit_identical(merged.parameters(), model.parameters())
    assert_bit_identical(merged.states(), like.states())
    assert sorted(report.missing) == sorted(_paths(model.states()))
    assert report.unexpected == ()


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1))
def test_train_eval_and_summary(spec, seed):
    model, oracle = make(spec, seed)
    evaluated = model.eval()
    flags = [m.training for _, m in _submodules(evaluated)] + [evaluated.training]
    assert flags == [False] * (len(oracle.modules) + 1)
    assert_same_leaves(evaluated.train(), model)
    assert model.training and all(m.training for _, m in _submodules(model))
    rows = model.summary().splitlines()[1:-1]  # one row per module, between header and total
    assert len(rows) == len(oracle.modules) + 1


@settings(SETTINGS, max_examples=max(3, EXAMPLES // 5))
@given(node_specs, st.integers(0, 2**32 - 1))
def test_a_jit_round_trip_keeps_everything(spec, seed):
    model, _ = make(spec, seed)
    out = jax.jit(lambda m: m)(model)
    assert_bit_identical(out, model)
    assert repr(out) == repr(model)


@SETTINGS
@given(node_specs, st.integers(0, 2**32 - 1), st.data())
def test_find_shared_reports_exactly_the_shared_submodule(spec, seed, data):
    model, oracle = make(spec, seed)
    assert pax.find_shared(model) == []
    if not oracle.modules:
        return
    path = data.draw(st.sampled_from(oracle.modules))
    sub = next(m for p, m in _submodules(model) if p == path)
    assert pax.find_shared((model, [sub])) == [(f"[0]{path}", "[1][0]")]


def _submodules(tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, pax.Module) and x is not tree
    )[0]:
        if isinstance(leaf, pax.Module):
            where = jax.tree_util.keystr(path)
            yield where, leaf
            for sub_path, sub in _submodules(leaf):
                yield where + sub_path, sub


def test_the_generator_covers_what_it_claims():
    """A guard against a strategy that silently stopped generating the hard cases."""
    seen = dict.fromkeys(["frozen", "list", "none", "dict", "nested", "empty"], False)
    dtypes = set()

    @settings(max_examples=60, deadline=None, database=None)
    @given(node_specs)
    def collect(spec):
        def walk(s, depth):
            seen["frozen"] |= s.frozen
            seen["list"] |= any(c is not None for c in s.in_list)
            seen["none"] |= None in s.in_list
            seen["dict"] |= bool(s.in_dict)
            seen["nested"] |= depth >= 2
            for leaf in s.leaves:
                dtypes.add(leaf.dtype)
                seen["empty"] |= 0 in leaf.shape
            for c in (*s.children, *s.in_list, *(c for _, c in s.in_dict)):
                if c is not None:
                    walk(c, depth + 1)

        walk(spec, 0)

    collect()
    assert all(seen.values()), seen
    assert {"bfloat16", "int4", "bool"} <= dtypes


# --- containers filled after assignment: every reader sees flatten's classification ------------


class Cell(pax.Module):
    """One parameter and one state."""

    def __init__(self, n: int):
        super().__init__()
        self.register_parameter("w", jnp.zeros((n,)))
        self.register_state("s", jnp.zeros((n + 1,), jnp.int32))


# a fill plan: ("direct", n) a submodule, ("list", plans) a list assigned empty then appended to,
# ("dict", plans) a dict assigned empty then filled, ("nested", plans) a Filler submodule
fill_plans = st.recursive(
    st.tuples(st.just("direct"), st.integers(0, 2)),
    lambda inner: st.tuples(
        st.sampled_from(["list", "dict", "nested"]), st.lists(inner, min_size=0, max_size=3)
    ),
    max_leaves=6,
)


class Filler(pax.Module):
    def __init__(self, plans):
        super().__init__()
        for i, plan in enumerate(plans):
            setattr(self, f"a{i}", _realize(plan))


def _realize(plan):
    what, arg = plan
    if what == "direct":
        return Cell(arg)
    if what == "nested":
        return Filler(arg)
    if what == "list":
        items: list = []
        holder = _Holder(items)
        for sub in arg:  # appended after the (empty) list is stored: not seen by __setattr__
            items.append(_realize(sub) if sub[0] != "list" else [_realize(sub)])
        return holder
    table: dict = {}
    holder = _Holder(table)
    for j, sub in enumerate(arg):
        table[f"k{j}"] = _realize(sub)
    return holder


class _Holder(pax.Module):
    def __init__(self, container):
        super().__init__()
        self.items = container  # empty (static) when assigned, filled afterwards by the caller


def _paths_of(tree) -> set[str]:
    return set(_paths(tree))


@SETTINGS
@given(st.lists(fill_plans, max_size=3))
def test_containers_filled_after_assignment_are_classified_like_flatten(plans):
    before = Filler(plans)  # read through the views first
    params, states = _paths_of(before.parameters()), _paths_of(before.states())
    after = Filler(plans)
    everything = _paths_of(after)  # flatten first, then read
    assert params | states == everything
    assert not params & states
    assert params == _paths_of(after.parameters())
    assert states == _paths_of(after.states())
    assert all(p.endswith(".w") for p in params) and all(p.endswith(".s") for p in states)
    assert len(before.submodules()) == len(after.submodules())
    assert dict(before.registry) == dict(after.registry)
