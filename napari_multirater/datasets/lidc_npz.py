"""Adapter for the LIDC-IDRI 2D slice shards (``images``, ``masks``, ``patient_id`` ... in .npz).

A folder holds ``train-*.npz`` shards and ``val.npz``; a single ``.npz`` file works too.
Images are 8-bit lung-window crops (128x128), masks (N, 4, 128, 128) in {0, 1}. LIDC readers are
anonymous, so rater index k is "annotation k of this nodule", not a fixed person. The pixel
spacing of the crops is not stored, so geometry is unit spacing.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.geometry import Geometry
from ..io.npz_bounds import NpzBoundsError, check_npz_bounds
from .case import DatasetError, MultiRaterCase

REQUIRED_KEYS = ("images", "masks")
LIDC_RATERS = ["annotation_1", "annotation_2", "annotation_3", "annotation_4"]
LIDC_INTENSITY_WINDOW = [0.0, 255.0]
COLUMNS = {"patient_id": "USiu", "nodule_id": "iu", "slice_id": "iu"}  # per-slice key -> numpy kinds
COLUMN_TYPES = {"USiu": "strings or integers", "iu": "integers"}


def lidc_files(path, split: str | None) -> list[Path]:
    """The npz files for ``split`` ('train', 'val' or None = a single file/all shards)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"LIDC data not found: {path}")
    if split in (None, "train"):
        files = sorted(path.glob("train-*.npz"))
        if not files and split is None and (path / "val.npz").exists():
            files = [path / "val.npz"]
    elif split == "val":
        files = [path / "val.npz"] if (path / "val.npz").exists() else []
    else:
        f = path / f"{split}.npz"
        files = [f] if f.exists() else []
    if not files:
        raise DatasetError(f"{path}: no npz files for split {split!r} (expected train-*.npz / val.npz)")
    return files


def _load_npz(path: Path) -> dict:
    try:  # sizes from the zip / .npy headers, before np.load allocates from them
        check_npz_bounds(path)
    except NpzBoundsError as e:
        raise DatasetError(f"{path}: {e}") from None
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
            if missing:
                raise DatasetError(f"{path}: missing arrays {missing} (has {z.files})")
            out = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{path}: not a readable npz file ({e})") from None
    return validate_arrays(path, out)


def _binary_masks(path: Path, masks: np.ndarray) -> np.ndarray:
    """``masks`` as uint8 when every value is exactly 0 or 1 (one pass for integer masks);
    DatasetError naming the key and an offending value otherwise (0.7, -1, NaN never cast)."""
    kind = masks.dtype.kind
    if kind == "b":
        return masks.view(np.uint8)
    if kind in "iu":
        # signed values viewed as unsigned: negatives become huge, so max <= 1 means {0, 1}
        flat = masks.view(masks.dtype.str.replace("i", "u")) if kind == "i" else masks
        if flat.max(initial=0) <= 1:
            return masks.astype(np.uint8, copy=False)
        bad = masks[(masks < 0) | (masks > 1)].flat[0].item()
    elif kind == "f":
        ok = (masks == 0) | (masks == 1)
        if ok.all():
            return masks.astype(np.uint8)
        bad = masks[~ok].flat[0].item()
    else:
        raise DatasetError(f"{path}: 'masks' has dtype {masks.dtype}; expected integers or bool holding 0/1")
    raise DatasetError(f"{path}: 'masks' must hold only 0 and 1, found {bad:.6g} (dtype {masks.dtype}); nothing cast")


