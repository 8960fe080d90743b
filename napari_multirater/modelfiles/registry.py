"""Find model checkpoints by name: bundled ones (``napari_multirater/models/*.pt``) and the user
cache (``$NAPARI_MULTIRATER_MODELS``, default ``~/.cache/napari-multirater/models``)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "NAPARI_MULTIRATER_MODELS"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "models"
DEMO_MODEL = "phantom_dpersona"  # trained on the synthetic phantoms the demo opens


def user_model_dir() -> Path:
    """The user cache folder (re-read on every call so the env var can change)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-multirater" / "models"


def model_dirs() -> list[Path]:
    return [PACKAGE_DIR, user_model_dir()]


def available_models() -> dict[str, Path]:
    """``{name: path}`` of every ``*.pt`` found; name = file stem; bundled models win on clashes."""
    found: dict[str, Path] = {}
    for d in model_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.pt")):
                found.setdefault(p.stem, p)
    return found


def demo_model_name() -> str | None:
    """The model the demo uses: the phantom model when installed, else the first one found."""
    models = available_models()
    return DEMO_MODEL if DEMO_MODEL in models else next(iter(models), None)


def is_model_name(text) -> bool:
    """True when ``text`` names a bundled / cached model rather than a checkpoint path."""
    path = Path(str(text)).expanduser()
    return not (path.is_file() or path.exists() or path.suffix == ".pt" or len(path.parts) > 1)


def find_model(name: str) -> Path:
    """Path of the model called ``name`` (file stem, ``.pt`` optional); FileNotFoundError otherwise."""
    key = name[:-3] if name.endswith(".pt") else name
    models = available_models()
    if key in models:
        return models[key]
    known = ", ".join(sorted(models)) or "none installed"
    raise FileNotFoundError(
        f"no model named {name!r} (searched {', '.join(str(d) for d in model_dirs())}; available: {known})"
    )
