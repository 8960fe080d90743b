"""Help for each dock, taken from the README (the user manual): the dock's bullet of "The napari
plugin" section. Read from the source tree or, installed, from the package metadata."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_text() -> str:
    if README.is_file():
        return README.read_text(encoding="utf-8")
    try:
        from importlib.metadata import metadata

        return metadata("napari-multirater").get_payload() or metadata("napari-multirater").get("Description", "")
    except Exception:  # noqa: BLE001 - no metadata: no help text, never an error
        return ""


def dock_help(dock_title: str) -> str:
    """The README's paragraph for the dock called ``dock_title`` (markdown), or a pointer to the README."""
    text = readme_text()
    marker = f"- **{dock_title}**"
    start = text.find(marker)
    if start < 0:
        return f"See the section 'The napari plugin' of the README for the {dock_title} dock."
    lines = []
    for i, line in enumerate(text[start:].splitlines()):
        if i and (line.startswith("- **") or not line.strip()):
            break
        lines.append(line[2:] if i == 0 else line.strip())
    return " ".join(lines)
