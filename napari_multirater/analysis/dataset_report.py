"""The viewer's dataset report: rater style of a whole dataset folder, written outside it (Qt-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datasets.case import MultiRaterCase
from ..progress import Progress
from .overlap import crop_box
from .style import CROP_START, UNCROPPED_VOXELS

__all__ = ["dataset_report", "default_report_dir"]


def _light_case(case: MultiRaterCase, region_margin_mm: float) -> MultiRaterCase:
    """The case cropped to its raters' union (padded beyond case_style's own crop) with a
    zero-stride placeholder image and the uncropped voxel count (for whole-image STAPLE): same
    style metrics, a fraction of the memory."""
    spacing = case.geometry.scale_zyx
    masks = np.asarray(case.masks) != 0
    union = masks[case.valid].any(axis=0) if case.valid.any() else np.zeros(masks.shape[1:], bool)
    pad = int(np.ceil(region_margin_mm / min(spacing))) + 4
    box = crop_box(union, pad) or tuple(slice(0, 1) for _ in union.shape)
    cropped = masks[(slice(None), *box)].astype(np.uint8)
    image = np.broadcast_to(np.uint8(0), cropped.shape[1:])
    meta = {k: v for k, v in case.meta.items() if k != "sidecars"}
    meta[UNCROPPED_VOXELS] = int(np.prod(masks.shape[1:]))
    meta[CROP_START] = [s.start for s in box]
    return MultiRaterCase(case.case_id, image, cropped, case.valid, list(case.rater_names), case.geometry, meta)


def default_report_dir(dataset_dir) -> Path:
    """Suggested report folder ``~/multirater-reports/<dataset>-raters``: never inside the dataset,
    which may be read-only shared data (falls back to the working directory, then beside it)."""
    ds = Path(dataset_dir).expanduser().resolve()
    for base in (Path.home(), Path.cwd(), ds.parent):
        out = base.resolve() / "multirater-reports" / f"{ds.name}-raters"
        if ds != out and ds not in out.parents:
            return out
    return ds.parent / f"{ds.name}-raters"


def dataset_report(
    dataset_dir, out_dir=None, consensus: str = "staple", max_cases: int | None = None, region_margin_mm: float = 5.0
):
    """Generator: rater-style report of a dataset folder, one :class:`Progress` per case.

    Returns ``(StyleReport, {name: path}, problems)``: the report is written to ``out_dir``
    (default :func:`default_report_dir`, outside the dataset). Cases are read by the loop shared
    with ``multirater raters`` (:func:`~napari_multirater.analysis.cli_raters.iter_style_report`):
    broken cases are skipped and broken rater files left out, all listed in ``problems`` and the
    report's notes. Cases are kept cropped to their annotations, so large volumes do not
    accumulate in memory. Closing the generator (Cancel) stops at the next case.
    """
    from ..datasets import open_dataset
    from .cli_raters import iter_style_report
    from .report import write_style_report

    ds = open_dataset(dataset_dir)
    out = Path(out_dir) if out_dir else default_report_dir(dataset_dir)
    total = len(ds) if max_cases is None else min(len(ds), max_cases)
    gen = iter_style_report(
        ds,
        consensus=consensus,
        max_cases=max_cases,
        region_margin_mm=region_margin_mm,
        prepare=lambda case: _light_case(case, region_margin_mm),
    )
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            report, problems = stop.value
            break
        yield Progress(min(item.done, total), total + 1, item.message)
    yield Progress(total + 1, total + 1, "writing report")
    paths = write_style_report(report, out)
    from .self_agreement import project_self_agreement, write_self_agreement

    rows = project_self_agreement(dataset_dir)  # intra-rater repeats: self-agreement next to the others
    if rows:
        paths.update(write_self_agreement(rows, out))
    return report, paths, problems
