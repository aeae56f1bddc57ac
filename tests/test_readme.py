"""The README's Python blocks run, in order, in one namespace, and print what it shows."""

import pathlib

from test_docs import blocks, run_blocks

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run() -> None:
    assert blocks(README.read_text())  # the example is there, with its printed output
    namespace = run_blocks(README)
    assert float(namespace["loss"]) < 0.05  # the example trained


def test_readme_is_one_screen_or_two() -> None:
    assert len(README.read_text().splitlines()) <= 150


def test_readme_names_the_commands_and_links_the_docs() -> None:
    text = README.read_text()
    assert "make test" in text and "make demo" in text and "make docs" in text
    for link in ("docs/getting-started.md", "docs/migration/pax-v02.md#compatibility-policy"):
        assert link in text
