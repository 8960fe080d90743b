"""Which part of the data ``multirater evaluate`` scores, and the words that say so.

Without ``--split``: the declared val split where the data declares one (an LIDC shard folder
with ``val.npz``, a dataset.json with a ``val`` split), else all of it; a single .npz file or a
dataset without splits is scored whole. ``--split val|train`` on data without declared splits
uses the deterministic 20% patient split of training, and the summary says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_multirater.datasets.case import DatasetError
from napari_multirater.io.npz_bounds import check_npz_bounds


def declared_val(path) -> bool:
    """Whether the data at ``path`` declares a val split."""
    p = Path(path)
    if p.is_dir() and not (p / "dataset.json").exists():
        return (p / "val.npz").exists()
    if p.is_dir():
        from napari_multirater.datasets.case_folder import read_json

        splits = read_json(p / "dataset.json", "dataset manifest").get("splits") or {}
        return isinstance(splits, dict) and "val" in splits
    return False


def count_all(path) -> int:
    """Images (or cases) in all of the data, reading only the patient ids of npz files."""
    p = Path(path)
    if p.is_dir() and (p / "dataset.json").exists():
        from napari_multirater.datasets.case_folder import list_case_ids

        return len(list_case_ids(p))
    files = [p] if p.is_file() else sorted(p.glob("train-*.npz")) + sorted(p.glob("val.npz"))
    n = 0
    for f in files:
        try:
            check_npz_bounds(f)  # before np.load allocates from the headers
            with np.load(f, allow_pickle=False) as z:
                n += len(z["images"]) if "patient_id" not in z.files else len(z["patient_id"])
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"{f}: not a readable npz file ({e})") from None
    return n


def choose_split(path, split: str | None) -> tuple[str, str]:
    """``(split to load, how it was chosen)`` for ``--split`` (None = not given)."""
    if split is None:
        if declared_val(path):
            return "val", "the data's declared val split"
        return "all", "all of it (no split declared)"
    if split in ("all", "none"):
        return "all", "all of it"
    if declared_val(path) or (Path(path).is_dir() and split == "train" and any(Path(path).glob("train-*.npz"))):
        return split, f"the data's declared {split} split"
    return split, f"the {split} part of a 20% by-patient split (no split declared; --split all scores everything)"


def split_summary(split: str, how: str, n_scored: int, n_total: int, unit: str) -> str:
    """e.g. ``split val (the data's declared val split): 1552 of 12471 images``."""
    if split == "all":
        return (
            f"all {n_total} {unit}s" if n_scored == n_total else f"{n_scored} of all {n_total} {unit}s (--max-images)"
        )
    return f"split {split} ({how}): {n_scored} of {n_total} {unit}s"
