"""Multi-rater datasets: one data model (MultiRaterCase) over case folders, LIDC shards and phantoms."""

from __future__ import annotations

from pathlib import Path

from .case import DatasetError, MultiRaterCase
from .case_folder import CaseFolderDataset, is_case_folder_dataset, write_case
from .lidc_npz import LidcNpzDataset

__all__ = [
    "CaseFolderDataset",
    "DatasetError",
    "LidcNpzDataset",
    "MultiRaterCase",
    "open_dataset",
    "write_case",
]


def open_dataset(path, split: str | None = None):
    """Open a case-folder dataset (phantoms included), an LIDC npz file or a folder of shards."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"dataset not found: {p}")
    if p.is_dir() and is_case_folder_dataset(p):
        return CaseFolderDataset(p, split=split)
    if p.suffix == ".npz" or (p.is_dir() and (any(p.glob("train-*.npz")) or (p / "val.npz").exists())):
        return LidcNpzDataset(p, split=split)
    raise DatasetError(
        f"{p}: not a recognised dataset (expected a folder with dataset.json, an .npz file, "
        "or a folder with train-*.npz / val.npz)"
    )
