"""Compare raters lesion by lesion: which lesions each rater found, and how they agree on each one.

Each valid rater's mask is split into connected lesions (full connectivity: 26 neighbours in 3D,
8 in 2D). Lesions of different raters are the same finding when they overlap (one voxel in common)
or when their centroids are at most ``match_distance_mm`` apart; findings are the connected groups
of that relation (a rater's two lesions in one finding count as one outline of it). Per finding:

* ``n_found`` of ``n_raters``: how many valid raters outlined it (detection agreement);
* per rater who found it, against every other rater who found it (their lesions in this finding
  only): mean Dice, mean ASSD and HD95 (mm, :mod:`.overlap`), and ``volume_bias`` = (V_rater -
  mean V_others) / mean V_others. A finding of one rater has no agreement values (NaN).

Image-level numbers (pairwise Dice of whole masks, STAPLE, agreement map) stay per image.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .overlap import crop_box, dice, surface_distances

__all__ = [
    "LESION_COLUMNS",
    "LesionComparison",
    "compare_lesions",
    "detection_markdown",
    "lesion_markdown",
    "lesion_table",
]

NAN = float("nan")
MATCH_DISTANCE_MM = 5.0
LESION_COLUMNS = (  # (row key, title, number format): dock table, markdown and CSV share them
    ("lesion", "Lesion", None),
    ("found_by", "Found by", None),
    ("rater", "Rater", None),
    ("volume_mm3", "Volume (mm³)", ".1f"),
    ("volume_bias", "Volume bias", "+.2f"),
    ("dice_others", "Dice vs others", ".3f"),
    ("assd_mm", "ASSD (mm)", ".2f"),
    ("hd95_mm", "HD95 (mm)", ".2f"),
    ("centroid_zyx", "Centroid (z, y, x)", None),
)


@dataclass
class LesionComparison:
    """``findings``: one dict per finding (``lesion`` id L1.., ``n_found``, ``n_raters``, ``raters``
    who found it, ``centroid_zyx`` voxel index, ``volume_mm3`` mean, ``dice_mean`` / ``assd_mm_mean`` /
    ``hd95_mm_mean`` over the pairs of raters who found it); ``rows``: one dict per finding and valid
    rater (``found`` False: the rater missed it, values NaN); ``detection["k/n"]``: findings found by
    exactly k of the n valid raters (k = n..1)."""

    names: list[str]
    n_raters: int
    findings: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    detection: dict[str, int] = field(default_factory=dict)
    match_distance_mm: float = MATCH_DISTANCE_MM


def _groups(n: int, edges) -> list[list[int]]:
    """Connected components of ``n`` nodes under ``edges`` (union-find)."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        parent[find(i)] = find(j)
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(find(i), []).append(i)
    return list(out.values())


def _box(slices: list[tuple[slice, ...]], shape) -> tuple[slice, ...]:
    """Bounding box of several ``find_objects`` boxes, padded by one voxel."""
    return tuple(
        slice(max(min(s[d].start for s in slices) - 1, 0), min(max(s[d].stop for s in slices) + 1, shape[d]))
        for d in range(len(shape))
    )


