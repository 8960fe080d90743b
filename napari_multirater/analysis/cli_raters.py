"""``multirater raters``: rater-style report of a multi-rater dataset (CSV, markdown, PNG)."""

from __future__ import annotations

import argparse
import sys

from ..datasets.case import DatasetError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``raters`` subcommand on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "raters",
        help="rater-style report: volume bias, boundary distance, sensitivity, pairwise Dice",
        description="Compare every rater with the leave-one-out consensus of the others and "
        "write raters.csv, raters_per_case.csv, raters.md and PNG plots.",
    )
    p.add_argument("--data", required=True, help="dataset: case folder, LIDC npz file or folder")
    p.add_argument("--out", required=True, help="output directory for the report")
    p.add_argument("--split", default=None, help="dataset split (e.g. train/val/test)")
    p.add_argument("--max-cases", type=int, default=None, help="analyse at most N cases")
    p.add_argument("--consensus", choices=("staple", "majority"), default="staple",
                   help="leave-one-out reference (default: staple)")
    p.set_defaults(func=run)
    return p


def _progress(done: int, total: int | None, case_id: str) -> None:
    of = f"/{total}" if total else ""
    last = bool(total) and done >= total
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  analysing case {done}{of}: {case_id:<30.30}" + ("\n" if last else ""))
    elif done % 200 == 0 or last or done == 1:
        sys.stderr.write(f"  analysing case {done}{of}: {case_id}\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Load the dataset, build the style report, write it and print the markdown table."""
    from ..datasets import open_dataset
    from .report import style_markdown, write_style_report
    from .style import dataset_style

    if args.max_cases is not None and args.max_cases < 1:
        print("error: --max-cases must be at least 1", file=sys.stderr)
        return 2
    try:
        dataset = open_dataset(args.data, split=args.split)
        report = dataset_style(dataset, progress=_progress, consensus=args.consensus, max_cases=args.max_cases)
    except DatasetError as exc:
        sys.stderr.write("\n")
        print(f"error: cannot read dataset {args.data}: {exc}", file=sys.stderr)
        return 2
    if report.n_cases == 0:
        print(f"error: no cases in {args.data}" + (f" (split {args.split})" if args.split else ""), file=sys.stderr)
        return 2
    paths = write_style_report(report, args.out)
    print(style_markdown(report))
    print(f"report written to {paths['raters_md'].parent}")
    return 0
