"""Import a BU-BIL dataset (Gurari et al., WACV 2015): real raters who keep their identity.

The Boston University Biomedical Image Library's segmentation benchmark has five (datasets 1, 2A,
3, 6) or three (2B, 4, 5) named experts who each outlined every image of a dataset, with two or
three annotation tools, so each expert has a *style* that stays theirs across images and a repeat
of each image (the same person with another tool) to measure their self-consistency. Layout::

    <dataset>/RawImages/<image>.png
    <dataset>/ExpertsAnnotations/Person<k>_<Tool>/seg_<image>.png   (or ExpertAnnotations/, or
    <dataset>/ExpertsAnnotations/<subset>/Person<k>_<Tool>/...       Expert<k>/ with one tool)

One tool (``tool``; default: the first tool every expert used, alphabetically) gives each expert's
annotation; another (``repeat_tool``; default: the next one) is stored as that expert's intra-rater
repeat (``raters/repeats/``), which ``multirater raters`` reads for self-agreement. BU-BIL masks
draw the object black (0) on a non-zero background (255, or small label values in ImCell and
datasets 4-5): the object is every pixel that is 0 in every channel. Images become single-channel
8-bit. Pixel spacing is not
in the files: 1 (pixels). The dataset is staged and renamed into place like every import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.contained import is_inside
from ..io.geometry import Geometry
from .case import DatasetError, MultiRaterCase
from .case_folder import check_identifier, create_dataset, new_manifest
from .import_layouts import ImportProblems
from .staging import staged_folder, write_imported_case

__all__ = ["BubilScan", "import_bubil", "scan_bubil"]

_RATER_DIR_RE = re.compile(r"^(?:(Person\d+)_([A-Za-z0-9]+)|(Expert\d+))$")
_ANNOTATION_DIRS = ("ExpertsAnnotations", "ExpertAnnotations")
MAX_IMAGE_PIXELS = 64_000_000  # an 8-bit 8000 x 8000 image; larger PNG headers are refused before decoding


@dataclass
class BubilScan:
    """What an import would read: images, and per expert and tool the mask file of each image."""

    root: Path
    images: dict[str, Path]
    masks: dict[tuple[str, str], dict[str, Path]]  # (expert, tool) -> image stem -> mask file
    tool: str
    repeat_tool: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def raters(self) -> list[str]:
        return sorted({r for r, t in self.masks if t == self.tool}, key=_natural)

    def describe(self) -> str:
        tools = sorted({t for _, t in self.masks})
        rep = f", repeats from {self.repeat_tool}" if self.repeat_tool else ", no repeat tool"
        return (
            f"{self.root}: BU-BIL layout, {len(self.images)} images, {len(self.raters)} experts "
            f"({', '.join(self.raters)}), tools {', '.join(tools)}; annotations from {self.tool}{rep}"
        )


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _annotation_dir(root: Path, subset: str | None) -> tuple[Path, Path]:
    """(images folder, folder holding the expert folders) for a dataset folder ``root``."""
    images = root / "RawImages"
    if not images.is_dir():
        raise DatasetError(f"{root}: no RawImages/ folder (expected a BU-BIL dataset folder such as BU-BIL_Dataset1)")
    found = [root / d for d in _ANNOTATION_DIRS if (root / d).is_dir()]
    if not found:
        raise DatasetError(f"{root}: no ExpertsAnnotations/ folder")
    ann = found[0]
    subsets = sorted(d.name for d in ann.iterdir() if d.is_dir() and not _RATER_DIR_RE.fullmatch(d.name))
    has_raters = any(_RATER_DIR_RE.fullmatch(d.name) for d in ann.iterdir() if d.is_dir())
    if subset is not None:
        if subset not in subsets:
            raise DatasetError(f"{ann}: no subset {subset!r} (found: {', '.join(subsets) or 'none'})")
        return images, ann / subset
    if not has_raters and subsets:
        raise DatasetError(f"{ann}: annotation subsets {', '.join(subsets)}: choose one with --subset")
    return images, ann


def scan_bubil(
    root, *, tool: str | None = None, repeat_tool: str | None = None, subset: str | None = None
) -> BubilScan:
    """Find the images and every expert's masks; nothing is read yet. DatasetError on a wrong folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    images_dir, ann = _annotation_dir(root, subset)
    masks: dict[tuple[str, str], dict[str, Path]] = {}
    problems: list[str] = []
    images: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and p.suffix.lower() == ".png" and p.stem[:1] != ".":
            if is_inside(root, p):
                images[p.stem] = p
            else:
                problems.append(f"{p}: leads outside {root} (symbolic link?); not imported")
    for d in sorted(ann.iterdir()):
        m = _RATER_DIR_RE.fullmatch(d.name) if d.is_dir() and not d.is_symlink() else None
        if m is None:
            continue
        expert, t = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), "default")
        files: dict[str, Path] = {}
        for f in sorted(d.iterdir()):
            if not (f.is_file() and f.suffix.lower() == ".png" and f.name.startswith("seg_")):
                continue
            if not is_inside(root, f):
                problems.append(f"{f}: leads outside {root} (symbolic link?); not imported")
                continue
            stem = f.stem[len("seg_") :]
            if stem in images:
                files[stem] = f
            else:
                problems.append(f"{f}: no image {stem}.png in {images_dir}")
        masks[(expert, t)] = files
    if not masks:
        raise DatasetError(f"{ann}: no expert folders (Person<k>_<Tool> or Expert<k>)")
    experts = sorted({e for e, _ in masks}, key=_natural)
    tools = sorted({t for _, t in masks})
    common = [t for t in tools if all((e, t) in masks for e in experts)]
    if tool is None:
        if not common:
            raise DatasetError(f"{ann}: no tool that every expert used; choose one with --tool ({', '.join(tools)})")
        tool = common[0]
    elif tool not in tools:
        raise DatasetError(f"{ann}: no tool {tool!r} (found: {', '.join(tools)})")
    if repeat_tool is None:
        others = [t for t in common if t != tool]
        repeat_tool = others[0] if others else None
    elif repeat_tool not in tools or repeat_tool == tool:
        raise DatasetError(f"{ann}: --repeat-tool must be another tool than {tool!r} (found: {', '.join(tools)})")
    for e in experts:
        check_identifier(e, "rater id")
    for stem in images:
        check_identifier(stem, "case id")
    return BubilScan(root, images, masks, tool, repeat_tool, problems)


