"""``multirater export-dataset``: a case-folder dataset in the nnU-Net layout (imagesTr/labelsTr)."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("export-dataset", help="write a case-folder dataset as nnU-Net imagesTr/labelsTr + dataset.json")
    p.add_argument("dataset", help="the case-folder dataset (a folder with dataset.json)")
    p.add_argument("--out", required=True, help="new folder (must not exist or be empty)")
    p.add_argument("--layout", choices=["nnunet"], default="nnunet", help="output layout (nnunet)")
    p.add_argument(
        "--labels",
        default="consensus",
        help="consensus (STAPLE, default), majority, rater:NAME, or all (one nnU-Net dataset per rater: OUT/<rater>/)",
    )
    p.add_argument("--split", help="export one split of dataset.json only (default: every case)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..datasets.case import DatasetError
    from ..datasets.export_nnunet import export_nnunet
    from ..io.medical import MedicalIOError

    try:
        summary = export_nnunet(
            Path(args.dataset).expanduser(), Path(args.out).expanduser(), args.labels, split=args.split
        )
    except (DatasetError, MedicalIOError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
        return 2
    for problem in summary["problems"]:
        print(f"  skipped: {problem}", file=sys.stderr)
    left = summary["left_out"]
    per_rater = summary.get("per_rater")
    datasets = (
        " as one nnU-Net dataset per rater (" + ", ".join(f"{r}/: {n} cases" for r, n in per_rater.items() if n) + ")"
        if per_rater
        else ""
    )
    print(
        f"exported {summary['cases']} cases (labels: {args.labels}) to {summary['out']}{datasets}"
        + (
            f"; {len(left)} cases without that rater left out ({', '.join(left[:5])}{' ...' if len(left) > 5 else ''})"
            if left
            else ""
        )
    )
    return 0
