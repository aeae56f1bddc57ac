"""The one name-matching routine of `pax.load`, `pax.load_state_dict` and `load_haiku_params`."""

from __future__ import annotations

import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pax
from pax._src.checkpoint import check, state_dict
from pax._src.checkpoint.matching import LoadReport, match_names, settle
from pax._src.haiku import porting

# --- the routine ---------------------------------------------------------------------------------


def test_match_names_pairs_and_reports_in_order():
    matched = match_names([".a", ".b", ".c"], [".c", ".x", ".a"], fn="f")
    assert matched.pairs == {".a": ".a", ".c": ".c"}
    assert matched.missing == (".b",) and matched.unexpected == (".x",)
    assert list(matched.pairs) == [".a", ".c"]  # expected order


@pytest.mark.parametrize(
    "rename",
    [
        [(r"^(\d+)\.w$", r".layers[\1].w")],  # regex rules
        lambda name: ".layers[0].w" if name == "0.w" else name,  # a function
        {"0.w": ".layers[0].w"},  # a mapping; other names kept
    ],
)
def test_every_form_of_rename(rename):
    matched = match_names([".layers[0].w", ".b"], ["0.w", ".b", "zz"], rename=rename, fn="f")
    assert matched.pairs == {".layers[0].w": "0.w", ".b": ".b"}
    assert matched.unexpected == ("zz",) and matched.missing == ()


def test_a_rename_may_drop_names_and_notes_say_how():
    matched = match_names(
        [".w"], ["a", "b"], rename={"a": None, "b": ".v"}, dropped="outside x", fn="f"
    )
    assert matched.unexpected == ("a", "b")
    assert matched.notes == {"a": "outside x", "b": "renamed '.v'"}


def test_bad_renames_are_refused():
    with pytest.raises(ValueError, match=r"f: the names 'a' and 'b' are both renamed to '\.w'"):
        match_names([".w"], ["a", "b"], rename=lambda n: ".w", fn="f")
    with pytest.raises(TypeError, match=r"f: rename\('a'\) returned 3 of type int.*Fix: e\.g\."):
        match_names([".w"], ["a"], rename=lambda n: 3, fn="f")
    with pytest.raises(
        TypeError, match=r"f: rename maps 'a' to 3 of type int.*Fix: e\.g\. rename=\{"
    ):
        match_names([".w"], ["a"], rename={"a": 3}, fn="f")
    with pytest.raises(TypeError, match=r"f: rename must be .*got the str 'x'.*Fix: e\.g\."):
        match_names([".w"], ["a"], rename="x", fn="f")  # type: ignore[arg-type]
    # the correct programs: a rename that drops with None, and distinct targets
    match_names([".w", ".v"], ["a", "b", "c"], rename={"a": ".w", "b": ".v", "c": None}, fn="f")


def _settle(matched, mismatched=None, strict=True):
    return settle(
        matched,
        mismatched or {},
        strict=strict,
        fn="f",
        source="the source",
        target="the target",
        fixes=["do it right"],
        non_strict="f(strict=False)",
    )


def test_strict_raises_listing_missing_and_unexpected():
    matched = match_names([".a", ".b"], [".a", ".x"], rename={".x": ".y"}, fn="f")
    with pytest.raises(pax.CheckpointMismatchError) as info:
        _settle(matched)
    assert str(info.value) == (
        "f: the source does not match the target. Nothing was loaded.\n"
        "1 missing from the source:\n  .b\n"
        "1 unexpected in the source:\n  .x (renamed '.y')\n"
        "Fix: do it right; or to load only what matches, call f(strict=False), which returns "
        "the missing and unexpected names too."
    )
    assert isinstance(info.value, ValueError)
    assert (info.value.missing, info.value.unexpected) == ((".b",), (".x",))
    assert _settle(match_names([".a"], [".a"], fn="f")) == LoadReport((), ())  # no false alarm


def test_non_strict_returns_a_report_but_refuses_mismatches_and_nothing():
    matched = match_names([".a", ".b"], [".a", ".x"], fn="f")
    assert _settle(matched, strict=False) == LoadReport(missing=(".b",), unexpected=(".x",))
    with pytest.raises(pax.CheckpointMismatchError, match=r"1 with another shape or dtype:\n  a!"):
        _settle(matched, {".a": "a!"}, strict=False)
    with pytest.raises(
        pax.CheckpointMismatchError, match=r"no key path of the source is in the target"
    ) as info:
        _settle(match_names([".a"], [".x"], fn="f"), strict=False)
    assert "strict=False" not in str(info.value)  # it would fail too: not offered


