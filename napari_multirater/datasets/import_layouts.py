"""Import a multi-rater dataset from a common folder layout into the case-folder format.

Layouts (any format the loader reads: .nii.gz, .nii, .nrrd, .mha, .mhd, .nhdr)::

    per-rater   <root>/<case>/image.nii.gz  + <root>/<case>/<rater>.nii.gz        (one file per rater)
    qubiq       <root>/<case>/image.nii.gz  + <root>/<case>/task01_seg01.nii.gz ...  (rater = seg01 ...)
    nnunet      <root>/imagesTr/<case>_0000.nii.gz + <root>/labelsTr/<rater>/<case>.nii.gz
                (one label folder per rater; labels directly in labelsTr/ = a single rater), or
                <root>/<rater>/imagesTr + <root>/<rater>/labelsTr (one nnU-Net dataset per rater, as
                ``export-dataset --labels all`` writes them; each case's image is read from the
                first rater's folder that has it)

Every mask is checked as the loader checks it (same shape and geometry as its image, binary);
each problem is listed with its file. A file whose real path leaves the folder (a symbolic link
out) is a problem, never read. By default any problem stops the import and nothing is
written; ``skip_bad`` leaves out the bad files instead (a bad image: its case; a bad mask: that
rater of that case, which then counts as missing). The dataset is built beside ``out`` and renamed
into place at the end, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.contained import is_inside
from ..io.medical import WRITABLE_SUFFIXES, MedicalIOError, read_image
from .case import DatasetError, MultiRaterCase
from .case_folder import _read_mask, check_identifier, create_dataset, is_case_folder_dataset, new_manifest
from .staging import staged_folder, write_imported_case

LAYOUTS = ("per-rater", "qubiq", "nnunet")
_QUBIQ_RE = re.compile(r"^task(\d+)_seg(\d+)$", re.IGNORECASE)
_NNUNET_IMG_RE = re.compile(r"^(.+)_(\d{4})$")


class ImportProblems(DatasetError):
    """The import found problems (listed one per file in ``problems``); nothing was written."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{len(problems)} problem(s); nothing imported")


@dataclass
class Source:
    """One case to import: its image file and one mask file per rater."""

    case_id: str
    image: Path
    masks: dict[str, Path] = field(default_factory=dict)


@dataclass
class Scan:
    layout: str
    root: Path
    sources: list[Source]
    raters: list[str]
    problems: list[str]
    notes: list[str] = field(default_factory=list)
    modality: str | None = None

    def describe(self) -> str:
        n_masks = sum(len(s.masks) for s in self.sources)
        return (
            f"{self.root}: {self.layout} layout, {len(self.sources)} images, {len(self.raters)} raters "
            f"({', '.join(self.raters)}), {n_masks} masks"
        )


