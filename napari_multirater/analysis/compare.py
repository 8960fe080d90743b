"""Compare the raters of one case: pairwise overlap and surface distances, STAPLE and majority
consensus, agreement count, per-rater style, model-vs-rater matching and the per-lesion
comparison (:mod:`.lesions`) (Qt-free).

:func:`compare_masks` is a generator that yields a :class:`Progress` per rater pair / step and
returns a :class:`CompareResult`; it touches no layer, so the viewer runs it as a job (Cancel takes
effect at the next yield) and scripts drive it with :func:`~napari_multirater.progress.run_to_completion`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..datasets.case import MultiRaterCase
from ..io.geometry import Geometry
from ..progress import Progress
from .lesions import LesionComparison, compare_lesions
from .model_vs_raters import model_vs_raters
from .overlap import agreement_map, distance_values, majority_vote, pairwise_overlap, surface_distances
from .staple import StapleResult, staple
from .style import case_style

__all__ = ["CompareResult", "compare_masks"]


@dataclass
class CompareResult:
    names: list[str]
    pairwise: dict  # pairwise_overlap() dict: dice, iou, hausdorff_mm, hd95_mm, assd_mm, missing, empty
    staple: StapleResult
    majority: np.ndarray
    agreement: np.ndarray
    style_rows: list[dict]
    model_rows: list[dict]
    consensus_method: str
    distances: bool
    messages: list[str] = field(default_factory=list)
    lesions: LesionComparison | None = None  # per-lesion comparison and detection agreement


def compare_masks(
    masks: np.ndarray,
    names: Sequence[str],
    spacing_zyx: Sequence[float],
    *,
    case: MultiRaterCase | None = None,
    distances: bool = True,
    consensus: str = "staple",
    outputs: dict[str, np.ndarray] | None = None,
    valid: Sequence[bool] | None = None,
) -> Generator[Progress, None, CompareResult]:
    """Generator: yields :class:`Progress` per pair of raters and per step, returns the result."""
    masks = np.asarray(masks) != 0
    names = list(names)
    k = masks.shape[0]
    ok = np.ones(k, bool) if valid is None else np.asarray(valid, bool)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k) if ok[i] and ok[j]]
    total = (len(pairs) if distances else 1) + 5
    done = 0
    pw = pairwise_overlap(masks, ok, spacing_zyx, names, distances=False)
    if distances:
        for i, j in pairs:
            for key, v in distance_values(surface_distances(masks[i], masks[j], spacing_zyx)).items():
                pw[key][i, j] = pw[key][j, i] = v
            done += 1
            yield Progress(done, total, f"{names[i]} vs {names[j]}")
    else:
        done += 1
        yield Progress(done, total, "overlap")
    st = staple(masks, ok)
    done += 1
    yield Progress(done, total, "STAPLE")
    maj = majority_vote(masks, ok)
    agree = agreement_map(masks, ok)
    done += 1
    yield Progress(done, total, "majority vote")
    if case is None:
        geo = Geometry(
            tuple(float(s) for s in spacing_zyx[::-1]),
            (0.0,) * len(spacing_zyx),
            tuple(np.eye(len(spacing_zyx)).ravel().tolist()),
        )
        case = MultiRaterCase("viewer", np.zeros(masks.shape[1:], np.uint8), masks.astype(np.uint8), ok, names, geo)
    style = case_style(case, consensus=consensus) if ok.sum() >= 2 else []
    done += 1
    yield Progress(done, total, "rater style")
    model_rows = model_vs_raters(masks, ok, names, outputs or {})
    done += 1
    yield Progress(done, total, "model vs raters")
    lesions = compare_lesions(masks, ok, names, spacing_zyx, distances=distances)
    done += 1
    yield Progress(done, total, "lesions")
    msgs = []
    if pw["missing"]:
        msgs.append("missing raters: " + ", ".join(pw["missing"]))
    if pw["empty"]:
        msgs.append("empty masks (nothing marked): " + ", ".join(pw["empty"]))
    if st.note:
        msgs.append(f"STAPLE: {st.note}")
    return CompareResult(names, pw, st, maj, agree, style, model_rows, consensus, distances, msgs, lesions)
