"""The package's architecture, checked from its source: layers, cycles, private keys, sizes."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pax"

# Each layer may import the layers listed for it (and itself). The public faces (`pax`,
# `pax.nn`, ...) may import anything; nothing under `pax._src` may import a public face.
ALLOWED = {
    "base": {"base"},
    "core": {"base", "core"},
    "nn": {"base", "core", "nn"},
    "nets": {"base", "core", "nn", "nets"},
    "optim": {"base", "core", "optim"},
    "checkpoint": {"base", "core", "checkpoint"},
    "training": {"base", "core", "optim", "training"},
    "haiku": {
        "base",
        "core",
        "nn",
        "nets",
        "checkpoint",
        "haiku",
    },  # native twins; one name matcher
    "metrics": {"base", "core", "metrics"},
    "sharding": {"base", "core", "nn", "optim", "sharding"},
    "distributed": {"base", "distributed"},
    "launch": {"base", "distributed", "launch"},
}


def layer_of(module: str) -> str:
    """The layer of a module of the package, from its dotted name."""
    parts = module.split(".")
    if parts[:2] != ["pax", "_src"]:
        return "public"
    if len(parts) == 2:
        return "base"
    name = parts[2]
    if name in ("errors", "describe", "arguments"):
        return "base"
    if name.startswith("checkpoint"):
        return "checkpoint"
    if name in ALLOWED:
        return name
    raise AssertionError(f"{module}: no layer assigned; add it to tests/test_layering.py")


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, known: set[str]) -> list[tuple[str, int]]:
    """Every module imported by `source` (at module level or inside functions), with its line.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module in `known`,
    else ``a.b``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in known else node.module, node.lineno))
    return found


def load_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def violations(sources: dict[str, str]) -> list[str]:
    """Imports that go up a layer, reach a public face from `pax._src`, or import Haiku
    outside `pax._src.haiku`; and import cycles between modules of the package."""
    known = set(sources)
    errors = []
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sources.items():
        layer = layer_of(module)
        for target, line in imports_of(source, known):
            top = target.split(".")[0]
            if top == "haiku" and layer not in ("haiku", "public"):
                errors.append(f"{module}:{line} imports haiku (only pax._src.haiku may)")
            if top != "pax":
                continue
            if target in known and target != module:
                graph[module].add(target)
            if layer == "public":
                continue
            target_layer = layer_of(target)
            if target_layer == "public":
                errors.append(f"{module}:{line} imports the public face {target}")
            elif target_layer not in ALLOWED[layer]:
                errors.append(f"{module}:{line} imports {target}: {layer} -> {target_layer}")
    errors.extend(f"import cycle: {' -> '.join(c)}" for c in cycles(graph))
    return errors


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_package_respects_its_layers_and_has_no_import_cycle():
    assert violations(load_sources()) == []


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("pax._src.core.views", "from pax._src.nn.linear import Linear", "core -> nn"),
        ("pax._src.core.views", "def f():\n    import pax._src.training", "core -> training"),
        ("pax._src.nn.linear", "from pax._src.optim.base import Optimizer", "nn -> optim"),
        ("pax._src.optim.base", "import pax", "imports the public face pax"),
        ("pax._src.nn.linear", "import haiku as hk", "imports haiku"),
        ("pax._src.metrics.mean", "from pax._src.nn.linear import Linear", "metrics -> nn"),
    ],
)
def test_an_upward_import_is_reported(module, source, expected):
    sources = load_sources()
    sources[module] += "\n" + source + "\n"
    assert any(expected in v for v in violations(sources)), violations(sources)


# The pytree protocol: what `Module.__setattr__` through flatten / unflatten needs (see
# pax/_src/core/README.md). Features of modules (views, lazy init, mixed precision, summary,
# selection, ...) sit above it, in the other files of core: the protocol imports none of them.
PROTOCOL = {
    f"pax._src.core.{name}"
    for name in ("registry", "aux", "pytree", "assignment", "validate", "tree_shape", "tracing")
} | {"pax._src.core._jax_compat"}


def protocol_violations(sources: dict[str, str]) -> list[str]:
    known = set(sources)
    return [
        f"{module}:{line} imports {target}: the protocol imports no feature of core"
        for module in sorted(PROTOCOL)
        for target, line in imports_of(sources[module], known)
        if target.startswith("pax._src.core") and target not in PROTOCOL | {"pax._src.core"}
    ]


def test_the_pytree_protocol_imports_no_feature_above_it():
    assert protocol_violations(load_sources()) == []
    sources = load_sources()
    sources["pax._src.core.pytree"] += "\nfrom pax._src.core import lazy\n"
    assert protocol_violations(sources) == [
        f"pax._src.core.pytree:{sources['pax._src.core.pytree'].count(chr(10))} imports "
        "pax._src.core.lazy: the protocol imports no feature of core"
    ]


def test_an_import_cycle_is_reported():
    sources = load_sources()
    sources["pax._src.core.registry"] += "\ndef f():\n    from pax._src.core import module\n"
    found = [v for v in violations(sources) if v.startswith("import cycle")]
    assert found and "pax._src.core.registry" in found[0]


def test_only_the_registry_spells_private_module_keys():
    spelled = [
        f"{m}:{i}"
        for m, source in load_sources().items()
        for i, line in enumerate(source.splitlines(), 1)
        if re.search(r"(?<!_)_pax_", line) and m != "pax._src.core.registry"
    ]
    assert spelled == []


def test_only_the_compat_file_imports_jax_internals():
    users = [
        m
        for m, source in load_sources().items()
        if "jax._src" in source and m != "pax._src.core._jax_compat"
    ]
    assert users == []


def test_no_file_of_the_package_is_over_400_lines():
    long = {m: s.count("\n") for m, s in load_sources().items() if s.count("\n") > 400}
    assert long == {}


def test_importing_pax_does_not_import_haiku():
    code = (
        "import sys, pax, pax.nn, pax.optim, pax.utils\n"
        "loaded = sorted(m for m in sys.modules if m == 'haiku' or m.startswith('haiku.'))\n"
        "assert not loaded, loaded\n"
        "assert pax.haiku.from_haiku is pax.from_haiku\n"
        "assert 'haiku' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
