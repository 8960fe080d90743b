"""Write a :class:`~.style.StyleReport` as CSV, markdown and PNG plots (matplotlib Agg only)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import atomic_write_bytes, atomic_write_text
from .style import METRICS, StyleReport

__all__ = ["write_style_report", "style_markdown", "pairwise_heatmap_figure", "CONVENTIONS"]

CONVENTIONS = """\
- Reference: each rater is compared with the **leave-one-out consensus ({consensus})** of the
  other valid raters of the case (one other rater: that rater; none: metrics undefined).
- Volume bias = (V_rater - V_consensus) / V_consensus; undefined (NaN) when the consensus is empty.
- Signed boundary (mm): mean signed distance of the rater's contour to the consensus boundary;
  positive = outside (over-segments), negative = inside (under-segments).
- ASSD (mm): average symmetric surface distance; HD95 (mm): the larger of the two directed 95th
  percentiles of the surface distances; HD: Hausdorff distance (mm) between the surfaces (as MONAI).
- STAPLE runs on the whole image (never a crop of it).
- Specificity is counted inside the union of all raters' masks dilated by {margin:g} mm.
- Dice vs others: mean Dice with every other valid rater in the same case. Pairwise matrix: mean
  over cases where both raters are valid; two empty masks count as Dice 1.