def compare_lesions(
    masks: np.ndarray,
    valid: Sequence[bool] | None,
    names: Sequence[str],
    spacing_zyx: Sequence[float],
    *,
    match_distance_mm: float = MATCH_DISTANCE_MM,
    distances: bool = True,
    offset_zyx: Sequence[int] | None = None,
) -> LesionComparison:
    """Findings of the valid raters' masks (K, *shape) and their per-rater agreement (see the module
    docstring). ``distances=False`` leaves ASSD/HD95 NaN; ``offset_zyx`` is added to the reported
    centroids (masks cropped from a larger image)."""
    masks = np.asarray(masks) != 0
    names = list(names)
    k = masks.shape[0]
    ok = np.ones(k, bool) if valid is None else np.asarray(valid, bool)
    spacing = np.asarray([float(s) for s in spacing_zyx])
    voxel_mm3 = float(np.prod(spacing))
    offset = np.zeros(masks.ndim - 1) if offset_zyx is None else np.asarray(offset_zyx, float)
    raters = [r for r in range(k) if ok[r]]
    crop = crop_box(masks[ok].any(axis=0), 1) if raters else None
    if crop is not None:  # every lesion lies inside the union's box
        masks = masks[(slice(None), *crop)]
        offset = offset + [s.start for s in crop]
    labels: dict[int, np.ndarray] = {}
    lesions: list[tuple[int, int, tuple[slice, ...], np.ndarray, int]] = []  # rater, label, box, centroid, voxels
    structure = np.ones((3,) * (masks.ndim - 1), bool)
    for r in raters:
        lab, n = ndi.label(masks[r], structure)
        labels[r] = lab
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        cents = ndi.center_of_mass(np.ones_like(lab), lab, idx)
        for j, box in enumerate(ndi.find_objects(lab)):
            lesions.append((r, j + 1, box, np.asarray(cents[j]), int(sizes[j])))
    edges = []
    key = {(r, lab): i for i, (r, lab, *_) in enumerate(lesions)}
    for r, s in itertools.combinations(raters, 2):
        both = (labels[r] > 0) & (labels[s] > 0)
        pairs = np.unique(np.stack([labels[r][both], labels[s][both]]), axis=1).T  # overlapping lesion pairs
        edges += [(key[(r, int(a))], key[(s, int(b))]) for a, b in pairs]
    if lesions:
        near = cKDTree(np.stack([c for *_, c, _ in lesions]) * spacing).query_pairs(float(match_distance_mm))
        edges += [(i, j) for i, j in near if lesions[i][0] != lesions[j][0]]
    groups = _groups(len(lesions), edges)
    out = LesionComparison(names, len(raters), match_distance_mm=float(match_distance_mm))
    found_list = []
    for g in groups:
        box = _box([lesions[i][2] for i in g], masks.shape[1:])
        own = {r: np.zeros(tuple(s.stop - s.start for s in box), bool) for r in raters}
        for i in g:
            r, lab = lesions[i][0], lesions[i][1]
            own[r] |= labels[r][box] == lab
        finders = [r for r in raters if own[r].any()]
        voxels = sum(lesions[i][4] for i in g)
        centroid = sum(lesions[i][3] * lesions[i][4] for i in g) / voxels + offset
        found_list.append((g, box, own, finders, centroid))
    # largest agreement first, then the larger findings
    found_list.sort(key=lambda f: (-len(f[3]), -sum(int(f[2][r].sum()) for r in f[3])))
    for n, (_, _, own, finders, centroid) in enumerate(found_list, start=1):
        lesion_id = f"L{n}"
        pair: dict[tuple[int, int], tuple[float, float, float]] = {}
        for r, s in itertools.combinations(finders, 2):
            d = surface_distances(own[r], own[s], spacing) if distances else None
            vals = (dice(own[r], own[s]), d.assd_mm if d else NAN, d.hd95_mm if d else NAN)
            pair[(r, s)] = pair[(s, r)] = vals
        vol = {r: float(own[r].sum()) * voxel_mm3 for r in finders}
        cz = "(" + ", ".join(f"{c:.0f}" for c in centroid) + ")"
        found_by = f"{len(finders)}/{len(raters)}"
        pv = list({tuple(sorted(p)): v for p, v in pair.items()}.values())
        out.findings.append(
            {
                "lesion": lesion_id,
                "n_found": len(finders),
                "n_raters": len(raters),
                "raters": [names[r] for r in finders],
                "centroid_zyx": cz,
                "volume_mm3": float(np.mean(list(vol.values()))),
                "dice_mean": float(np.mean([v[0] for v in pv])) if pv else NAN,
                "assd_mm_mean": float(np.mean([v[1] for v in pv])) if pv else NAN,
                "hd95_mm_mean": float(np.mean([v[2] for v in pv])) if pv else NAN,
            }
        )
        for r in raters:
            row = {"lesion": lesion_id, "found_by": found_by, "rater": names[r], "found": r in finders}
            row.update(dict.fromkeys(("volume_mm3", "volume_bias", "dice_others", "assd_mm", "hd95_mm"), NAN))
            row["centroid_zyx"] = cz
            if r in finders:
                others = [s for s in finders if s != r]
                row["volume_mm3"] = vol[r]
                if others:
                    ref = float(np.mean([vol[s] for s in others]))
                    row["volume_bias"] = (vol[r] - ref) / ref
                    for c, key_ in enumerate(("dice_others", "assd_mm", "hd95_mm")):
                        row[key_] = float(np.mean([pair[(r, s)][c] for s in others]))
            out.rows.append(row)
    out.detection = detection_counts(out.findings, len(raters))
    return out


