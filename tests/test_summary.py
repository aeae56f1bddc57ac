"""summary() with and without example inputs, bounded repr, Sequential slicing, Flatten and
Reshape, and the treescope handler."""

from __future__ import annotations

import sys
import threading

import jax
import jax.numpy as jnp
import pytest

import pax
from pax._src.core import recording


class Counter(pax.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_state("count", jnp.array(0))
        self.register_parameter("bias", jnp.zeros(3))

    def __call__(self, x: jax.Array, *, scale: float = 1.0, double: bool = False) -> jax.Array:
        self.count = self.count + 1
        y = x * scale + self.bias
        return y * 2 if double else y  # a Python bool: only works if it stays static


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_summary_without_inputs_counts_leaves_and_bytes():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), Counter().freeze(), pax.nn.BatchNorm1D(3))
    rows = table(net.summary())
    assert rows[0] == ["module", "type", "params", "states", "leaves", "t/f/s", "bytes"]
    assert rows[2] == [".modules[0]", "Linear", "9", "0", "2/0/0", "36", "B"]
    assert rows[3] == [".modules[1]", "Counter", "0", "4", "0/1/1", "16", "B"]
    bn = rows[4]
    assert bn[:2] == [".modules[2]", "BatchNorm1D"] and bn[4] == "2/0/6"
    assert rows[1][:5] == ["Sequential", "Sequential", "15", "18", "4/1/7"]
    assert rows[-1] == ["total", "15", "18", "4/1/7", "132", "B"]


def test_summary_totals_count_a_shared_array_once_and_warn():
    block = pax.nn.Linear(2, 2)
    lines = pax.nn.Sequential(block, block).summary().splitlines()
    assert table(lines[1])[0][2:4] == ["12", "0"]  # the row counts what it holds
    assert lines[-2].split()[:3] == ["total", "6", "0"]  # each array once
    assert lines[-1].startswith("warning: .modules[1] is the same object as .modules[0]")


def test_summary_with_inputs_shows_every_call():
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), jax.nn.relu, pax.nn.Linear(3, 1))
    rows = table(net.summary(jnp.ones((4, 2))))
    assert rows[0][:5] == ["module", "type", "input", "output", "arrays"]
    assert rows[1][:4] == ["Sequential", "Sequential", "f32[4,2]", "f32[4,1]"]
    assert rows[2][:6] == [".modules[0]", "Linear", "f32[4,2]", "f32[4,3]"] + [
        "weight=f32[2,3]",
        "bias=f32[3]",
    ]
    assert rows[3][:4] == [".modules[1]", "Lambda", "f32[4,3]", "f32[4,3]"]
    assert rows[-1][:2] == ["total", "13"]


def test_summary_with_inputs_allocates_nothing_and_changes_nothing():
    bn = pax.nn.BatchNorm1D(3)
    before = bn.mean_ema.counter
    huge = jax.ShapeDtypeStruct((1_000_000, 100_000, 3), jnp.float32)  # 1.2 TB if allocated
    rows = table(bn.summary(huge))
    assert rows[1][2:4] == ["f32[1000000,100000,3]", "f32[1000000,100000,3]"]
    assert bn.mean_ema.counter is before  # the statistics did not move
    assert bn(jnp.ones((2, 3))).shape == (2, 3)  # nothing left pending by the abstract pass
    assert recording.ACTIVE == []


def test_summary_passes_keywords_and_keeps_non_array_inputs_static():
    rows = table(Counter().summary(jnp.ones(3), scale=2.0, double=True))
    assert rows[1][2:6] == ["f32[3],", "bool,", "float", "f32[3]"]  # kwargs in key order


