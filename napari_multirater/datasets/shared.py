"""Locate the shared real-data folder (LIDC) used by tests and benchmarks; never bundled."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MULTIRATER_SHARED_DATA"


def shared_data_dir() -> Path | None:
    """``$MULTIRATER_SHARED_DATA`` else ``<repo root>/../shared/data``; None when not a folder."""
    env = os.environ.get(ENV_VAR)
    p = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return p if p.is_dir() else None
