"""The built wheel carries the one napari.yaml (from the repository root), the configs and the
bundled models; its version is the package's one version string; its base requirements pull no
napari and no Qt (those come with the ``napari`` extra)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import napari_multirater
import src_training

ROOT = Path(__file__).resolve().parents[1]
GUI = ("napari", "magicgui", "qtpy", "pyqt5", "pyqt6", "pyside2", "pyside6", "superqt", "vispy")


@pytest.mark.slow
def test_wheel_carries_manifest_and_configs(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(tmp_path.glob("napari_multirater-*.whl"))
    assert wheel.name.startswith(f"napari_multirater-{napari_multirater.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert z.read("napari_multirater/napari.yaml").decode() == (ROOT / "napari.yaml").read_text()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = z.read(entry_points).decode()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "napari-multirater = napari_multirater:napari.yaml" in text
    assert "multirater = napari_multirater.cli:main" in text
    assert {f"src_training/configs/{m}.json" for m in ("dpersona", "proseg", "umanet")} <= names
    shipped = {p.name for p in (ROOT / "napari_multirater" / "models").glob("*.pt")}
    assert shipped and {f"napari_multirater/models/{n}" for n in shipped} <= names  # offline models ship
    docks = ("model_sampling", "compare_raters", "collect_annotations")
    assert {f"napari_multirater/help/{d}.md" for d in docks} <= names  # each dock's Help text, installed too
    assert not any(n.startswith("napari_multirater/inference/bench") for n in names)  # dev tools left the runtime
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [req for req in requires if "extra ==" not in req]
    assert base and not [req for req in base if req.lower().startswith(GUI)], base
    assert any(req.startswith("napari") and 'extra == "napari"' in req for req in requires)


def test_one_manifest_and_one_version():
    """``napari_multirater/napari.yaml`` is a link to the root manifest (never a second copy), and
    the training package reports the plugin's version."""
    link = ROOT / "napari_multirater" / "napari.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "napari.yaml").resolve()
    assert src_training.__version__ == napari_multirater.__version__
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()
