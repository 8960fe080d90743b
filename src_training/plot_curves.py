"""Learning curves as a PNG from training run folders (``log.csv`` losses, ``val.csv`` metrics).

``python -m src_training.plot_curves --panel "fp32 vs bf16:fp32=RUN_A,bf16=RUN_B" --panel ... --out
docs/curves.png`` draws one panel per ``--panel``; ``--column dice_match --file val.csv`` plots a val
metric instead of the training loss. Lines are the raw logged values, nothing smoothed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def read_column(run: Path, column: str, file: str = "log.csv") -> tuple[list[int], list[float]]:
    """(steps, values) of one column of ``run/file``; rows without the column are skipped."""
    path = Path(run) / file
    steps, values = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            v = row.get(column)
            if v in (None, "", "nan"):
                continue
            steps.append(int(float(row["step"])))
            values.append(float(v))
    return steps, values


def plot_panels(
    panels: list[tuple[str, list[tuple[str, Path]]]],
    column: str,
    out: Path,
    file: str = "log.csv",
    ylabel: str | None = None,
) -> Path:
    """One subplot per ``(title, [(label, run), ...])``; writes ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (title, runs) in zip(axes.flat, panels):
        for label, run in runs:
            steps, values = read_column(run, column, file)
            ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel or column)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m src_training.plot_curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--panel",
        action="append",
        required=True,
        metavar="TITLE:LABEL=RUN,LABEL=RUN",
        help="one subplot: a title, then label=run-folder pairs (repeatable)",
    )
    p.add_argument("--column", default="loss", help="column to plot (default loss)")
    p.add_argument("--file", default="log.csv", help="log.csv (train losses) or val.csv (val metrics)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    panels = []
    try:
        for spec in args.panel:
            title, _, runs = spec.partition(":")
            pairs = [r.split("=", 1) for r in runs.split(",") if r]
            if not title or not pairs or any(len(x) != 2 for x in pairs):
                raise ValueError(f"--panel needs TITLE:LABEL=RUN[,LABEL=RUN...], got {spec!r}")
            panels.append((title, [(label, Path(run)) for label, run in pairs]))
        out = plot_panels(panels, args.column, Path(args.out), args.file)
    except (ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
