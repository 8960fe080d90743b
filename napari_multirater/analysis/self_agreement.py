"""Intra-rater agreement: each rater's repeat (drawn again blind) against their own first mask,
next to their agreement with the other raters on the same project (Dice, HD95 in mm).

Conventions as :mod:`.overlap` (both empty: Dice 1, HD95 0; one empty: Dice 0, HD95 undefined).
HD95 is that of :mod:`.overlap` (the larger directed 95th percentile of the surface distances, mm). "Others" is
the mean over every case the rater annotated and every other rater who annotated it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..datasets.case import DatasetError
from ..io.atomic import atomic_write_text
from .overlap import dice, surface_distances

__all__ = ["hd95", "project_self_agreement", "self_agreement", "self_agreement_markdown", "write_self_agreement"]

COLUMNS = ("rater", "n_repeats", "self_dice", "self_hd95_mm", "n_pairs_others", "others_dice", "others_hd95_mm")


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx) -> float:
    """95th percentile Hausdorff distance (mm) between two binary masks (see :mod:`.overlap`)."""
    return surface_distances(a, b, spacing_zyx).hd95_mm


def _mean(v) -> float:
    v = np.asarray([x for x in v if np.isfinite(x)], float)
    return float(v.mean()) if v.size else float("nan")


def self_agreement(store, raters=None) -> list[dict]:
    """One row per rater (see ``COLUMNS``); raters without a repeat get NaN self scores."""
    from ..annotation.repeats import load_repeat

    raters = list(raters) if raters is not None else store.raters()
    rows = []
    for r in raters:
        self_d, self_h, oth_d, oth_h = [], [], [], []
        for cid in store.case_ids():
            if not store.has_mask(cid, r):
                continue
            try:
                first, _ = store.load_mask(cid, r)
                geo = store._image_info(cid).geometry
            except DatasetError:
                continue
            spacing = tuple(abs(float(s)) for s in geo.scale_zyx)[-first.ndim :]
            try:
                rep, _ = load_repeat(store, cid, r)
            except DatasetError:
                rep = None
            if rep is not None:
                self_d.append(dice(first, rep))
                self_h.append(hd95(first, rep, spacing))
            for other in store.annotated_raters(cid):
                if other == r:
                    continue
                try:
                    m, _ = store.load_mask(cid, other)
                except DatasetError:
                    continue
                if m is not None:
                    oth_d.append(dice(first, m))
                    oth_h.append(hd95(first, m, spacing))
        rows.append(
            {
                "rater": r,
                "n_repeats": len(self_d),
                "self_dice": _mean(self_d),
                "self_hd95_mm": _mean(self_h),
                "n_pairs_others": len(oth_d),
                "others_dice": _mean(oth_d),
                "others_hd95_mm": _mean(oth_h),
            }
        )
    return rows


def _f(v, fmt=".3f") -> str:
    return "–" if not np.isfinite(v) else format(v, fmt)


def self_agreement_markdown(rows: list[dict]) -> str:
    """Markdown table: self-agreement next to agreement with the others."""
    lines = [
        "| Rater | Repeats | Self Dice | Self HD95 (mm) | Dice vs others | HD95 vs others (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rater']} | {r['n_repeats']} | {_f(r['self_dice'])} | {_f(r['self_hd95_mm'], '.2f')} | "
            f"{_f(r['others_dice'])} | {_f(r['others_hd95_mm'], '.2f')} |"
        )
    return "\n".join(lines) + (
        "\n\nSelf: each repeat (drawn again blind) against the rater's first mask of the "
        "case. Others: the rater's first masks against every other rater on the same cases.\n"
    )


SELF_AGREEMENT_FILES = {"self_agreement_csv": "self_agreement.csv", "self_agreement_md": "self_agreement.md"}


def write_self_agreement(rows: list[dict], out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=list(COLUMNS))
    w.writeheader()
    w.writerows(rows)
    paths = {key: out / name for key, name in SELF_AGREEMENT_FILES.items()}
    atomic_write_text(paths["self_agreement_csv"], f.getvalue())
    atomic_write_text(paths["self_agreement_md"], "# Intra-rater agreement\n\n" + self_agreement_markdown(rows))
    return paths


def project_self_agreement(path) -> list[dict] | None:
    """Rows of :func:`self_agreement` for an annotation project with at least one repeat, else None
    (not a case-folder project, or nobody repeated a case)."""
    from ..annotation.repeats import repeat_cases
    from ..annotation.store import AnnotationStore
    from ..datasets.case_folder import is_case_folder_dataset

    if not is_case_folder_dataset(path):
        return None
    store = AnnotationStore(path)
    if not any(repeat_cases(store, r) for r in store.raters()):
        return None
    return self_agreement(store)
