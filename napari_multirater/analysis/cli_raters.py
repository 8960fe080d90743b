"""``multirater raters``: rater-style report of a multi-rater dataset (CSV, markdown, PNG).

:func:`iter_style_report` is the one skip-and-report loop shared with the viewer's dataset report: a
broken case is skipped, a broken rater file leaves that rater out, and every problem is listed in
the report's notes (and printed by the command).
"""

from __future__ import annotations

import argparse
import sys

from ..argtypes import POSITIVE_INT
from ..datasets.case import DatasetError
from ..progress import Progress, run_to_completion


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
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.add_argument("--split", default=None, help="dataset split (e.g. train/val/test)")
    p.add_argument("--max-cases", type=POSITIVE_INT, default=None, help="analyse at most N cases")
    p.add_argument(
        "--consensus",
        choices=("staple", "majority"),
        default="staple",
        help="leave-one-out reference (default: staple)",
    )
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


def style_report(
    dataset,
    *,
    consensus: str = "staple",
    max_cases: int | None = None,
    region_margin_mm: float = 5.0,
    progress=None,
    prepare=None,
):
    """``(StyleReport, problems)`` of ``dataset``, never stopped by one broken case or file.

    ``progress(done, total, case_id)`` counts skipped cases too; ``prepare(case)`` may shrink each
    case before the analysis. Problems go to the notes. See :func:`iter_style_report`.
    """
    gen = iter_style_report(
        dataset, consensus=consensus, max_cases=max_cases, region_margin_mm=region_margin_mm, prepare=prepare
    )
    return run_to_completion(gen, None if progress is None else lambda p: progress(p.done, p.total, p.message))


def iter_style_report(
    dataset, *, consensus: str = "staple", max_cases: int | None = None, region_margin_mm: float = 5.0, prepare=None
):
    """Generator form of :func:`style_report`: one :class:`Progress` per case, analysed or skipped
    (message: the case id, or ``skipped <id>``), returns ``(StyleReport, problems)``. Closing it
    (Cancel) stops before the next case."""
    from ..datasets.case_folder import iter_cases_reporting
    from .style import iter_dataset_style

    total = len(dataset) if max_cases is None else min(len(dataset), max_cases)
    problems: list[str] = []
    skips: list[str] = []  # skipped case ids not reported yet (skips happen while the next case is read)
    done = 0

    def skipped():
        nonlocal done
        while skips:
            done += 1
            yield Progress(done, total, f"skipped {skips.pop(0)}")

    cases = iter_cases_reporting(dataset, problems, max_cases, lambda _i, cid: skips.append(cid))
    if prepare is not None:
        cases = map(prepare, cases)
    inner = iter_dataset_style(cases, consensus=consensus, region_margin_mm=region_margin_mm)
    while True:
        try:
            item = next(inner)
        except StopIteration as stop:
            report = stop.value
            break
        yield from skipped()
        done += 1
        yield Progress(done, total, item.message)
    yield from skipped()
    report.notes.extend(problems)
    return report, problems


def run(args: argparse.Namespace) -> int:
    """Load the dataset, build the style report, write it and print the markdown table."""
    from pathlib import Path

    from ..datasets import open_dataset
    from ..io.outputs import OutputError, check_output_files
    from .report import STYLE_REPORT_FILES, style_markdown, write_style_report
    from .self_agreement import SELF_AGREEMENT_FILES

    names = [*STYLE_REPORT_FILES.values(), *SELF_AGREEMENT_FILES.values()]
    try:  # before any work: the report never replaces the data or, without --overwrite, a report
        check_output_files([Path(args.out) / n for n in names], [args.data], overwrite=args.overwrite)
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        dataset = open_dataset(args.data, split=args.split)
        report, problems = style_report(dataset, progress=_progress, consensus=args.consensus, max_cases=args.max_cases)
    except DatasetError as exc:
        sys.stderr.write("\n")
        print(f"error: cannot read dataset {args.data}: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if problems:
        from ..datasets.case_folder import problems_summary

        print("warning: " + problems_summary(problems, report.n_cases, args.data), file=sys.stderr)
    if report.n_cases == 0:
        print(f"error: no cases in {args.data}" + (f" (split {args.split})" if args.split else ""), file=sys.stderr)
        return 2
    paths = write_style_report(report, args.out)
    print(style_markdown(report))
    _self_agreement(args)
    print(f"report written to {paths['raters_md'].parent}")
    return 0


def _self_agreement(args) -> None:
    """Annotation projects with intra-rater repeats: self-agreement next to agreement with others."""
    from .self_agreement import (
        project_self_agreement,
        self_agreement_markdown,
        write_self_agreement,
    )

    try:
        rows = project_self_agreement(args.data)
    except DatasetError as exc:
        print(f"warning: intra-rater agreement skipped: {exc}", file=sys.stderr)
        return
    if rows:
        write_self_agreement(rows, args.out)
        print("\n" + self_agreement_markdown(rows))
