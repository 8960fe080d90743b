"""tools/system_check.sh (run first by `make test` and `make demo`): without a display and without
xvfb-run it stops with one line naming the packages and the command that installs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "system_check.sh"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash not found")


def _run(tmp_path, *, xvfb: bool, display: str | None = None):
    """The script with a PATH of only the tools it uses (+ a fake xvfb-run if asked), never installing."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("dpkg-query", "grep", "id"):
        if shutil.which(tool) and not (bindir / tool).exists():
            (bindir / tool).symlink_to(shutil.which(tool))
    if xvfb:
        (bindir / "xvfb-run").write_text("#!/bin/sh\nexit 0\n")
        (bindir / "xvfb-run").chmod(0o755)
    env = {"PATH": str(bindir), "MULTIRATER_SYSTEM_INSTALL": "0"}
    if display:
        env["DISPLAY"] = display
    return subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_no_display_and_no_xvfb_run_stops_with_one_line(tmp_path):
    r = _run(tmp_path, xvfb=False)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    if shutil.which("dpkg-query"):
        assert "missing system packages" in lines[0]
        names, command = lines[0].split("; install them with: ")
        assert "xvfb" in names.split() and command.startswith("sudo apt-get install -y ") and "xvfb" in command.split()
    else:
        assert "xvfb-run" in lines[0]


@pytest.mark.parametrize("how", ["xvfb-run on PATH", "a display"])
def test_xvfb_not_demanded_when_present_or_not_needed(tmp_path, how):
    r = _run(tmp_path, xvfb=how == "xvfb-run on PATH", display=":99" if how == "a display" else None)
    assert "xvfb" not in r.stderr.replace("xvfb-run", "")  # may still list missing Qt libraries
    assert r.returncode == (1 if r.stderr else 0)
