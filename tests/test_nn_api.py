"""The public faces of pax.nn and pax.initializers: every name resolves and shows an example."""

import inspect

import pytest

import pax

PUBLIC = [("nn", name) for name in pax.nn.__all__] + [
    ("initializers", name) for name in pax.initializers.__all__ if name != "Initializer"
]


@pytest.mark.parametrize("where, name", PUBLIC, ids=[f"{w}.{n}" for w, n in PUBLIC])
def test_public_name_has_a_runnable_example(where, name):
    obj = getattr(getattr(pax, where), name)
    doc = inspect.getdoc(obj) or ""
    assert "Example:" in doc and ">>> " in doc, f"pax.{where}.{name} has no doctest example"
    assert obj.__module__.startswith("pax._src.nn."), obj.__module__


def test_all_lists_every_export_once():
    for module in (pax.nn, pax.initializers):
        exported = {n for n in dir(module) if not n.startswith("_")}
        assert set(module.__all__) == exported - {"annotations"}
        assert len(module.__all__) == len(set(module.__all__))


def test_layer_constructors_take_the_rng_key_keyword_only():
    checked = []
    for name in pax.nn.__all__:
        obj = getattr(pax.nn, name)
        if isinstance(obj, type) and "rng_key" in inspect.signature(obj).parameters:
            kind = inspect.signature(obj).parameters["rng_key"].kind
            assert kind is inspect.Parameter.KEYWORD_ONLY, name
            checked.append(name)
    assert len(checked) >= 18  # every layer with random initial values
