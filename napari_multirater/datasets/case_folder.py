"""The case-folder format: one folder per case, one mask file per rater, JSON manifest and sidecars.

Layout::

    <dataset>/dataset.json                      manifest (raters, labels, modality, window, splits)
    <dataset>/cases/<case_id>/image.nii.gz      the image (any supported format)
    <dataset>/cases/<case_id>/case.json         case info (patient id, image checksum, source)
    <dataset>/cases/<case_id>/raters/<rater>.nii.gz   that rater's binary mask (same geometry)
    <dataset>/cases/<case_id>/raters/<rater>.json     annotation sidecar (rater, times, provenance)

A rater without a mask file is *missing* for that case (validity flag False), which is different
from an empty mask (the rater saw no lesion). A broken sidecar never invalidates its mask; a
broken mask raises (``strict``, the default: training wants a clear error naming the file) or
marks that rater invalid; either way the problem is listed in ``case.meta["problems"]``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..io.atomic import atomic_write_text as _atomic_write_text
from ..io.atomic import default_file_mode  # noqa: F401 (re-exported)
from ..io.contained import UnsafePath, ensure_inside
from ..io.medical import WRITABLE_SUFFIXES, MedicalIOError, read_image, read_label_image, write_image
from .case import DatasetError, MultiRaterCase

FORMAT_NAME = "napari-multirater/dataset"
FORMAT_VERSION = 1
MANIFEST = "dataset.json"
IMAGE_STEM = "image"
IMAGE_SUFFIXES = WRITABLE_SUFFIXES  # from io.medical, the single list
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # always fullmatch: "$" would accept "x\n"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_identifier(value: str, what: str) -> str:
    """Case and rater ids become file names: letters, digits, ``_.-`` only (the whole string: no
    trailing newline). Every id read from a file passes here before it names a file."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value in (".", ".."):
        raise DatasetError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.' (max 128)")
    return value


def list_case_ids(root) -> list[str]:
    """Sorted valid case ids under ``<root>/cases``; stray folders (``.ipynb_checkpoints``,
    names with spaces...) are ignored. Shared by datasets and the annotation store."""
    d = Path(root) / "cases"
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_dir() and _ID_RE.fullmatch(p.name))


