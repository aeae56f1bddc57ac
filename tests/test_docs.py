"""Every docs page's Python blocks run on their own, and what they print is checked.

Each page runs in a fresh namespace (its blocks in order, a block may use its page's earlier
names, never another page's). A ```text block right after a ```python block is the output that
block must print (compared line by line, trailing spaces ignored).
"""

import contextlib
import io
import pathlib
import re
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"```python\n(.*?)```\n(?:```text\n(.*?)```)?", flags=re.S)
# Pages whose blocks train or compile for several seconds: run with `make test-slow`.
SLOW: set[str] = set()  # none yet: every page runs in under 6 s


def blocks(text: str) -> list[tuple[str, str | None]]:
    """The (code, expected output or None) pairs of a Markdown text, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def run_blocks(path: pathlib.Path, namespace: dict | None = None) -> dict:
    """Runs the Python blocks of `path` in order in one namespace; checks printed outputs."""
    namespace = {} if namespace is None else namespace
    for i, (code, expected) in enumerate(blocks(path.read_text())):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{path}:block{i}", "exec"), namespace)
        if expected is not None:
            got = [line.rstrip() for line in out.getvalue().rstrip("\n").splitlines()]
            want = [line.rstrip() for line in expected.rstrip("\n").splitlines()]
            assert got == want, f"{path.name} block {i} printed:\n" + "\n".join(got)
    from pax._src.core import tracing

    tracing.check_pending()  # the guards stay on: no correct block leaves a lost change
    assert not [entry for entry in tracing.PENDING if entry.thread == threading.get_ident()]
    return namespace


def _pages() -> list:
    params = []
    for path in sorted(DOCS.rglob("*.md")):
        name = path.relative_to(DOCS).as_posix()
        if blocks(path.read_text()):
            marks = [pytest.mark.slow] if name in SLOW else []
            params.append(pytest.param(path, id=name, marks=marks))
    return params


@pytest.mark.parametrize("page", _pages())
def test_docs_page_blocks_run(page: pathlib.Path) -> None:
    run_blocks(page)


def test_every_page_with_code_is_tested() -> None:
    """A page's blocks are found (a ```python fence the regex misses would go untested)."""
    for path in DOCS.rglob("*.md"):
        text = path.read_text()
        assert text.count("```python\n") == len(blocks(text)), path


def test_blocks_pairs_code_with_its_output() -> None:
    text = "```python\nprint(1)\n```\n```text\n1\n```\n\n```python\nx = 2\n```\n"
    assert blocks(text) == [("print(1)\n", "1\n"), ("x = 2\n", None)]


def test_a_wrong_printed_value_fails(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1 + 1)\n```\n```text\n3\n```\n")
    with pytest.raises(AssertionError, match="printed"):
        run_blocks(page)
    page.write_text("```python\nprint(1 + 1)\n```\n```text\n2\n```\n")
    run_blocks(page)
