"""The built wheel carries the one napari.yaml (from the repository root) and the configs."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_manifest_and_configs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(tmp_path.glob("napari_multirater-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert z.read("napari_multirater/napari.yaml").decode() == (ROOT / "napari.yaml").read_text()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = z.read(entry_points).decode()
    assert "napari-multirater = napari_multirater:napari.yaml" in text
    assert "multirater = napari_multirater.cli:main" in text
    assert {f"src_training/configs/{m}.json" for m in ("dpersona", "proseg", "umanet")} <= names
    shipped = {p.name for p in (ROOT / "napari_multirater" / "models").glob("*.pt")}
    assert shipped and {f"napari_multirater/models/{n}" for n in shipped} <= names  # offline models ship


def test_package_manifest_is_the_root_manifest():
    assert (ROOT / "napari_multirater" / "napari.yaml").read_text() == (ROOT / "napari.yaml").read_text()