- Empty masks: Dice 0 and distances undefined against a non-empty mask. Missing raters are
  skipped (counted in "missing"). Values are mean ± sample std over cases ({n_cases} cases)."""

STYLE_COLUMNS = (  # (metric key, column title, number format): the one definition of the style table
    ("volume_bias", "Volume bias", "+.2f"),
    ("signed_boundary_mm", "Signed boundary (mm)", "+.2f"),
    ("assd_mm", "ASSD (mm)", ".2f"),
    ("hd95_mm", "HD95 (mm)", ".2f"),
    ("hausdorff_mm", "HD (mm)", ".2f"),
    ("sensitivity", "Sensitivity", ".3f"),
    ("specificity", "Specificity", ".3f"),
    ("dice_consensus", "Dice vs consensus", ".3f"),
    ("dice_others", "Dice vs others", ".3f"),
)
_MD_COLUMNS = tuple(c for c in STYLE_COLUMNS if c[0] != "dice_consensus")


def format_value(value, fmt: str | None) -> str:
    """A table cell: formatted number, '–' for missing/NaN; ``fmt=None`` shows the value as text."""
    if fmt is None:
        return "" if value is None else str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if not np.isfinite(v) else format(v, fmt)


def style_markdown(report: StyleReport) -> str:
    """Markdown table (one row per rater, mean ± std) followed by the conventions."""
    head = ["Rater", "Cases", "Missing", "Empty"] + [title for _, title, _ in _MD_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in report.rater_names:
        s = report.summary[name]
        cells = [name, str(s["n_cases"]), str(s["n_missing"]), str(s["n_empty"])]
        for key, _, fmt in _MD_COLUMNS:
            mean, std = s[f"{key}_mean"], s[f"{key}_std"]
            cells.append(
                format_value(mean, fmt) + ("" if not np.isfinite(std) else " ± " + format_value(std, fmt.lstrip("+")))
            )
        lines.append("| " + " | ".join(cells) + " |")
    conv = CONVENTIONS.format(consensus=report.consensus, margin=report.region_margin_mm, n_cases=report.n_cases)
    notes = "".join(f"\n- Note: {n}" for n in report.notes)
    return "\n".join(lines) + "\n\n" + conv + notes + "\n\n" + lesion_section(report)


def lesion_section(report: StyleReport) -> str:
    """The per-lesion part of the report: detection agreement over all cases, per-rater detection
    and (when short) the lesion table; its conventions in one paragraph."""
    from .lesions import MATCH_DISTANCE_MM, detection_counts, lesion_markdown

    head = (
        "**Per lesion.** Each rater's mask is split into connected lesions (3D on volumes); lesions of different "
        f"raters are one finding when they overlap or their centroids are <= {MATCH_DISTANCE_MM:g} mm apart. "
        "Per finding, each rater who found it is compared with the other raters who found it (mean Dice, "
        'ASSD, HD95; volume bias vs their mean volume); "missed": found by another rater, not by this one.\n\n'
    )
    return head + lesion_markdown(report.lesion_rows, detection_counts(report.lesion_findings))


LESION_CSV_COLUMNS = (
    "case_id",
    "lesion",
    "found_by",
    "rater",
    "found",
    "volume_mm3",
    "volume_bias",
    "dice_others",
    "assd_mm",
    "hd95_mm",
    "centroid_zyx",
)


def lesions_csv(rows: Sequence[dict]) -> str:
    """lesions.csv: one row per (case, finding, rater); see :mod:`.lesions`."""
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=LESION_CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return f.getvalue()


_SEPARATORS = " _-.:/"


def short_labels(names: Sequence[str]) -> list[str]:
    """Names without the prefix and suffix they all share, cut at a separator (``mr rater: ``,
    ``case12_``, ``_mask``): ``alice``, ``bob`` for ``case12_alice_mask``, ``case12_bob_mask``."""
    names = [str(n) for n in names]
    if len(names) < 2:
        return names
    pre = os.path.commonprefix(names)
    pre = pre[: max((pre.rfind(c) for c in _SEPARATORS), default=-1) + 1]
    rev = os.path.commonprefix([n[len(pre) :][::-1] for n in names])
    cut = max((rev.rfind(c) for c in _SEPARATORS), default=-1) + 1
    out = [n[len(pre) : len(n) - cut] for n in names]
    return out if all(out) and len(set(out)) == len(out) else names


def pairwise_heatmap_figure(
    matrix: np.ndarray,
    names: Sequence[str],
    title: str = "",
    fmt: str = ".2f",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    cmap: str = "viridis",
) -> Figure:
    """K x K heatmap with the value printed in each cell (NaN shown as '–'); Agg canvas attached."""
    m = np.asarray(matrix, float)
    k = len(names)
    size = 1.2 + 0.75 * max(k, 2)
    fig = Figure(figsize=(size + 1.2, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax)
    labels = short_labels(names)
    ax.set_xticks(range(k), labels=labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=labels)
    norm_hi = im.norm.vmax if im.norm.vmax is not None else 1.0
    norm_lo = im.norm.vmin if im.norm.vmin is not None else 0.0
    mid = (norm_hi + norm_lo) / 2
    for i in range(k):
        for j in range(k):
            v = m[i, j]
            color = "black" if np.isfinite(v) and v > mid else "white"
            ax.text(
                j,
                i,
                format_value(v, fmt),
                ha="center",
                va="center",
                fontsize=9,
                color=color if np.isfinite(v) else "gray",
            )
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def _strip_figure(report: StyleReport, metrics: Sequence[tuple[str, str]], zero_line: bool = True) -> Figure:
    names = report.rater_names
    fig = Figure(figsize=(1.5 + 1.3 * max(len(names), 2) * len(metrics), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    rng = np.random.default_rng(0)
    for p, (key, label) in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), p + 1)
        data = [np.asarray([r[key] for r in report.rows if r["rater"] == n and r["valid"]], float) for n in names]
        data = [d[np.isfinite(d)] for d in data]
        pos = [i + 1 for i, d in enumerate(data) if d.size]
        if pos:
            ax.boxplot([data[i - 1] for i in pos], positions=pos, widths=0.5, showfliers=False)
        for i, d in enumerate(data):
            ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, d.size), d, s=12, alpha=0.6, zorder=3)
        if zero_line:
            ax.axhline(0.0, color="gray", lw=0.8, ls="--")
        ax.set_xticks(range(1, len(names) + 1), labels=names, rotation=30, ha="right")
        ax.set_xlim(0.4, len(names) + 0.6)
        ax.set_ylabel(label)
    fig.tight_layout()
    return fig


STYLE_REPORT_FILES = {
    "raters_csv": "raters.csv",
    "raters_per_case_csv": "raters_per_case.csv",
    "pairwise_dice_csv": "pairwise_dice.csv",
    "raters_md": "raters.md",
    "pairwise_dice_png": "pairwise_dice.png",
    "volume_bias_png": "volume_bias.png",
    "boundary_distance_png": "boundary_distance.png",
    "lesions_csv": "lesions.csv",
}


def write_style_report(report: StyleReport, out_dir: str | Path) -> dict[str, Path]:
    """Write raters.csv, raters_per_case.csv, pairwise_dice.csv, lesions.csv, raters.md and three PNGs.

    Returns {"raters_csv", "raters_per_case_csv", "pairwise_dice_csv", "lesions_csv", "raters_md",
    "pairwise_dice_png", "volume_bias_png", "boundary_distance_png"} -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in STYLE_REPORT_FILES.items()}
    stat_cols = [f"{m}_{s}" for m in METRICS for s in ("mean", "median", "std", "n")]
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["rater", "n_cases", "n_missing", "n_empty", *stat_cols])
    for n in report.rater_names:
        s = report.summary[n]
        w.writerow([n, s["n_cases"], s["n_missing"], s["n_empty"], *[s[c] for c in stat_cols]])
    atomic_write_text(paths["raters_csv"], f.getvalue())
    cols: list[str] = []
    for row in report.rows:
        cols += [c for c in row if c not in cols]
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=cols, restval="")
    w.writeheader()
    w.writerows(report.rows)
    atomic_write_text(paths["raters_per_case_csv"], f.getvalue())
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["rater", *report.rater_names])
    for n, vals in zip(report.rater_names, report.pairwise_dice):
        w.writerow([n, *vals.tolist()])
    atomic_write_text(paths["pairwise_dice_csv"], f.getvalue())
    atomic_write_text(paths["lesions_csv"], lesions_csv(report.lesion_rows))
    atomic_write_text(paths["raters_md"], f"# Rater style report ({report.n_cases} cases)\n\n" + style_markdown(report))
    figs = {
        "pairwise_dice_png": pairwise_heatmap_figure(
            report.pairwise_dice, report.rater_names, "Mean pairwise Dice", ".2f"
        ),
        "volume_bias_png": _strip_figure(report, [("volume_bias", "relative volume bias vs consensus")]),
        "boundary_distance_png": _strip_figure(
            report,
            [
                ("signed_boundary_mm", "signed boundary distance (mm)"),
                ("assd_mm", "ASSD (mm)"),
            ],
        ),
    }
    for key, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(paths[key], buf.getvalue())
    return paths