def test_summary_shows_how_often_a_module_is_called():
    block = pax.nn.Linear(2, 2)

    class Twice(pax.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = block

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.block(self.block(x))

    rows = table(Twice().summary(jnp.ones((1, 2))))
    assert rows[2][:5] == [".block", "Linear", "f32[1,2]", "f32[1,2]", "(x2)"]

    class Unused(pax.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = pax.nn.Linear(2, 2), pax.nn.Linear(2, 2)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.used(x)

    rows = table(Unused().summary(jnp.ones((1, 2))))
    assert rows[3][:4] == [".spare", "Linear", "-", "-"]


def test_summary_cells_of_many_arrays_are_bounded():
    class Many(pax.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_parameter_subtree("w", [jnp.zeros(i + 1) for i in range(40)])

        def __call__(self, x: jax.Array) -> dict:
            return {f"out_{i}": x * w.sum() for i, w in enumerate(self.w)}

    line = Many().summary(jnp.ones(2)).splitlines()[1]
    assert "f32[2], f32[2]... (40 values)" in line and "... (40 arrays)" in line
    assert len(line) < 200


def test_summary_of_a_haiku_module_with_inputs():
    hk = pytest.importorskip("haiku")
    fc = pax.from_haiku(hk.Linear)(3).hk_init(jnp.ones((1, 2)))
    rows = table(fc.summary(jax.ShapeDtypeStruct((8, 2), jnp.float32)))
    assert rows[1][:4] == ["HaikuModule", "HaikuModule", "f32[8,2]", "f32[8,3]"]
    assert rows[-1][:4] == ["total", "9", "0", "2/0/0"]


def test_summary_with_wrong_inputs_says_what_failed():
    net = pax.nn.Linear(2, 3)
    with pytest.raises(ValueError) as info:
        net.summary(jnp.ones((1, 5)))
    if sys.version_info >= (3, 11):
        assert "Linear.summary(*example_inputs): calling the model on (f32[1,5])" in str(
            info.value.__notes__
        )
    assert recording.ACTIVE == []


def test_recording_is_per_thread_and_off_afterwards():
    net = pax.nn.Linear(2, 2)
    seen: list = []
    with recording.recording() as recorder:
        thread = threading.Thread(target=lambda: seen.append(net(jnp.ones((1, 2)))))
        thread.start()
        thread.join()
        assert recorder.calls == {}  # another thread's call is not recorded
        net(jnp.ones((1, 2)))
    assert recorder.calls[id(net)] == [("f32[1,2]", "f32[1,2]")]
    assert recording.ACTIVE == [] and len(seen) == 1


# --- repr ------------------------------------------------------------------------------------


def test_repr_of_a_huge_sequential_is_bounded():
    net = pax.nn.Sequential(*[pax.nn.Linear(2, 2) for _ in range(200)])
    text = repr(net)
    assert len(text) < 1500
    assert "    ... and 192 more," in text
    assert text.count("Linear(") == 8


def test_repr_of_huge_parameter_trees_and_many_attributes_is_bounded():
    m = pax.Module()
    m.register_parameter_subtree("params", {f"layer_{i}": jnp.zeros(3) for i in range(500)})
    for i in range(60):
        setattr(m, f"option_{i}", i)
    text = repr(m)
    assert len(text) < 3000
    assert "... and 29 more attributes" in text  # 60 static + 1 child, 32 shown
    m = pax.Module()
    m.register_parameter_subtree("params", {f"layer_{i}": jnp.zeros(3) for i in range(500)})
    text = repr(m)
    assert "layer_107: f32... (500 leaves),\n)" in text and len(text) < 300


# --- Sequential slicing, Flatten, Reshape ------------------------------------------------------


def test_sequential_slices_are_sequentials_of_the_same_layers():
    net = pax.nn.Sequential(pax.nn.Linear(4, 8), jax.nn.relu, pax.nn.Linear(8, 2)).eval()
    head = net[:2]
    assert type(head) is pax.nn.Sequential and len(head) == 2
    assert head.modules[0] is net.modules[0] and not head.training
    assert head(jnp.ones((1, 4))).shape == (1, 8)
    assert net[-1] is net.modules[2] and type(net[1]).__name__ == "Lambda"
    assert len(net[::2]) == 2 and len(net[5:]) == 0


def test_sequential_index_errors_name_the_fix():
    net = pax.nn.Sequential(pax.nn.Linear(1, 1))
    with pytest.raises(TypeError, match=r"Sequential: index must be an int or a slice, got 'a'"):
        net["a"]
    with pytest.raises(IndexError, match=r"Sequential: index 3 is out of range for 1 layers"):
        net[3]


def test_flatten_and_reshape():
    x = jnp.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    assert pax.nn.Flatten()(x).shape == (2, 12)
    assert pax.nn.Flatten(preserve_dims=0)(x).shape == (24,)
    assert pax.nn.Flatten(preserve_dims=3)(x).shape == (2, 3, 4)
    assert pax.nn.Reshape((4, 3))(x).shape == (2, 4, 3)
    assert pax.nn.Reshape(-1, preserve_dims=2)(x).shape == (2, 3, 4)
    assert pax.nn.Reshape((2, -1))(x).shape == (2, 2, 6)


def test_flatten_keeps_equal_builds_equal_pytrees_unlike_a_lambda():
    def build(flatten):
        return pax.nn.Sequential(pax.nn.Linear(4, 4, rng_key=jax.random.PRNGKey(0)), flatten)

    structure = jax.tree_util.tree_structure
    assert structure(build(pax.nn.Flatten())) == structure(build(pax.nn.Flatten()))
    assert structure(build(lambda x: x)) != structure(build(lambda x: x))


def test_reshape_errors():
    with pytest.raises(ValueError, match=r"Reshape: output_shape must hold positive sizes"):
        pax.nn.Reshape((-1, -1))
    with pytest.raises(ValueError, match=r"Reshape: output_shape must be an int or"):
        pax.nn.Reshape("7x7")
    with pytest.raises(ValueError, match=r"Flatten: preserve_dims must be an int >= 0, got -1"):
        pax.nn.Flatten(-1)
    with pytest.raises(ValueError, match=r"Reshape: cannot reshape the input f32\[2,5\]"):
        pax.nn.Reshape((3, -1))(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"Reshape: the input f32\[2\] has fewer than"):
        pax.nn.Reshape(1, preserve_dims=2)(jnp.ones(2))


# --- treescope ---------------------------------------------------------------------------------


def test_treescope_renders_modules_as_trees():
    treescope = pytest.importorskip("treescope")
    net = pax.nn.Sequential(pax.nn.Linear(2, 3), jax.nn.relu, Counter()).eval()
    text = treescope.render_to_text(net)
    assert text.startswith("Sequential(\n  training=False,\n  modules=[\n    Linear(\n")
    assert "count=" in text and "weight=" in text and "fn=jax.nn.relu" in text
    assert treescope.render_to_html(net).startswith("<script>")  # the notebook rendering


def _stacked_net():
    block = lambda key: pax.nn.Sequential(pax.nn.Linear(6, 6, rng_key=key), jax.nn.tanh)
    stack = pax.nn.Stack(block, 4, remat=True, rng_key=jax.random.PRNGKey(0))
    return pax.nn.Sequential(pax.nn.Linear(2, 6), stack, pax.nn.Linear(6, 1))


def test_summary_shows_one_layer_of_a_stack_with_its_shapes_and_per_layer_counts():
    rows = table(_stacked_net().summary(jnp.ones((5, 2))))
    assert rows[3] == [
        ".modules[1]",
        "Stack",
        "f32[5,6]",
        "f32[5,6]",
        "168",
        "0",
        "2/0/0",
        "672",
        "B",
    ]
    # one layer's call (recorded once in the scan body), its arrays and counts: 4 layers x 42
    assert rows[4] == [".modules[1].stacked", "Sequential", "x4", "f32[5,6]", "f32[5,6]"] + [
        "4x42",
        "0",
        "2/0/0",
        "672",
        "B",
    ]
    assert rows[5] == [".modules[1].stacked.modules[0]", "Linear", "x4", "f32[5,6]"] + [
        "f32[5,6]",
        "weight=f32[6,6]",
        "bias=f32[6]",
        "4x42",
        "0",
        "2/0/0",
        "672",
        "B",
    ]
    assert rows[6] == [".modules[1].stacked.modules[1]", "Lambda", "x4", "f32[5,6]"] + [
        "f32[5,6]",
        "0",
        "0",
        "0/0/0",
        "0",
        "B",
    ]
    assert rows[-1][:3] == ["total", "193", "0"]
    assert recording.ACTIVE == []


def test_summary_of_a_stack_without_inputs_and_of_a_plain_model_has_no_layer_marks():
    rows = table(_stacked_net().summary())
    assert rows[4] == [".modules[1].stacked", "Sequential", "x4", "4x42", "0", "2/0/0", "672", "B"]
    plain = table(pax.nn.Sequential(pax.nn.Linear(6, 6), jax.nn.tanh).summary(jnp.ones((5, 6))))
    assert plain[2][:2] == [".modules[0]", "Linear"] and "x4" not in plain[2]