def image_checksum(array: np.ndarray) -> str:
    """sha256 of an image's voxels, shape and dtype (independent of file format/compression)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write text through the project's verified atomic writer (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, text)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{what} {path} must hold a JSON object")
    return obj


def contained(root, path: Path) -> Path:
    """``path`` when its real path lies inside the dataset ``root`` (no symbolic link out), else
    :class:`DatasetError` naming it."""
    try:
        return ensure_inside(root, path)
    except UnsafePath as e:
        raise DatasetError(str(e)) from None


def find_file(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.exists():
            return p
    return None


def new_manifest(
    name: str,
    raters: Sequence[str],
    *,
    modality: str = "CT",
    labels: dict | None = None,
    intensity_window: Sequence[float] | None = None,
    description: str = "",
    splits: dict | None = None,
) -> dict:
    """A fresh manifest dict (validated)."""
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "modality": modality,
        "raters": [check_identifier(r, "rater id") for r in raters],
        "labels": labels or {"0": "background", "1": "lesion"},
        "intensity_window": list(intensity_window) if intensity_window is not None else None,
        "splits": splits or {},
        "created": now_iso(),
        "app_version": __version__,
    }
    validate_manifest(manifest, "manifest")
    return manifest


def validate_manifest(m: dict, where: str) -> None:
    """Raise DatasetError naming ``where`` when a manifest is not valid."""
    if m.get("format") != FORMAT_NAME:
        raise DatasetError(f"{where}: 'format' must be {FORMAT_NAME!r}, got {m.get('format')!r}")
    if not isinstance(m.get("version"), int) or m["version"] > FORMAT_VERSION:
        raise DatasetError(f"{where}: unsupported format version {m.get('version')!r}")
    raters = m.get("raters")
    if not isinstance(raters, list) or not all(isinstance(r, str) for r in raters):
        raise DatasetError(f"{where}: 'raters' must be a list of rater ids")
    if len(set(raters)) != len(raters):
        raise DatasetError(f"{where}: duplicate rater ids in {raters}")
    for r in raters:
        check_identifier(r, f"rater id in {where}")
    labels = m.get("labels")
    if not isinstance(labels, dict) or "1" not in labels:
        raise DatasetError(f"{where}: 'labels' must map label values to names and include '1'")
    win = m.get("intensity_window")
    if win is not None and (
        not isinstance(win, list)
        or len(win) != 2
        or not all(isinstance(v, (int, float)) for v in win)
        or win[0] >= win[1]
    ):
        raise DatasetError(f"{where}: 'intensity_window' must be [low, high] with low < high, got {win!r}")
    splits = m.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise DatasetError(f"{where}: 'splits' must map split names to lists of patient ids")


def is_case_folder_dataset(path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def annotation_sidecar(
    rater: str,
    case_id: str,
    image_sha256: str,
    provenance: dict,
    *,
    created: str | None = None,
    active_seconds: float = 0.0,
) -> dict:
    stamp = now_iso()
    return {
        "rater": rater,
        "case_id": case_id,
        "created": created or stamp,
        "saved": stamp,
        "active_seconds": round(float(active_seconds), 1),
        "image_sha256": image_sha256,
        "provenance": provenance,
        "app_version": __version__,
    }


UNCONFIRMED_PREFILL = "an unconfirmed model pre-fill (neither edited nor confirmed by the rater)"


def unconfirmed_prefill(sidecar) -> bool:
    """Whether an annotation sidecar records an untouched model pre-fill: saved so no work is lost,
    but not the rater's annotation (training, reports, queue counts and agreement leave it out)
    until the rater edits or confirms it (provenance ``edited`` / ``confirmed``)."""
    prov = sidecar.get("provenance") if isinstance(sidecar, dict) else None
    return (
        isinstance(prov, dict)
        and prov.get("kind") == "prefilled"
        and not prov.get("edited")
        and not prov.get("confirmed")
    )


class CaseFolderDataset(Sequence):
    """Lazy reader of a case-folder dataset; ``dataset[i]`` loads and validates one case
    (``strict``: a broken rater mask raises, else it only marks that rater invalid)."""

    def __init__(self, root, split: str | None = None, strict: bool = True):
        self.root = Path(root)
        self.strict = bool(strict)
        self.manifest = read_json(self.root / MANIFEST, "dataset manifest")
        validate_manifest(self.manifest, str(self.root / MANIFEST))
        self.rater_names: list[str] = list(self.manifest["raters"])
        self.problems: list[str] = []  # cases left out before loading (e.g. unreadable case.json)
        all_ids = list_case_ids(self.root)
        self.split = split
        if split is not None:
            splits = self.manifest.get("splits", {})
            if split not in splits:
                raise DatasetError(
                    f"{self.root / MANIFEST}: no split {split!r} (available: {sorted(splits) or 'none'})"
                )
            wanted = set(splits[split])
            keep = []
            for c in all_ids:
                try:
                    patient = self._patient_of(c, strict=True)
                except DatasetError as e:  # its split is unknown: left out, but never silently
                    if c in wanted:
                        keep.append(c)
                    else:
                        self.problems.append(f"case {c} skipped: {e} (cannot tell its patient, so its split)")
                    continue
                if patient in wanted or c in wanted:
                    keep.append(c)
            all_ids = keep
        self.case_ids = all_ids

    # --- Sequence API ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.load_case(self.case_ids[i])

    def __iter__(self) -> Iterator[MultiRaterCase]:
        for cid in self.case_ids:
            yield self.load_case(cid)

    @property
    def intensity_window(self):
        return self.manifest.get("intensity_window")

    def case_dir(self, case_id: str) -> Path:
        return contained(self.root, self.root / "cases" / check_identifier(case_id, "case id"))

    def _patient_of(self, case_id: str, strict: bool = False) -> str:
        try:
            p = contained(self.root, self.case_dir(case_id) / "case.json")
        except DatasetError:
            if strict:
                raise
            return case_id
        if p.exists():
            try:
                return str(read_json(p, "case info").get("patient_id", case_id))
            except DatasetError:
                if strict:
                    raise
                return case_id
        return case_id

    def patient_ids(self) -> list[str]:
        return [self._patient_of(c) for c in self.case_ids]

    def load_case(self, case_id: str, strict: bool | None = None) -> MultiRaterCase:
        """Load one case (``strict`` defaults to the dataset's). DatasetError naming the file
        when the image is unusable or, strict, a rater mask or ``case.json``; otherwise those
        problems and broken sidecars are listed in ``meta["problems"]``."""
        strict = self.strict if strict is None else bool(strict)
        cdir = self.case_dir(case_id)
        img_path = find_file(cdir, IMAGE_STEM)
        if img_path is None:
            raise DatasetError(f"case {case_id}: no image file in {cdir} (expected image.nii.gz or similar)")
        contained(self.root, img_path)
        try:
            image, geometry, _ = read_image(img_path)
        except MedicalIOError as e:
            raise DatasetError(str(e)) from None
        problems: list[str] = []
        info = {}
        if (cdir / "case.json").exists():
            try:
                info = read_json(contained(self.root, cdir / "case.json"), "case info")
            except DatasetError as e:
                if strict:
                    raise
                problems.append(str(e))
        masks = np.zeros((len(self.rater_names), *image.shape), np.uint8)
        valid = np.zeros(len(self.rater_names), bool)
        sidecars = {}
        image_sha = None
        for k, rater in enumerate(self.rater_names):
            mpath = find_file(cdir / "raters", rater)
            if mpath is None:
                continue
            try:
                masks[k] = _read_mask(contained(self.root, mpath), geometry, image.shape)
            except DatasetError as e:
                if strict:
                    raise
                problems.append(f"rater {rater} left out: {e}")
                continue
            side = mpath.parent / f"{rater}.json"
            if side.exists():  # metadata only: a broken sidecar never costs the mask
                try:
                    sidecars[rater] = read_json(contained(self.root, side), "annotation sidecar")
                except DatasetError as e:
                    problems.append(f"rater {rater}: {e} (mask used, sidecar ignored)")
            if unconfirmed_prefill(sidecars.get(rater)):
                masks[k] = 0
                problems.append(f"rater {rater} left out: {UNCONFIRMED_PREFILL}")
                continue
            drawn_on = sidecars.get(rater, {}).get("image_sha256")
            if drawn_on:
                image_sha = image_sha or image_checksum(image)
                if drawn_on != image_sha:  # the image changed after this annotation was made
                    problems.append(
                        f"rater {rater} left out: {side} says the mask was drawn on another image "
                        f"(image checksum {str(drawn_on)[:12]}... vs {image_sha[:12]}... now)"
                    )
                    continue
            valid[k] = True
        meta = {"patient_id": info.get("patient_id", case_id), "case_dir": str(cdir), "image_path": str(img_path)}
        meta.update({k: v for k, v in info.items() if k not in meta})
        meta["sidecars"] = sidecars
        meta["problems"] = problems
        return MultiRaterCase(case_id, image, masks, valid, list(self.rater_names), geometry, meta)

    def check(self) -> list[str]:
        """Load every case; one message per broken case or file (nothing raised)."""
        problems: list[str] = []
        for _ in iter_cases_reporting(self, problems):
            pass
        return problems


def _read_mask(path: Path, geometry, shape) -> np.ndarray:
    try:
        m, _, _ = read_label_image(path, reference=geometry, shape=shape)
    except MedicalIOError as e:
        raise DatasetError(str(e)) from None
    values = np.unique(m)
    if not set(values.tolist()) <= {0, 1}:
        raise DatasetError(f"{path}: mask must be binary (0/1), found values {values[:8].tolist()}")
    return m


def iter_cases_reporting(
    dataset,
    problems: list[str],
    max_cases: int | None = None,
    on_skip: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[MultiRaterCase]:
    """The one skip-and-report loop (``multirater raters``, the viewer's dataset report, ``check``).

    Yields every case of ``dataset`` (any dataset; case folders are read non-strictly) that can
    be loaded; each skipped case and each broken rater file is appended to ``problems`` as a
    message naming the file. ``on_skip(index, case_id)`` per skipped case; ``should_stop()``
    ends the loop before the next case.
    """
    problems.extend(getattr(dataset, "problems", None) or [])  # cases left out before loading
    n = len(dataset) if max_cases is None else min(len(dataset), max_cases)
    ids = getattr(dataset, "case_ids", None)
    for i in range(n):
        if should_stop is not None and should_stop():
            return
        cid = str(ids[i]) if isinstance(ids, list) else str(i)
        try:
            case = dataset.load_case(cid, strict=False) if isinstance(dataset, CaseFolderDataset) else dataset[i]
        except DatasetError as e:
            problems.append(f"case {cid} skipped: {e}")
            if on_skip is not None:
                on_skip(i, cid)
            continue
        problems.extend(f"case {case.case_id}: {p}" for p in case.meta.get("problems", ()))
        yield case


def problems_summary(problems: Sequence[str], n_cases: int, where) -> str:
    """The one summary line after the per-file warnings of :func:`iter_cases_reporting`."""
    skipped = sum(" skipped: " in p for p in problems)
    left_out = sum(" left out: " in p for p in problems)
    drafts = sum(UNCONFIRMED_PREFILL in p for p in problems)
    other = len(problems) - skipped - left_out
    of_which = f" ({drafts} of them unconfirmed model pre-fills)" if drafts else ""
    return (
        f"{where}: {skipped} case(s) skipped, {left_out} rater annotation(s) left out{of_which}, {other} other "
        f"problem(s); {n_cases} case(s) used (see the warnings above)"
    )


def write_case(
    root,
    case: MultiRaterCase,
    *,
    suffix: str = ".nii.gz",
    provenance: dict | None = None,
) -> Path:
    """Write one case (image, case.json, one mask + sidecar per valid rater) into a dataset."""
    root = Path(root)
    cdir = root / "cases" / check_identifier(case.case_id, "case id")
    (cdir / "raters").mkdir(parents=True, exist_ok=True)
    write_image(cdir / f"{IMAGE_STEM}{suffix}", case.image, case.geometry)
    checksum = image_checksum(case.image)
    info = {k: v for k, v in case.meta.items() if isinstance(v, (str, int, float, bool, list, dict))}
    info.update({"case_id": case.case_id, "patient_id": case.patient_id, "image_sha256": checksum})
    for key in ("sidecars", "problems"):
        info.pop(key, None)
    write_json(cdir / "case.json", info)
    for k, rater in enumerate(case.rater_names):
        if not case.valid[k]:
            continue
        check_identifier(rater, "rater id")
        write_image(cdir / "raters" / f"{rater}{suffix}", case.masks[k], case.geometry, label=True)
        write_json(
            cdir / "raters" / f"{rater}.json",
            annotation_sidecar(rater, case.case_id, checksum, provenance or {"kind": "imported"}),
        )
    return cdir


def create_dataset(root, manifest: dict, overwrite: bool = False) -> Path:
    """Create a dataset folder with its manifest (refuses to clobber an existing one)."""
    root = Path(root)
    if (root / MANIFEST).exists() and not overwrite:
        raise DatasetError(f"{root / MANIFEST} already exists (choose another folder)")
    validate_manifest(manifest, "manifest")
    (root / "cases").mkdir(parents=True, exist_ok=True)
    write_json(root / MANIFEST, manifest)
    return root
