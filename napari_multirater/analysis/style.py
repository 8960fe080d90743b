"""Rater-style report: how each rater systematically differs from the others.

Each rater is compared with a **leave-one-out consensus** of the *other* valid raters (STAPLE by
default, or majority vote), so a rater never pulls the reference towards itself. With exactly one
other valid rater that rater's mask is the reference; with none, the metrics are NaN.

Per rater and case (physical units from ``case.geometry.scale_zyx``):

* ``volume_bias`` = (V_rater - V_consensus) / V_consensus (NaN when the consensus is empty);
* ``signed_boundary_mm``: mean over the rater's contour voxels of the consensus' signed distance
  map (positive = the rater's boundary lies outside the consensus, i.e. over-segmentation);
* ``assd_mm``, ``hd95_mm``, ``hausdorff_mm``: ASSD, HD95 and HD rater <-> consensus (surface
  distances as defined in :mod:`.overlap`);
* ``sensitivity`` = |R & C| / |C|; ``specificity`` = |~R & ~C| / |~C| counted only inside the
  *evaluation region*: the union of all valid raters' masks dilated by ``region_margin_mm`` (the
  whole-image background would make every specificity ~1);
* ``dice_consensus`` and ``dice_vs_<other>`` (Dice with every other valid rater; ``dice_others``
  is their mean). Empty/missing conventions follow :mod:`.overlap`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..datasets.case import MultiRaterCase
from ..progress import Progress, run_to_completion
from .lesions import LesionComparison, compare_lesions
from .overlap import contour, crop_box, dice, distance_values, majority_vote, signed_distance, surface_distances
from .staple import staple

__all__ = [
    "METRICS",
    "StyleReport",
    "case_lesions",
    "case_style",
    "dataset_style",
    "iter_dataset_style",
    "leave_one_out_consensus",
]

METRICS = (
    "volume_bias",
    "signed_boundary_mm",
    "assd_mm",
    "hd95_mm",
    "hausdorff_mm",
    "sensitivity",
    "specificity",
    "dice_consensus",
    "dice_others",
)
NAN = float("nan")
UNCROPPED_VOXELS = "uncropped_voxels"  # case.meta key: voxel count of the image a cropped case came from
CROP_START = "crop_start_in_image"  # case.meta key: (z, y, x) index of a cropped case's first voxel there


def leave_one_out_consensus(
    masks: np.ndarray, valid: np.ndarray, r: int, method: str = "staple", image_voxels: int | None = None
):
    """Consensus of the valid raters other than ``r``: (bool mask or None, number of raters used).
    ``image_voxels``: see :func:`~.staple.staple` (masks cropped from a larger image)."""
    others = np.asarray(valid, bool).copy()
    others[r] = False
    n = int(others.sum())
    if n == 0:
        return None, 0
    if n == 1:
        return masks[np.flatnonzero(others)[0]].astype(bool), 1
    if method == "staple":
        return staple(masks, others, image_voxels=image_voxels).consensus.astype(bool), n
    if method == "majority":
        return majority_vote(masks, others).astype(bool), n
    raise ValueError(f"unknown consensus method {method!r} (staple or majority)")


def _compare(rm: np.ndarray, cm: np.ndarray, region: np.ndarray, spacing, voxel_mm3: float) -> dict:
    vr, vc = rm.sum() * voxel_mm3, cm.sum() * voxel_mm3
    out = {"volume_mm3": float(vr), "consensus_volume_mm3": float(vc)}
    out["volume_bias"] = float((vr - vc) / vc) if vc > 0 else NAN
    out["sensitivity"] = float((rm & cm).sum() / cm.sum()) if cm.any() else NAN
    bg = region & ~cm
    out["specificity"] = float((bg & ~rm).sum() / bg.sum()) if bg.any() else NAN
    out["dice_consensus"] = dice(rm, cm)
    out.update(distance_values(surface_distances(rm, cm, spacing)))
    if rm.any() and cm.any():
        out["signed_boundary_mm"] = float(signed_distance(cm, spacing)[contour(rm)].mean())
    else:
        out["signed_boundary_mm"] = 0.0 if not (rm.any() or cm.any()) else NAN
    return out


def case_style(case: MultiRaterCase, consensus: str = "staple", region_margin_mm: float = 5.0) -> list[dict]:
    """One row (dict) per rater of ``case``; see the module docstring for the columns. The STAPLE
    reference is that of the whole image: ``case.meta[UNCROPPED_VOXELS]`` gives its voxel count
    when the case is a crop of it (nothing marked outside)."""
    spacing = tuple(float(s) for s in case.geometry.scale_zyx)
    masks = np.asarray(case.masks) != 0
    image_voxels = int(case.meta.get(UNCROPPED_VOXELS) or np.prod(masks.shape[1:]))
    valid = np.asarray(case.valid, bool)
    names = list(case.rater_names)
    union = masks[valid].any(axis=0) if valid.any() else np.zeros(masks.shape[1:], bool)
    pad = max(int(np.ceil(region_margin_mm / min(spacing))) + 2, 2)
    box = crop_box(union, pad)
    if box is not None:  # every metric is unchanged by this crop (it holds the whole region)
        masks, union = masks[(slice(None), *box)], union[box]
    region = ndi.distance_transform_edt(~union, sampling=spacing) <= region_margin_mm if union.any() else union
    voxel_mm3 = float(np.prod(spacing))
    rows = []
    for r, name in enumerate(names):
        row = {
            "case_id": case.case_id,
            "rater": name,
            "valid": bool(valid[r]),
            "empty": bool(valid[r] and not masks[r].any()),
        }
        row.update({m: NAN for m in METRICS})
        row.update({"volume_mm3": NAN, "consensus_volume_mm3": NAN, "n_reference_raters": 0})
        for o, other in enumerate(names):
            if o != r:
                row[f"dice_vs_{other}"] = dice(masks[r], masks[o]) if valid[r] and valid[o] else NAN
        if valid[r]:
            others = [row[f"dice_vs_{n}"] for o, n in enumerate(names) if o != r and valid[o]]
            row["dice_others"] = float(np.mean(others)) if others else NAN
            cm, n_ref = leave_one_out_consensus(masks, valid, r, consensus, image_voxels)
            row["n_reference_raters"] = n_ref
            if cm is not None:
                row.update(_compare(masks[r], cm, region, spacing, voxel_mm3))
        rows.append(row)
    return rows


@dataclass
class StyleReport:
    """Dataset-level rater-style report.

    rows: per (case, rater) dicts from :func:`case_style`; summary: rater -> {"n_cases",
    "n_missing", "n_empty", "<metric>_mean|_median|_std|_n"}; pairwise_dice: K x K mean Dice over
    the cases where both raters are valid (both empty counts as 1); pairwise_n: those counts;
    lesion_findings / lesion_rows: :func:`case_lesions` of every case (with ``case_id``).
    """

    rater_names: list[str]
    rows: list[dict]
    summary: dict[str, dict]
    pairwise_dice: np.ndarray
    pairwise_n: np.ndarray
    consensus: str
    n_cases: int
    region_margin_mm: float = 5.0
    notes: list[str] = field(default_factory=list)
    lesion_findings: list[dict] = field(default_factory=list)
    lesion_rows: list[dict] = field(default_factory=list)


def case_lesions(case: MultiRaterCase, distances: bool = True) -> LesionComparison:
    """:func:`~.lesions.compare_lesions` of a case (centroids in the uncropped image's voxels)."""
    return compare_lesions(
        case.masks,
        case.valid,
        case.rater_names,
        case.geometry.scale_zyx,
        distances=distances,
        offset_zyx=case.meta.get(CROP_START),
    )


def _stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    n = v.size
    return {
        "mean": float(v.mean()) if n else NAN,
        "median": float(np.median(v)) if n else NAN,
        "std": float(v.std(ddof=1)) if n > 1 else NAN,
        "n": int(n),
    }


def dataset_style(
    cases: Iterable[MultiRaterCase],
    progress: Callable[[int, int | None, str], None] | None = None,
    consensus: str = "staple",
    region_margin_mm: float = 5.0,
    max_cases: int | None = None,
) -> StyleReport:
    """Run :func:`case_style` on every case and aggregate per rater.

    ``progress(done, total_or_None, case_id)`` is called after each case. Raters are matched by
    name (order of first appearance); std is the sample std (ddof=1).
    """
    return run_to_completion(
        iter_dataset_style(cases, consensus, region_margin_mm, max_cases),
        None if progress is None else lambda p: progress(p.done, p.total, p.message),
    )


def iter_dataset_style(
    cases: Iterable[MultiRaterCase],
    consensus: str = "staple",
    region_margin_mm: float = 5.0,
    max_cases: int | None = None,
) -> Generator[Progress, None, StyleReport]:
    """Generator form of :func:`dataset_style`: one :class:`Progress` (message: the case id) per
    case, returns the :class:`StyleReport`; closing it stops before the next case."""
    total = len(cases) if hasattr(cases, "__len__") else None
    if max_cases is not None:
        cases = itertools.islice(cases, max_cases)
        total = max_cases if total is None else min(total, max_cases)
    names: list[str] = []
    rows: list[dict] = []
    dsum: dict[tuple[str, str], float] = {}
    dn: dict[tuple[str, str], int] = {}
    n_cases = 0
    findings: list[dict] = []
    lesion_rows: list[dict] = []
    for case in cases:
        case_rows = case_style(case, consensus, region_margin_mm)
        rows.extend(case_rows)
        les = case_lesions(case)
        findings += [{"case_id": case.case_id, **f} for f in les.findings]
        lesion_rows += [{"case_id": case.case_id, **r} for r in les.rows]
        for row in case_rows:
            if row["rater"] not in names:
                names.append(row["rater"])
            for key, v in row.items():
                if key.startswith("dice_vs_") and np.isfinite(v):
                    pair = (row["rater"], key[len("dice_vs_") :])
                    dsum[pair] = dsum.get(pair, 0.0) + v
                    dn[pair] = dn.get(pair, 0) + 1
            if row["valid"]:
                pair = (row["rater"], row["rater"])
                dsum[pair], dn[pair] = dsum.get(pair, 0.0) + 1.0, dn.get(pair, 0) + 1
        n_cases += 1
        yield Progress(n_cases, total, case.case_id)
    k = len(names)
    pw, pn = np.full((k, k), NAN), np.zeros((k, k), int)
    for (a, b), n in dn.items():
        i, j = names.index(a), names.index(b)
        pw[i, j], pn[i, j] = dsum[(a, b)] / n, n
    summary = {}
    for name in names:
        mine = [r for r in rows if r["rater"] == name]
        s = {
            "n_cases": sum(r["valid"] for r in mine),
            "n_missing": sum(not r["valid"] for r in mine),
            "n_empty": sum(r["empty"] for r in mine),
        }
        for m in METRICS:
            for stat, v in _stats([r[m] for r in mine if r["valid"]]).items():
                s[f"{m}_{stat}"] = v
        summary[name] = s
    notes = []
    if n_cases == 0:
        notes.append("no cases")
    return StyleReport(names, rows, summary, pw, pn, consensus, n_cases, region_margin_mm, notes, findings, lesion_rows)