def _read_png(path: Path, what: str) -> np.ndarray:
    """A PNG as a 2D array (colour averaged to grey); header size checked before decoding."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DatasetError(f"{path}: not a PNG file ({im.format})")
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DatasetError(f"{path}: {w}x{h} pixels is larger than the {MAX_IMAGE_PIXELS:,} allowed")
            a = np.asarray(im.convert("RGBA") if im.mode in ("P", "PA") else im)
    except DatasetError:
        raise
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read {what}: {e}") from None
    if a.ndim == 3:
        a = a[..., :3].max(axis=-1) if what == "mask" else a[..., :3].mean(axis=-1)
    return a


def _mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    a = _read_png(path, "mask")
    if a.shape != shape:
        raise DatasetError(f"{path}: mask {a.shape} does not match its image {shape}")
    return (a == 0).astype(np.uint8)  # BU-BIL draws the object black (0) on a white/non-zero background


def import_bubil(
    scan: BubilScan,
    out,
    *,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``scan`` as a case-folder dataset at ``out`` (staged; nothing is left on failure).
    Any unreadable file stops the import (:class:`ImportProblems` lists them). Returns a summary."""
    from ..annotation.lock import remove_idle_lock_files
    from ..annotation.repeats import save_repeat
    from ..annotation.store import AnnotationStore

    if scan.problems:
        raise ImportProblems(scan.problems)
    raters = scan.raters
    geometry = Geometry.identity(2)
    problems: list[str] = []
    n_cases = n_repeats = n_missing = 0
    with staged_folder(out) as tmp:
        manifest = new_manifest(
            name or Path(out).name,
            raters,
            modality="microscopy",
            intensity_window=[0.0, 255.0],
            description=f"BU-BIL (Gurari et al., WACV 2015) from {scan.root}: annotations drawn with {scan.tool}"
            + (f", intra-rater repeats with {scan.repeat_tool}" if scan.repeat_tool else ""),
        )
        create_dataset(tmp, manifest)
        repeats: list[tuple[str, str, np.ndarray, Path]] = []
        for i, (stem, ipath) in enumerate(sorted(scan.images.items(), key=lambda kv: _natural(kv[0])), start=1):
            try:
                image = np.clip(np.rint(_read_png(ipath, "image")), 0, 255).astype(np.uint8)
                masks = np.zeros((len(raters), *image.shape), np.uint8)
                valid = np.zeros(len(raters), bool)
                for k, r in enumerate(raters):
                    f = scan.masks[(r, scan.tool)].get(stem)
                    if f is not None:
                        masks[k], valid[k] = _mask(f, image.shape), True
                    if scan.repeat_tool and f is not None:
                        g = scan.masks.get((r, scan.repeat_tool), {}).get(stem)
                        if g is not None:
                            repeats.append((stem, r, _mask(g, image.shape), g))
            except DatasetError as e:
                problems.append(str(e))
                continue
            if not valid.any():
                continue
            case = MultiRaterCase(stem, image, masks, valid, raters, geometry, {"patient_id": stem})
            prov = {
                r: {
                    "kind": "imported",
                    "layout": "bu-bil",
                    "tool": scan.tool,
                    "source_file": str(scan.masks[(r, scan.tool)][stem]),
                }
                for k, r in enumerate(raters)
                if valid[k]
            }
            write_imported_case(tmp, case, prov)
            n_cases += 1
            n_missing += int((~valid).sum())
            if progress is not None:
                progress(i, len(scan.images))
        if problems:
            raise ImportProblems(problems)
        if n_cases == 0:
            raise ImportProblems([f"{scan.root}: no image has an expert mask"])
        store = AnnotationStore(tmp)
        for stem, r, mask, src in repeats:
            prov = {"kind": "imported", "layout": "bu-bil", "tool": scan.repeat_tool, "source_file": str(src)}
            save_repeat(store, stem, r, mask, provenance=prov)
            n_repeats += 1
        remove_idle_lock_files(tmp)  # the repeats' save locks: nobody else can hold them in a staged folder
    return {
        "cases": n_cases,
        "raters": raters,
        "tool": scan.tool,
        "repeat_tool": scan.repeat_tool,
        "repeats": n_repeats,
        "missing_masks": n_missing,
        "out": str(out),
    }