def detection_counts(findings: Sequence[dict], n_raters: int | None = None) -> dict[str, int]:
    """``{"k/n": findings found by exactly k of n raters}``, most raters first; with ``n_raters`` every
    k = n..1 is listed (zeros included), else only the k/n seen (cases with different n)."""
    seen = {(f["n_found"], f["n_raters"]) for f in findings}
    keys = sorted(
        seen | ({(k, n_raters) for k in range(1, n_raters + 1)} if n_raters else set()), key=lambda x: (-x[1], -x[0])
    )
    return {f"{k}/{n}": sum((f["n_found"], f["n_raters"]) == (k, n) for f in findings) for k, n in keys}


def lesion_table(rows: Sequence[dict], with_case: bool = False) -> tuple[list[str], list[list[str]]]:
    """``(header, rows of text)`` of lesion rows (the dock's table and the markdown's); a rater who
    missed the finding shows "missed"."""
    from .report import format_value

    cols = ((("case_id", "Case", None),) if with_case else ()) + LESION_COLUMNS
    header = [title for _, title, _ in cols]
    out = []
    for r in rows:
        out.append(
            [format_value(r.get(key), fmt) if r.get("found") or fmt is None else "missed" for key, _, fmt in cols]
        )
    return header, out


def detection_markdown(detection: dict[str, int], per_rater: dict[str, dict]) -> str:
    """Detection agreement (findings found by k of n raters) and, per rater, findings found, found
    alone and missed (found by at least one other rater), as markdown."""
    lines = ["| Found by (raters) | " + " | ".join(detection) + " |"]
    lines.append("|---|" + "---|" * len(detection))
    lines.append("| Findings | " + " | ".join(str(v) for v in detection.values()) + " |")
    lines += ["", "| Rater | Found | Found alone | Missed |", "|---|---|---|---|"]
    for name, s in per_rater.items():
        lines.append(f"| {name} | {s['found']} | {s['alone']} | {s['missed']} |")
    return "\n".join(lines) + "\n"


def rater_detection(rows: Sequence[dict]) -> dict[str, dict]:
    """Per rater: findings ``found``, found ``alone`` (no other rater), ``missed`` (found by others)."""
    out: dict[str, dict] = {}
    for r in rows:
        s = out.setdefault(r["rater"], {"found": 0, "alone": 0, "missed": 0})
        if r["found"]:
            s["found"] += 1
            s["alone"] += r["found_by"].startswith("1/")
        else:
            s["missed"] += 1
    return out


def lesion_markdown(rows: Sequence[dict], detection: dict[str, int], max_rows: int = 40) -> str:
    """Markdown of the lesion comparison: detection agreement, per-rater detection and, up to
    ``max_rows`` rows, the per-lesion table."""
    if not detection:
        return "No valid rater: no lesion comparison.\n"
    md = detection_markdown(detection, rater_detection(rows))
    with_case = len({r.get("case_id") for r in rows}) > 1
    if rows and len(rows) <= max_rows:
        header, cells = lesion_table(rows, with_case)
        md += "\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        md += "".join("| " + " | ".join(c) + " |\n" for c in cells)
    elif rows:
        md += f"\n({len(rows)} lesion rows: see lesions.csv)\n"
    return md
