"""The package's layers, checked on every import statement (lazy ones inside functions included).

- The layers of docs/architecture.md, from the faces down to storage, and no import cycle anywhere:
  import-linter's contracts in pyproject.toml (``[tool.importlinter]``), run here as ``lint-imports``
  runs them.
- The core never imports Qt or napari: only ``_widgets/`` may (the reader, writer and sample-data
  modules that napari calls return plain tuples and import neither).
- The core never imports the docks (``_widgets``) or the command line (``cli``); nothing imports
  ``cli`` but its entry points (``python -m napari_unet`` and the console script).
- Every third-party module the package imports is declared in pyproject.toml.
- No underscore name crosses a module: what another module needs is part of its module's public
  face (a private *module* such as ``io/_common.py`` may still be imported by name).
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


def _from_module(node: ast.ImportFrom, path: Path) -> str:
    """The absolute name of the module a ``from ... import`` in ``path`` imports from."""
    if not node.level:
        return node.module or ""
    name = _module_name(path)
    base = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _from_module(node, path)
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


def _private(name: str) -> bool:
    """An underscore name; a dunder such as ``__version__`` and ``_`` itself are not."""
    return name.startswith("_") and name != "_" and not (name.startswith("__") and name.endswith("__"))


def _underscore_names_from_other_modules(path: Path) -> list[str]:
    """Each underscore name ``path`` takes from another module of the package: ``from M import _x``,
    and ``m._x`` where ``m`` is a module of the package it imported (imports inside functions
    included). Importing a private *module* (``from . import _common``) is not one of them."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path)
    where = _where(path)
    found = []
    bound: dict[str, str] = {}  # a name in this file -> the package module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "napari_unet":
                    bound[a.asname or "napari_unet"] = a.name if a.asname else "napari_unet"
        elif isinstance(node, ast.ImportFrom):
            mod = _from_module(node, path)
            if mod.split(".")[0] != "napari_unet":
                continue
            for a in node.names:
                if f"{mod}.{a.name}" in MODULE_NAMES:
                    bound[a.asname or a.name] = f"{mod}.{a.name}"
                elif _private(a.name) and mod != here:
                    found.append(f"{where}:{node.lineno} imports {a.name} from {mod}")

    def module_of(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return bound.get(expr.id)
        if isinstance(expr, ast.Attribute):
            outer = module_of(expr.value)
            if outer is not None and f"{outer}.{expr.attr}" in MODULE_NAMES:
                return f"{outer}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            mod = module_of(node.value)
            if mod is not None and mod != here and f"{mod}.{node.attr}" not in MODULE_NAMES:
                found.append(f"{where}:{node.lineno} uses {mod}.{node.attr}")
    return found


MODULE_NAMES = {_module_name(p) for p in MODULES}


def test_no_underscore_name_crosses_a_module():
    """A name another module needs is part of its module's interface, so it has a public name (or
    the code moves to where it is used)."""
    crossing = [line for path in MODULES for line in _underscore_names_from_other_modules(path)]
    assert not crossing, "give these names a public name in their module:\n" + "\n".join(crossing)


def test_the_underscore_check_finds_what_it_should(tmp_path, monkeypatch):
    """The check above sees ``from M import _x`` (at the top and inside a function) and ``m._x``
    of an imported package module, and lets private modules, dunders and a module's own names by."""
    package = tmp_path / "napari_unet"
    (package / "io").mkdir(parents=True)
    for name in ("__init__.py", "io/__init__.py", "io/_common.py", "other.py"):
        (package / name).write_text("")
    (package / "io" / "tiff.py").write_text(
        "from ._common import _one_line, helper\n"
        "from . import _common\n"
        "from napari_unet import __version__\n"
        "import napari_unet.other\n"
        "def f():\n"
        "    from napari_unet.io import _detect\n"
        "    from napari_unet import io as files\n"
        "    _common.fine = files._target_kind, napari_unet.other._hidden\n"
        "    return _common._helper, _common.__name__, _detect._, _private_here\n"
        "def _private_here():\n"
        "    pass\n"
    )
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", package)
    monkeypatch.setattr(this, "MODULE_NAMES", {_module_name(p) for p in package.rglob("*.py")})
    found = _underscore_names_from_other_modules(package / "io" / "tiff.py")
    assert sorted(found) == sorted(
        [
            "io/tiff.py:1 imports _one_line from napari_unet.io._common",
            "io/tiff.py:6 imports _detect from napari_unet.io",
            "io/tiff.py:8 uses napari_unet.io._target_kind",
            "io/tiff.py:8 uses napari_unet.other._hidden",
            "io/tiff.py:9 uses napari_unet.io._common._helper",
        ]
    )


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