def _stem(path: Path) -> str | None:
    """File name without its image suffix; None for files that are not images."""
    name = path.name
    for suffix in sorted(WRITABLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _image_files(folder: Path) -> dict[str, list[Path]]:
    """stem -> every image file in ``folder`` with that stem (hidden files skipped)."""
    found: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        stem = _stem(f)
        if stem is not None and f.is_file() and not f.name.startswith("."):
            found.setdefault(stem, []).append(f)
    return found


def _images(folder: Path, problems: list[str] | None = None) -> dict[str, Path]:
    """stem -> image file in ``folder``. A stem held by several files (``alice.nii.gz`` and
    ``alice.nrrd``) is ambiguous: with ``problems`` it is left out and reported naming every file;
    without (layout detection only) the first file stands for it."""
    found = _image_files(folder)
    if problems is None:
        return {stem: files[0] for stem, files in found.items()}
    for stem, files in found.items():
        if len(files) > 1:
            names = " and ".join(f.name for f in files)
            problems.append(f"{folder}: {names} are both '{stem}' (ambiguous): keep only one of them")
    return {stem: files[0] for stem, files in found.items() if len(files) == 1}


def _case_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _valid_id(value: str, what: str, where: Path, problems: list[str]) -> bool:
    try:
        check_identifier(value, what)
        return True
    except DatasetError as e:
        problems.append(f"{where}: {e}")
        return False


def scan_per_rater(root: Path) -> Scan:
    sources, problems = [], []
    for d in _case_dirs(root):
        files = _images(d, problems)
        if "image" not in files:
            if "image" not in _image_files(d):
                problems.append(f"{d}: no image file (expected image.nii.gz or another image format)")
            continue
        if not _valid_id(d.name, "case id", d, problems):
            continue
        masks = {stem: f for stem, f in files.items() if stem != "image" and _valid_id(stem, "rater id", f, problems)}
        sources.append(Source(d.name, files["image"], masks))
    return _finish("per-rater", root, sources, problems)


def scan_qubiq(root: Path, task: int | None = None) -> Scan:
    tasks: set[int] = set()
    per_case = []
    ambiguous: list[str] = []
    for d in _case_dirs(root):
        files = _images(d, ambiguous)
        segs = {}
        for stem, f in files.items():
            m = _QUBIQ_RE.match(stem)
            if m:
                tasks.add(int(m.group(1)))
                segs[stem] = (int(m.group(1)), int(m.group(2)), f)
        per_case.append((d, files, segs))
    if task is None and len(tasks) > 1:
        raise DatasetError(f"{root}: QUBIQ tasks {sorted(tasks)} found; choose one with --task N")
    task = task if task is not None else (tasks.pop() if tasks else 1)
    sources, problems = [], ambiguous
    for d, files, segs in per_case:
        if "image" not in files:
            if "image" not in _image_files(d):
                problems.append(f"{d}: no image file (expected image.nii.gz)")
            continue
        if not _valid_id(d.name, "case id", d, problems):
            continue
        masks = {f"seg{s:02d}": f for t, s, f in sorted(segs.values()) if t == task}
        sources.append(Source(d.name, files["image"], masks))
    scan = _finish("qubiq", root, sources, problems)
    scan.notes.append(f"task {task:02d}")
    return scan


def _nnunet_channels(images_dir: Path, problems: list[str]) -> dict[str, dict[int, Path]]:
    """case id -> {channel: file} of an nnU-Net imagesTr folder."""
    channels: dict[str, dict[int, Path]] = {}
    for stem, f in _images(images_dir, problems).items():
        m = _NNUNET_IMG_RE.match(stem)
        if not m:
            problems.append(f"{f}: image names must end in _0000 (nnU-Net channel suffix)")
            continue
        channels.setdefault(m.group(1), {})[int(m.group(2))] = f
    return channels


def _per_rater_datasets(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that are nnU-Net datasets (imagesTr/ and labelsTr/), one per rater."""
    return [d for d in _case_dirs(root) if (d / "imagesTr").is_dir() and (d / "labelsTr").is_dir()]


def scan_nnunet(root: Path) -> Scan:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    problems: list[str] = []
    meta = _nnunet_meta(root)
    if not images_dir.is_dir():  # one dataset per rater
        channels: dict[str, dict[int, Path]] = {}
        label_sets = {}
        for d in _per_rater_datasets(root):
            for cid, ch in _nnunet_channels(d / "imagesTr", problems).items():
                channels.setdefault(cid, ch)
            label_sets[d.name] = _images(d / "labelsTr", problems)
            meta = meta or _nnunet_meta(d)
    else:
        channels = _nnunet_channels(images_dir, problems)
        rater_dirs = _case_dirs(labels_dir) if labels_dir.is_dir() else []
        if rater_dirs:
            label_sets = {d.name: _images(d, problems) for d in rater_dirs}
        else:
            single = str((meta.get("multirater") or {}).get("label_name") or "label")
            label_sets = {single: _images(labels_dir, problems) if labels_dir.is_dir() else {}}
    sources = []
    for cid, ch in sorted(channels.items()):
        if sorted(ch) != [0]:
            problems.append(
                f"{images_dir}: case {cid} has channels {sorted(ch)}; only single-channel images (_0000) are supported"
            )
            continue
        if not _valid_id(cid, "case id", ch[0], problems):
            continue
        sources.append(Source(cid, ch[0], {r: files[cid] for r, files in label_sets.items() if cid in files}))
    ambiguous_images = (
        {stem for stem, fs in _image_files(images_dir).items() if len(fs) > 1} if images_dir.is_dir() else set()
    )
    for r, files in label_sets.items():
        _valid_id(r, "rater id", labels_dir / r if images_dir.is_dir() else root / r, problems)
        problems += [
            f"{f}: label without an image {cid}_0000 in imagesTr"
            for cid, f in files.items()
            if cid not in channels and f"{cid}_0000" not in ambiguous_images
        ]
    scan = _finish("nnunet", root, sources, problems)
    names = meta.get("channel_names") or meta.get("modality") or {}
    scan.modality = str(names.get("0")) if isinstance(names, dict) and names.get("0") else None
    return scan


def _nnunet_meta(root: Path) -> dict:
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _finish(layout: str, root: Path, sources: list[Source], problems: list[str]) -> Scan:
    """The scan, without files whose real path leaves ``root`` (a symbolic link out: listed as a
    problem, never read into the new dataset)."""

    def outside(path: Path) -> bool:
        if is_inside(root, path):
            return False
        problems.append(f"{path}: leads outside {root} (symbolic link?); not imported")
        return True

    sources = [s for s in sources if not outside(s.image)]
    for s in sources:
        s.masks = {r: f for r, f in s.masks.items() if not outside(f)}
    raters = sorted({r for s in sources for r in s.masks})
    return Scan(layout, root, sources, raters, problems)


def detect_layout(root) -> str:
    """``per-rater``, ``qubiq`` or ``nnunet`` for the folder ``root``; DatasetError saying what was
    expected when none fits."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if (root / "imagesTr").is_dir() or _per_rater_datasets(root):  # before dataset.json: nnU-Net has one too
        return "nnunet"
    if is_case_folder_dataset(root):
        raise DatasetError(f"{root} is already a case-folder dataset (dataset.json): open it directly")
    dirs = _case_dirs(root)
    stems = [set(_images(d)) for d in dirs]
    if any(any(_QUBIQ_RE.match(s) for s in st) for st in stems):
        return "qubiq"
    if any("image" in st and len(st) > 1 for st in stems):
        return "per-rater"
    raise DatasetError(
        f"{root}: no known layout (expected imagesTr/ + labelsTr/ (nnunet), or case folders holding "
        "image.nii.gz with task01_seg01.nii.gz ... (qubiq) or with one mask file per rater (per-rater))"
    )


def scan_folder(root, layout: str = "auto", task: int | None = None) -> Scan:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "per-rater":
        return scan_per_rater(root)
    if layout == "qubiq":
        return scan_qubiq(root, task)
    if layout == "nnunet":
        if not (root / "imagesTr").is_dir() and not _per_rater_datasets(root):
            raise DatasetError(f"{root}: no imagesTr/ folder, nor one nnU-Net dataset per rater (nnunet layout)")
        return scan_nnunet(root)
    raise DatasetError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)} or auto")


