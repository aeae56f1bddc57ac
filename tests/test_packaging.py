"""How pax is installed: the package itself loads from any folder, with its typing marker.

The public names of `pax.nn`, `pax.initializers` (tests/test_nn_api.py) and `pax.haiku`
(tests/test_haiku.py) are resolved where they are tested; the other public faces are here.
"""

import configparser
import os
import pathlib
import subprocess
import sys

import pytest

import pax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE_INIT = ROOT / "pax" / "__init__.py"


def _import_pax_from(cwd: pathlib.Path) -> subprocess.CompletedProcess:
    # `pax.nn` is checked before any submodule import could set it on a namespace package.
    code = "import pax; print(pax.__file__); print(hasattr(pax, 'nn'))"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _assert_the_checkout_loaded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-2000:]
    file, has_nn = result.stdout.split()
    assert file != "None", (
        "`import pax` loaded a folder named pax as an empty namespace package instead of the "
        "checkout's package; reinstall with `make install` (pip install -e with "
        "--config-settings editable_mode=compat)"
    )
    assert pathlib.Path(file).resolve() == PACKAGE_INIT.resolve()
    assert has_nn == "True"


def test_import_from_the_checkouts_parent_folder_loads_the_package():
    """Python started next to the checkout still imports the package inside it."""
    _assert_the_checkout_loaded(_import_pax_from(ROOT.parent))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_folder_named_pax_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    """As next to a clone named ``pax``, whatever this checkout's folder is called.

    A folder without ``__init__.py`` that is first on ``sys.path`` (the working directory) is
    a namespace package candidate; only a regular package found later on ``sys.path`` beats it,
    not the meta-path finder of a default (PEP 660) editable install.
    """
    (tmp_path / "pax").symlink_to(ROOT, target_is_directory=True)
    _assert_the_checkout_loaded(_import_pax_from(tmp_path))


def test_the_package_ships_its_typing_marker():
    assert (ROOT / "pax" / "py.typed").is_file()
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "py.typed" in config["options.package_data"]["pax"]


def test_each_setting_has_one_source():
    """Metadata in setup.cfg; pyproject.toml keeps only the build system and tool settings."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(pyproject) == {"build-system", "tool"}
    assert "setuptools" not in pyproject["tool"]
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["version"] == "attr: pax.__version__"
    assert "setup()" in (ROOT / "setup.py").read_text()


@pytest.mark.parametrize(
    "module",
    [pax, pax.optim, pax.utils, pax.nn, pax.sharding, pax.mixed_precision, pax.distributed],
    ids=lambda m: m.__name__,
)
def test_public_names_resolve(module):
    assert len(module.__all__) == len(set(module.__all__))
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []
