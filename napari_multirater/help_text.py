"""Help for each dock: ``napari_multirater/help/<dock>.md``, one paragraph per dock. The same files
open the dock pages of the documentation site (docs/docks/*.md include them), so the Help button
and the manual never differ. Package data: present in a source tree and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

HELP_DIR = Path(__file__).resolve().parent / "help"
DOCS = "the documentation site's page 'The napari plugin' (docs/docks/)"


def help_file(dock_title: str) -> Path:
    """``Model & sampling`` -> ``help/model_sampling.md``."""
    slug = "_".join("".join(c if c.isalnum() else " " for c in dock_title.lower()).split())
    return HELP_DIR / f"{slug}.md"


def dock_help(dock_title: str) -> str:
    """The dock's help paragraph (markdown, one line), or a pointer to the docs when there is none."""
    try:
        text = help_file(dock_title).read_text(encoding="utf-8")
    except OSError:
        return f"See {DOCS} for the {dock_title} dock."
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
