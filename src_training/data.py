"""Training data: any multi-rater dataset -> normalized 2D tensors, rater ranking, augmentation.

Volumes are cut into axial slices. Intensities are mapped with the dataset's intensity window
to [0, 1] (the model card records the window so inference applies the same mapping).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_multirater.datasets import open_dataset
from napari_multirater.datasets.case import DatasetError, MultiRaterCase
from napari_multirater.datasets.case_folder import iter_cases_reporting, problems_summary

PAD_MULTIPLE = 16


def normalize_image(image: np.ndarray, window) -> np.ndarray:
    """Clip to ``window`` = [low, high] and scale to [0, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    img = np.asarray(image, dtype=np.float32)
    if not np.isfinite(img).all():
        raise DatasetError("image contains NaN or infinite values")
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


CT_DEFAULT_WINDOW = [-1000.0, 400.0]


def resolve_window(dataset, max_cases: int = 50) -> tuple[list[float], str]:
    """The intensity window for training and where it came from: the dataset's manifest window,
    the CT default [-1000, 400] HU for CT without one, else the 0.5-99.5 percentiles of up to
    ``max_cases`` images (recorded in the model card, so inference applies the same mapping)."""
    win = getattr(dataset, "intensity_window", None)
    if win:
        return [float(win[0]), float(win[1])], "dataset (its manifest or adapter)"
    manifest = getattr(dataset, "manifest", {}) or {}
    if str(manifest.get("modality", "")).upper() == "CT":
        return list(CT_DEFAULT_WINDOW), "CT default (no window in dataset.json)"
    n = min(len(dataset), max_cases)
    if n == 0:
        raise DatasetError("cannot choose an intensity window: the dataset is empty")
    images = []
    for i in range(n):
        try:
            images.append(np.asarray(dataset[i].image, np.float32).ravel()[::7])
        except DatasetError:  # a broken case: skipped (and reported) when the items are built
            continue
    if not images:
        raise DatasetError("cannot choose an intensity window: no readable image among the first cases")
    values = np.concatenate(images)
    lo, hi = (float(v) for v in np.percentile(values[np.isfinite(values)], [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    return [lo, hi], f"0.5-99.5 percentiles of {n} training images"


def default_window(dataset) -> list[float]:
    return resolve_window(dataset)[0]


def rank_by_area(masks: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort raters by annotated area, ascending (LIDC/D-Persona convention: expert k = k-th
    smallest annotation); missing raters go last."""
    area = masks.reshape(len(masks), -1).sum(1).astype(float)
    area[~valid] = np.inf
    order = np.argsort(area, kind="stable")
    return masks[order], valid[order]


@dataclass
class SliceIndex:
    """Where a 2D training item comes from: case position and axial slice (None for 2D cases)."""

    case: int
    z: int | None


class SliceDataset(torch.utils.data.Dataset):
    """2D items ``{"image": (1,H,W), "masks": (K,H,W), "mask_valid": (K,)}`` from a dataset.

    Cases are loaded once into memory (LIDC shards already are). For volumes, slices any rater
    marked are used, plus ``empty_fraction`` of the unmarked slices (seeded).
    """

    def __init__(
        self,
        dataset,
        window=None,
        *,
        rank_raters: bool = False,
        augment: dict | None = None,
        empty_fraction: float = 0.1,
        seed: int = 0,
        max_cases: int | None = None,
    ):
        self.dataset = dataset
        self.window = list(window) if window is not None else default_window(dataset)
        self.rank_raters = rank_raters
        self.augment = augment or {}
        self.rater_names = list(dataset.rater_names)
        n = len(dataset) if max_cases is None else min(len(dataset), max_cases)
        self._fast = hasattr(dataset, "images") and hasattr(dataset, "masks")
        self.problems: list[str] = []
        if self._fast:
            self.cases: list[MultiRaterCase] = []
        else:  # the one skip-with-warning policy: broken cases skipped, broken rater files left out
            self.cases = list(iter_cases_reporting(dataset, self.problems, max_cases=n))
            n = len(self.cases)
            if self.problems:
                where = getattr(dataset, "root", None) or "dataset"
                split = getattr(dataset, "split", None)
                for p in self.problems:
                    print(f"warning: {p}", file=sys.stderr)
                print(
                    "warning: " + problems_summary(self.problems, n, f"{where}" + (f" ({split})" if split else "")),
                    file=sys.stderr,
                )
        self.n_cases = n
        rng = np.random.default_rng(seed)
        self.index: list[SliceIndex] = []
        for i in range(n):
            if self._fast:
                self.index.append(SliceIndex(i, None))
                continue
            case = self.cases[i]
            if not np.isfinite(np.asarray(case.image, np.float32)).all():
                raise DatasetError(f"case {case.case_id}: image contains NaN or infinite values")
            if case.image.ndim == 2:
                self.index.append(SliceIndex(i, None))
                continue
            marked = case.masks.reshape(case.masks.shape[0], case.masks.shape[1], -1).max(axis=(0, 2)) > 0
            for z in range(case.image.shape[0]):
                if marked[z] or rng.random() < empty_fraction:
                    self.index.append(SliceIndex(i, z))
        if not self.index:
            where = getattr(dataset, "root", None) or getattr(dataset, "files", None) or "the dataset"
            split = getattr(dataset, "split", None)
            raise DatasetError(
                f"{where}{f' (split {split!r})' if split else ''}: no usable slices (is the split empty?)"
            )
        self.patients = sorted({self._patient(i) for i in range(n)})

    def _patient(self, i: int) -> str:
        if self._fast:
            return str(self.dataset.patient[i])
        return self.cases[i].patient_id

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, item: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image float [0,1] (H,W), masks uint8 (K,H,W), valid bool (K,)) before augmentation."""
        ref = self.index[item]
        if self._fast:
            image, masks = self.dataset.images[ref.case], self.dataset.masks[ref.case]
            valid = np.ones(masks.shape[0], bool)
        else:
            case = self.cases[ref.case]
            image, masks, valid = case.image, case.masks, case.valid
            if ref.z is not None:
                image, masks = image[ref.z], masks[:, ref.z]
        img = normalize_image(image, self.window)
        masks = np.asarray(masks, dtype=np.uint8)
        valid = np.asarray(valid, dtype=bool)
        if self.rank_raters:
            masks, valid = rank_by_area(masks, valid)
        return img, masks, valid

    def __getitem__(self, item: int) -> dict:
        img, masks, valid = self.raw(item)
        if self.augment:
            rng = np.random.default_rng(torch.randint(0, 2**31 - 1, (1,)).item())
            img, masks = augment_pair(img, masks, rng, **self.augment)
        img, masks = pad_to_multiple(img, masks, PAD_MULTIPLE)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img))[None],
            "masks": torch.from_numpy(np.ascontiguousarray(masks)).float(),
            "mask_valid": torch.from_numpy(valid),
        }


def pad_to_multiple(img: np.ndarray, masks: np.ndarray, multiple: int):
    """Pad (edge for the image, zero for masks) so H and W are multiples of ``multiple``."""
    h, w = img.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return img, masks
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    return np.pad(img, pads, mode="edge"), np.pad(masks, ((0, 0), *pads))


def augment_pair(
    img: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    *,
    flips: bool = True,
    rot90: bool = True,
    rotate_deg: float = 0.0,
    intensity: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, 90-degree rotations, small rotations (bilinear image, nearest masks) and
    intensity scale/shift; the same geometric transform for image and every rater mask."""
    if flips:
        if rng.random() < 0.5:
            img, masks = img[:, ::-1], masks[:, :, ::-1]
        if rng.random() < 0.5:
            img, masks = img[::-1], masks[:, ::-1]
    if rot90:
        k = int(rng.integers(4))
        img, masks = np.rot90(img, k), np.rot90(masks, k, axes=(1, 2))
    if rotate_deg > 0:
        angle = float(rng.uniform(-rotate_deg, rotate_deg))
        img = ndi.rotate(img, angle, reshape=False, order=1, mode="nearest")
        masks = ndi.rotate(masks, angle, axes=(2, 1), reshape=False, order=0, mode="constant")
    if intensity > 0:
        scale = 1.0 + float(rng.uniform(-intensity, intensity))
        shift = float(rng.uniform(-intensity, intensity)) * 0.5
        img = np.clip(img * scale + shift, 0.0, 1.0)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(masks)


def load_split(path, split: str | None):
    """Open ``path`` for ``split`` ('train', 'val', or None / 'all' = everything).

    LIDC folders use their shards (train-*.npz / val.npz); case-folder datasets use the splits in
    dataset.json. A single .npz file or a dataset without splits is split by patient
    (deterministic, 20% of patients to val), so train and val never share a patient.
    """
    from pathlib import Path

    from napari_multirater.datasets import CaseFolderDataset, LidcNpzDataset

    p = Path(path)
    if split not in (None, "all", "train", "val"):
        raise DatasetError(f"unknown split {split!r}: use train, val or all")
    if split in (None, "all"):
        if p.is_dir() and not (p / "dataset.json").exists():  # LIDC shard folder: train shards + val.npz
            parts = [LidcNpzDataset(p, "train")] if any(p.glob("train-*.npz")) else []
            parts += [LidcNpzDataset(p, "val")] if (p / "val.npz").exists() else []
            if parts:
                return parts[0] if len(parts) == 1 else parts[0].concat(parts[1])
        ds = open_dataset(p)
        if isinstance(ds, CaseFolderDataset):
            ds.strict = False
        return ds
    if p.is_file() and p.suffix == ".npz":
        full = LidcNpzDataset(p)
        train, val = patient_split(full.patient_ids())
        return full.select(train if split == "train" else val)
    ds = open_dataset(p)
    if isinstance(ds, CaseFolderDataset):
        ds.strict = False  # broken rater files are left out with a warning, never stop training
        if split in ds.manifest.get("splits", {}):
            return CaseFolderDataset(p, split=split, strict=False)
        if ds.manifest.get("splits"):
            raise DatasetError(f"{p}/dataset.json has no split {split!r} (has {sorted(ds.manifest['splits'])})")
        train, val = patient_split(ds.patient_ids())
        ds.case_ids = [ds.case_ids[i] for i in (train if split == "train" else val)]
        return ds
    if isinstance(ds, LidcNpzDataset):
        return open_dataset(p, split=split)
    return ds


def patient_split(patient_ids, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split by patient (never by slice): returns (train indices, val indices)."""
    import hashlib

    def bucket(pid: str) -> float:
        h = hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()
        return int(h[:8], 16) / 0xFFFFFFFF

    train, val = [], []
    for i, pid in enumerate(patient_ids):
        (val if bucket(str(pid)) < val_fraction else train).append(i)
    if not train or not val:
        raise DatasetError("cannot split by patient: too few patients for a train/val split")
    return train, val
