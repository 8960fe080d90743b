"""Dependencies point one way: core <- training <- inference <- tools <- napari <- widgets <- app.

Every module of ``napari_multirater`` and ``src_training`` belongs to exactly one layer and imports
(at module level or inside a function) only from its own layer or lower ones. The layers below the
napari layer never import napari or a Qt binding, so training runs without the plugin installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("napari_multirater", "src_training")

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "core",
        (
            "napari_multirater",
            "napari_multirater.io",
            "napari_multirater.datasets",
            "napari_multirater.annotation",
            "napari_multirater.analysis",
            "napari_multirater.modelfiles",
            "napari_multirater.progress",
            "napari_multirater.argtypes",
            "napari_multirater.help_text",
        ),
    ),
    ("training", ("src_training",)),
    ("inference", ("napari_multirater.inference",)),
    ("tools", ("src_training.tools",)),
    ("napari", ("napari_multirater._napari",)),
    ("widgets", ("napari_multirater.widgets",)),
    ("app", ("napari_multirater.cli", "napari_multirater.commands")),
]
QT_FREE = ("core", "training", "inference", "tools")
GUI_PACKAGES = (
    "napari",
    "qtpy",
    "magicgui",
    "superqt",
    "vispy",
    "npe2",
    "app_model",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
)


def module_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file of ``packages`` under ``root``."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imported_names(name: str, path: Path) -> set[str]:
    """Absolute dotted names ``path`` imports anywhere (relative imports resolved; ``from a import b``
    also yields ``a.b`` in case ``b`` is a module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def layer_of(module: str) -> str | None:
    best, found = -1, None
    for layer, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), layer
    return found


def project_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: project modules it imports}``."""
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        deps = set()
        for imp in imported_names(name, path):
            while imp and imp not in files:
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def reverse_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: i for i, (layer, _) in enumerate(LAYERS)}
    return sorted(
        f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
        for m, deps in graph.items()
        for d in deps
        if rank[layer_of(d)] > rank[layer_of(m)]
    )


def layer_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Groups of two or more layers that reach each other through imports."""
    edges: dict[str, set[str]] = {layer: set() for layer, _ in LAYERS}
    for m, deps in graph.items():
        edges[layer_of(m)].update(layer_of(d) for d in deps if layer_of(d) != layer_of(m))

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = []
    for layer in edges:
        group = {layer} | {other for other in reach(layer) if layer in reach(other)}
        if len(group) > 1 and group not in cycles:
            cycles.append(group)
    return cycles


def test_every_module_has_a_layer():
    unplaced = [m for m in module_files() if layer_of(m) is None]
    assert not unplaced, f"add these modules to a layer in {Path(__file__).name}: {unplaced}"


def test_imports_point_down_and_layers_have_no_cycles():
    graph = project_graph()
    assert len(graph) > 80  # the whole project was parsed
    assert reverse_imports(graph) == []
    assert layer_cycles(graph) == []


def test_lower_layers_never_import_napari_or_qt():
    bad = []
    for name, path in module_files().items():
        if layer_of(name) in QT_FREE:
            bad += [f"{name} imports {imp}" for imp in imported_names(name, path) if imp.split(".")[0] in GUI_PACKAGES]
    assert bad == []


def test_checker_catches_a_reverse_import(tmp_path):
    """The checks above can fail: a training module importing the plugin's engine is reported."""
    for pkg, files in {
        "src_training": {"__init__.py": "", "train.py": "import napari_multirater.inference.engine\n"},
        "napari_multirater": {
            "__init__.py": "",
            "inference/__init__.py": "",
            "inference/engine.py": "from src_training import train\n",
        },
    }.items():
        for rel, text in files.items():
            (tmp_path / pkg / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / pkg / rel).write_text(text)
    graph = project_graph(tmp_path)
    assert reverse_imports(graph) == [
        "src_training.train (training) imports napari_multirater.inference.engine (inference)"
    ]
    assert layer_cycles(graph) == [{"training", "inference"}]


def test_training_and_engine_import_without_napari_installed():
    """A training-only install (no napari, no Qt binding) imports every module below the napari layer."""
    lower = sorted(m for m in module_files() if layer_of(m) in QT_FREE)
    code = (
        "import importlib, importlib.abc, sys\n"
        f"BLOCKED = {GUI_PACKAGES!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked: training-only install)')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {lower!r}:\n"
        "    importlib.import_module(m)\n"
        "print(len(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_plugin_command_without_napari_says_which_extra(monkeypatch, capsys):
    """On a base install ``multirater demo`` names the missing extra in one line (exit 2)."""
    from napari_multirater.cli import main

    monkeypatch.setitem(sys.modules, "napari", None)  # import napari now fails as if not installed
    assert main(["demo", "--exit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "napari-multirater[pyqt5]" in err[0] and "napari" in err[0]
