"""pax.state_dict / pax.load_state_dict: flat name -> array import and export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax

# A PyTorch nn.Sequential(Linear(4, 8), ReLU(), Linear(8, 2), BatchNorm1d(2)) state_dict, as
# np.savez would hold it: Linear weights are (out, in).
RNG = np.random.default_rng(0)
TORCH = {
    "0.weight": RNG.standard_normal((8, 4)).astype(np.float32),
    "0.bias": RNG.standard_normal(8).astype(np.float32),
    "2.weight": RNG.standard_normal((2, 8)).astype(np.float32),
    "2.bias": RNG.standard_normal(2).astype(np.float32),
}
RULES = [
    (r"^(\d+)\.weight$", r".modules[\1].weight"),
    (r"^(\d+)\.bias$", r".modules[\1].bias"),
]


def transpose_linear(key, a):
    return a.T if key.endswith(".weight") else a


def net():
    return pax.nn.Sequential(pax.nn.Linear(4, 8), jax.nn.relu, pax.nn.Linear(8, 2))


def torch_forward(x):
    h = np.maximum(x @ TORCH["0.weight"].T + TORCH["0.bias"], 0)
    return h @ TORCH["2.weight"].T + TORCH["2.bias"]


def test_pytorch_layout_loads_and_matches_numpy_reference():
    model = pax.load_state_dict(net(), TORCH, rename=RULES, transform=transpose_linear)
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(model(jnp.asarray(x)), torch_forward(x), rtol=1e-5, atol=1e-6)
    # a rename function works as well as rules
    by_fn = pax.load_state_dict(
        net(),
        TORCH,
        rename=lambda n: ".modules[{}].{}".format(*n.split(".")),
        transform=transpose_linear,
    )
    for a, b in zip(jax.tree_util.tree_leaves(by_fn), jax.tree_util.tree_leaves(model)):
        np.testing.assert_array_equal(a, b)


def test_state_dict_round_trips_through_npz(tmp_path):
    model = pax.nn.Sequential(pax.nn.Linear(3, 4), pax.nn.BatchNorm1D(4), pax.nn.Dropout(0.5))
    sd = pax.state_dict(model)
    assert list(sd) == [
        ".modules[0].weight",
        ".modules[0].bias",
        ".modules[1].scale",
        ".modules[1].offset",
        ".modules[1].mean_ema.counter",
        ".modules[1].mean_ema.hidden",
        ".modules[1].mean_ema.average",
        ".modules[1].var_ema.counter",
        ".modules[1].var_ema.hidden",
        ".modules[1].var_ema.average",
        ".modules[2].rng_key",
    ]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    np.savez(tmp_path / "w.npz", **sd)
    fresh = pax.nn.Sequential(pax.nn.Linear(3, 4), pax.nn.BatchNorm1D(4), pax.nn.Dropout(0.5))
    with np.load(tmp_path / "w.npz") as data:
        loaded = pax.load_state_dict(fresh, data)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(model)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(model)


def test_one_error_lists_every_problem_and_changes_nothing():
    model = net()
    before = [np.asarray(a) for a in jax.tree_util.tree_leaves(model)]
    bad = {**TORCH, "3.weight": np.ones(1, np.float32)}
    del bad["2.bias"]
    pattern = (
        r"(?s)the mapping does not match the Sequential\. Nothing was loaded\.\n"
        r"1 missing from the mapping:\n  \.modules\[2\]\.bias\n"
        r"1 unexpected in the mapping:\n  3\.weight \(renamed '\.modules\[3\]\.weight'\)\n"
        r"2 with another shape or dtype:\n  \.modules\[0\]\.weight \(from '0\.weight'\): given "
        r"float32\[8, 4\], model float32\[4, 8\].*"
        r"Fix: map the names.*strict=False"
    )
    with pytest.raises(pax.CheckpointMismatchError, match=pattern) as info:
        pax.load_state_dict(model, bad, rename=RULES)
    assert info.value.missing == (".modules[2].bias",)
    assert info.value.unexpected == ("3.weight",)
    assert info.value.mismatched == (".modules[0].weight", ".modules[2].weight")
    after = [np.asarray(a) for a in jax.tree_util.tree_leaves(model)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"given float64\[8\], model float32\[8\]"):
        pax.load_state_dict(model, {".modules[0].bias": np.zeros(8)}, strict=False)
    with pytest.raises(ValueError, match=r"'a' and 'b' are both renamed to '\.modules\[0\]\.bias'"):
        pax.load_state_dict(
            model, {"a": np.zeros(8), "b": np.zeros(8)}, rename=lambda n: ".modules[0].bias"
        )
    with pytest.raises(TypeError, match=r"rename must be a function.*got the rule 'x'"):
        pax.load_state_dict(model, TORCH, rename=["x"])
    with pytest.raises(TypeError, match=r"mapping must be a mapping"):
        pax.load_state_dict(model, [1, 2])


def test_non_strict_returns_a_report():
    model = net()
    partial = {"0.weight": TORCH["0.weight"], "0.bias": TORCH["0.bias"], "head.w": np.ones(2)}
    loaded, report = pax.load_state_dict(
        model, partial, rename=RULES, transform=transpose_linear, strict=False
    )
    assert report == pax.LoadReport(
        missing=(".modules[2].weight", ".modules[2].bias"), unexpected=("head.w",)
    )
    np.testing.assert_array_equal(loaded.modules[0].weight, TORCH["0.weight"].T)
    np.testing.assert_array_equal(loaded.modules[2].weight, model.modules[2].weight)
    with pytest.raises(
        pax.CheckpointMismatchError,
        match=r"no key path of the mapping is in the Sequential(?s:.*)1 unexpected in the "
        r"mapping:\n  head\.w\n",
    ):
        pax.load_state_dict(model, {"head.w": np.ones(2)}, strict=False)  # nothing loads


def test_state_dict_refuses_tracers():
    with pytest.raises(TypeError, match=r"\.weight is .*not an array.*outside jax\.jit"):
        jax.jit(lambda m: pax.state_dict(m))(pax.nn.Linear(2, 2))