def test_long_listings_are_capped_and_point_at_the_attributes():
    matched = match_names([f".k{i}" for i in range(25)], [], fn="f")
    with pytest.raises(pax.CheckpointMismatchError, match=r"\.\.\. and 5 more") as info:
        _settle(matched)
    assert len(info.value.missing) == 25 and "error.missing" in str(info.value)


# --- the three loaders share it ------------------------------------------------------------------


def test_the_three_loaders_use_the_one_routine():
    assert check.match_names is state_dict.match_names is porting.match_names
    assert check.settle is state_dict.settle is porting.settle


def _structure(message: str) -> list[str]:
    """The message's lines, with the loader-specific names and values taken out."""
    shape = []
    for line in message.splitlines():
        if line.startswith("  "):
            shape.append("  <entry>")
        elif line.startswith("Fix:"):
            shape.append("Fix: ...; or to load only what matches, call ..." * ("strict=" in line))
        else:
            shape.append(re.sub(r"^\S+: .* (does|do) not match .*", "<head>", line))
            shape[-1] = re.sub(r"(missing from|unexpected in) .*:$", r"\1 <source>:", shape[-1])
    return shape


def test_one_mismatch_is_worded_alike_by_every_loader(tmp_path):
    # one missing entry, one unexpected entry, one entry of another shape, for each loader
    path = tmp_path / "ckpt.npz"
    pax.save(path, {"w": jnp.ones(4), "x": jnp.ones(1)})
    with pytest.raises(pax.CheckpointMismatchError) as by_load:
        pax.load(path, {"w": jnp.ones(3), "b": jnp.ones(2)})
    with pytest.raises(pax.CheckpointMismatchError) as by_state_dict:
        mapping = {".weight": np.ones((2, 4), np.float32), ".extra": np.ones(1)}
        pax.load_state_dict(pax.nn.Linear(2, 3), mapping)
    with pytest.raises(pax.CheckpointMismatchError) as by_haiku:
        params = {"linear": {"w": np.ones((2, 4), np.float32), "extra": np.ones(1)}}
        pax.haiku.load_haiku_params(pax.nn.Linear(2, 3), params)
    errors = [by_load.value, by_state_dict.value, by_haiku.value]
    expected = [
        "<head>",
        "1 missing from <source>:",
        "  <entry>",
        "1 unexpected in <source>:",
        "  <entry>",
        "1 with another shape or dtype:",
        "  <entry>",
        "Fix: ...; or to load only what matches, call ...",
    ]
    for error in errors:
        assert _structure(str(error)) == expected, str(error)
        assert len(error.missing) == len(error.unexpected) == len(error.mismatched) == 1
    assert re.search(r"  \['w'\]: checkpoint float32\[4\], like float32\[3\]", str(errors[0]))
    assert "  .weight (from '.weight'): given float32[2, 4], model float32[2, 3]" in str(errors[1])
    line = "  params['linear']['w'] (at .weight): given float32[2, 4], model float32[2, 3]"
    assert line in str(errors[2])


def test_every_loader_reports_missing_and_unexpected_when_not_strict(tmp_path):
    path = tmp_path / "ckpt.npz"
    pax.save(path, {"w": jnp.ones(3), "x": jnp.ones(1)})
    _, by_load = pax.load(path, {"w": jnp.ones(3), "b": jnp.ones(2)}, strict=False)
    model = pax.nn.Linear(2, 3)
    mapping = {".weight": np.ones((2, 3), np.float32), ".extra": np.ones(1)}
    _, by_state_dict = pax.load_state_dict(model, mapping, strict=False)
    params = {"linear": {"w": np.ones((2, 3), np.float32), "extra": np.ones(1)}}
    _, by_haiku = pax.haiku.load_haiku_params(model, params, strict=False)
    assert (by_load.missing, by_load.unexpected) == (("['b']",), ("['x']",))
    assert (by_state_dict.missing, by_state_dict.unexpected) == ((".bias",), (".extra",))
    assert (by_haiku.missing, by_haiku.unexpected) == (
        ("params['linear']['b']",),
        ("params['linear']['extra']",),
    )
    # a haiku program's own dicts load strictly: no false alarm
    f = hk.transform_with_state(lambda x: hk.Linear(3)(x))
    params, state = f.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
    pax.haiku.load_haiku_params(model, params, state)
