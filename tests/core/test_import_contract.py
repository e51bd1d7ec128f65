"""The package's layers, checked on every import statement (lazy ones inside functions included).

- The layers of docs/architecture.md, from the faces down to storage, and no import cycle anywhere:
  import-linter's contracts in pyproject.toml (``[tool.importlinter]``), run here as ``lint-imports``
  runs them.
- The core never imports Qt or napari: only ``_widgets/`` may (the reader, writer and sample-data
  modules that napari calls return plain tuples and import neither).
- The core never imports the docks (``_widgets``) or the command line (``cli``); nothing imports
  ``cli`` but its entry points (``python -m napari_unet`` and the console script).
- Every third-party module the package imports is declared in pyproject.toml.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "napari_unet"

#: top-level modules of the GUI stack
GUI = {"qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "superqt", "magicgui", "psygnal", "vispy"}
#: import name -> distribution name, where the two differ
DISTRIBUTION = {
    "PIL": "pillow",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "ome_zarr": "ome-zarr",
    "bioimageio": "bioimageio.core",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None or (node.level and not node.module):
                found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, mod))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def _where(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=_where)
def test_layers(path):
    where = _where(path)
    in_widgets = where.startswith("_widgets/")
    in_cli = where.startswith("cli/")
    entry = where == "__main__.py"
    wrong = []
    for line, mod in _imports(path):
        top = mod.split(".")[0]
        if top in GUI and not in_widgets:
            wrong.append(f"{where}:{line} imports {mod}: Qt and napari belong in _widgets/")
        if mod.startswith("napari_unet._widgets") and not in_widgets:
            wrong.append(f"{where}:{line} imports {mod}: the core never imports a dock")
        if mod.startswith("napari_unet.cli") and not (in_cli or entry):
            wrong.append(f"{where}:{line} imports {mod}: only the entry points import the command line")
    assert not wrong, "\n".join(wrong)


def test_layers_and_no_cycles(capsys):
    """import-linter's contracts hold: no layer imports one above it, and no module imports itself
    back through others (the report names each import that breaks a contract, with its line)."""
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "0 broken" in report


def _declared() -> set[str]:
    """Distribution names in pyproject.toml's dependencies and extras, lower case."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower() for s in specs}


def test_every_import_is_declared():
    stdlib = set(sys.stdlib_module_names)
    declared = _declared()
    missing = []
    for path in MODULES:
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if not top or top in stdlib or top == "napari_unet":
                continue
            dist = DISTRIBUTION.get(top, top).lower().replace("_", "-")
            if dist not in declared:
                missing.append(f"{_where(path)}:{line} imports {top} ({dist} is not in pyproject.toml)")
    assert not missing, "\n".join(missing)


def test_benchmark_only_packages_stay_out_of_the_test_extra():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    testing = " ".join(extras["testing"]).lower()
    for name in ("monai", "scikit-learn"):
        assert name not in testing
        assert any(s.lower().startswith(name) for s in extras["bench"])
