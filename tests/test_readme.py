"""The README's Python snippets run, in order, in one namespace."""

import pathlib
import re
import threading

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    from pax._src.core import tracing

    tracing.check_pending()  # the guards stay on: no correct snippet leaves a lost change
    assert not [entry for entry in tracing.PENDING if entry.thread == threading.get_ident()]
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["None", "60.0", "(64, 2)"]
    assert float(namespace["loss"]) < 0.05  # the optimizer example trained


def test_readme_names_the_test_command():
    assert "make test" in README.read_text()