def load_source(src: Source, raters: list[str], problems: list[str]) -> MultiRaterCase | None:
    """Read one case, checking each mask as the loader does; problems appended per file. None
    when the image itself cannot be used; a bad mask leaves that rater missing."""
    try:
        image, geometry, _ = read_image(src.image)
    except MedicalIOError as e:
        problems.append(str(e))
        return None
    if image.ndim not in (2, 3):
        problems.append(f"{src.image}: {image.ndim}D image; 2D or 3D (single channel) expected")
        return None
    masks = np.zeros((len(raters), *image.shape), np.uint8)
    valid = np.zeros(len(raters), bool)
    for rater, path in src.masks.items():
        k = raters.index(rater)
        try:
            masks[k] = _read_mask(path, geometry, image.shape)
            valid[k] = True
        except DatasetError as e:
            problems.append(str(e))
    meta = {"patient_id": src.case_id, "source": str(src.image)}
    return MultiRaterCase(src.case_id, image, masks, valid, list(raters), geometry, meta)


def import_scan(
    scan: Scan,
    out,
    *,
    name: str | None = None,
    modality: str | None = None,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``scan`` as a case-folder dataset at ``out``. Raises :class:`ImportProblems` (nothing
    written) when there are problems and not ``skip_bad``. Returns a summary."""
    problems = list(scan.problems)  # every file is still read, so that every problem is listed at once
    if not scan.sources:
        raise ImportProblems(problems or [f"{scan.root}: no images found ({scan.layout} layout)"])
    if not scan.raters:
        raise ImportProblems(problems or [f"{scan.root}: no rater masks found ({scan.layout} layout)"])
    modality = modality or scan.modality or "unknown"
    written, missing = 0, 0
    with staged_folder(out) as tmp:
        manifest = new_manifest(
            name or Path(out).name,
            scan.raters,
            modality=modality,
            description=f"imported from {scan.root} ({scan.layout} layout)",
        )
        create_dataset(tmp, manifest)
        for i, src in enumerate(scan.sources, start=1):
            case = load_source(src, scan.raters, problems)
            if problems and not skip_bad:
                continue  # keep reading to report every problem; nothing will be kept
            if case is not None and case.valid.any():
                prov = {
                    r: {"kind": "imported", "layout": scan.layout, "source_file": str(src.masks[r])}
                    for k, r in enumerate(case.rater_names)
                    if case.valid[k]
                }
                write_imported_case(tmp, case, prov)
                written += 1
                missing += int((~case.valid).sum())
            elif case is not None:
                problems.append(f"{src.image}: no usable rater mask; case {src.case_id} left out")
            if progress is not None:
                progress(i, len(scan.sources))
        if problems and not skip_bad:
            raise ImportProblems(problems)
        if written == 0:
            raise ImportProblems(problems or ["no case could be imported"])
    return {
        "layout": scan.layout,
        "cases": written,
        "raters": list(scan.raters),
        "missing_masks": missing,
        "skipped": problems,
        "notes": scan.notes,
        "out": str(out),
        "modality": modality,
    }