def validate_arrays(path: Path, out: dict) -> dict:
    """Check one shard's arrays: shapes, at least one rater, binary masks, finite numeric images,
    per-slice columns as long as the images. DatasetError naming the key; masks come back uint8."""
    images, masks = out["images"], out["masks"]
    if images.ndim != 3 or masks.ndim != 4 or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[1:]:
        raise DatasetError(f"{path}: expected images (N,H,W) and masks (N,K,H,W), got {images.shape} and {masks.shape}")
    if masks.shape[1] == 0:
        raise DatasetError(f"{path}: 'masks' has zero raters (shape {masks.shape}); expected (N, K>=1, H, W)")
    if images.dtype.kind not in "buif":
        raise DatasetError(f"{path}: 'images' has dtype {images.dtype}; expected a numeric type")
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DatasetError(f"{path}: 'images' holds NaN or inf values")
    out["masks"] = _binary_masks(path, masks)
    for key, kinds in COLUMNS.items():
        if key not in out:
            continue
        col = out[key]
        if col.shape != (len(images),):
            raise DatasetError(f"{path}: '{key}' has shape {col.shape}; expected one value per image ({len(images)},)")
        if col.dtype.kind not in kinds:
            raise DatasetError(f"{path}: '{key}' has dtype {col.dtype}; expected {COLUMN_TYPES[kinds]}")
    return out


def _check_same_layout(files: list[Path], parts: list[dict]) -> None:
    """Shards combine only with the same slice size and rater count."""
    first = parts[0]["masks"].shape[1:]
    for f, p in zip(files[1:], parts[1:], strict=True):
        if p["masks"].shape[1:] != first:
            raise DatasetError(
                f"{f}: 'masks' are (K, H, W) = {p['masks'].shape[1:]}, but {files[0].name} has {first}; "
                "shards must share rater count and slice size"
            )


class LidcNpzDataset(Sequence):
    """All slices of the given npz file(s), as MultiRaterCase objects (2D)."""

    def __init__(self, path, split: str | None = None):
        self.files = lidc_files(path, split)
        parts = [_load_npz(f) for f in self.files]
        self.images = np.concatenate([p["images"] for p in parts])
        _check_same_layout(self.files, parts)
        self.masks = np.concatenate([p["masks"] for p in parts])
        n = len(self.images)

        def col(key, default):
            if all(key in p for p in parts):
                return np.concatenate([p[key] for p in parts])
            return default

        self.patient = col("patient_id", np.array([f"slice{i:05d}" for i in range(n)])).astype(str)
        self.nodule = col("nodule_id", np.zeros(n, np.int16))
        self.slice = col("slice_id", np.arange(n))
        k = self.masks.shape[1]
        self.rater_names = LIDC_RATERS[:k] if k <= 4 else [f"annotation_{i + 1}" for i in range(k)]
        self.intensity_window = LIDC_INTENSITY_WINDOW
        self.split = split

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        cid = f"{self.patient[i]}_n{int(self.nodule[i])}_s{int(self.slice[i])}"
        meta = {"patient_id": str(self.patient[i]), "nodule_id": int(self.nodule[i]), "slice_id": int(self.slice[i])}
        k = len(self.rater_names)
        return MultiRaterCase(
            cid, self.images[i], self.masks[i], np.ones(k, bool), list(self.rater_names), Geometry.identity(2), meta
        )

    def patient_ids(self) -> list[str]:
        return [str(p) for p in self.patient]

    def concat(self, other: LidcNpzDataset) -> LidcNpzDataset:
        """Both datasets' slices (e.g. train shards + val.npz for 'all')."""
        if other.rater_names != self.rater_names:
            raise DatasetError("cannot combine LIDC files with different rater counts")
        out = object.__new__(LidcNpzDataset)
        out.__dict__.update(self.__dict__)
        for key in ("images", "masks", "patient", "nodule", "slice"):
            setattr(out, key, np.concatenate([getattr(self, key), getattr(other, key)]))
        out.files, out.split = self.files + other.files, None
        return out

    def select(self, indices) -> LidcNpzDataset:
        """A view of the given slices (shares nothing mutable with this dataset)."""
        idx = np.asarray(indices, dtype=int)
        sub = object.__new__(LidcNpzDataset)
        sub.__dict__.update(self.__dict__)
        for key in ("images", "masks", "patient", "nodule", "slice"):
            setattr(sub, key, getattr(self, key)[idx])
        return sub
