"""Rater agreement and style analysis: overlap metrics, STAPLE, style report (no Qt/napari)."""

from .overlap import (
    SurfaceDistances,
    agreement_map,
    dice,
    jaccard,
    majority_vote,
    pairwise_overlap,
    surface_distances,
)
from .report import pairwise_heatmap_figure, style_markdown, write_style_report
from .staple import StapleResult, staple
from .style import METRICS, StyleReport, case_style, dataset_style, leave_one_out_consensus

__all__ = [
    "METRICS",
    "StapleResult",
    "StyleReport",
    "SurfaceDistances",
    "agreement_map",
    "case_style",
    "dataset_style",
    "dice",
    "jaccard",
    "leave_one_out_consensus",
    "majority_vote",
    "pairwise_heatmap_figure",
    "pairwise_overlap",
    "staple",
    "style_markdown",
    "surface_distances",
    "write_style_report",
]
