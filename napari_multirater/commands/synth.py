"""``multirater synth``: write a synthetic phantom dataset in the case-folder format."""

from __future__ import annotations

import sys

from ..argtypes import MAX_CASES, MAX_RATERS, SEED, float_range, int_at_least


def add_parser(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic multi-rater phantom dataset (case-folder format)")
    p.add_argument("--out", required=True, help="output dataset folder (created complete, or not at all)")
    p.add_argument(
        "--cases",
        type=int_at_least(1, hi=MAX_CASES),
        default=40,
        help=f"number of cases (default 40, at most {MAX_CASES})",
    )
    p.add_argument(
        "--raters",
        type=int_at_least(1, hi=MAX_RATERS),
        default=4,
        help=f"number of simulated raters (default 4, at most {MAX_RATERS})",
    )
    p.add_argument("--3d", dest="three_d", action="store_true", help="3D volumes instead of 2D slices")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument(
        "--val-fraction", type=float_range(0, 1, hi_open=True), default=0.2, help="fraction of cases in the val split"
    )
    p.add_argument("--format", choices=["nii.gz", "nrrd", "mha"], default="nii.gz")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset in --out (never a folder of other files)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..datasets.case import DatasetError
    from ..datasets.synth import generate_phantom_dataset

    def progress(i, n):
        if sys.stderr.isatty() or i == n:
            print(f"\rwriting case {i}/{n}", end="", file=sys.stderr, flush=True)

    try:
        root = generate_phantom_dataset(
            args.out,
            args.cases,
            n_raters=args.raters,
            ndim=3 if args.three_d else 2,
            seed=args.seed,
            val_fraction=args.val_fraction,
            suffix="." + args.format,
            overwrite=args.overwrite,
            progress=progress,
        )
    except (DatasetError, ValueError, OSError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    print(f"\nwrote {args.cases} phantom cases with {args.raters} raters to {root}")
    return 0
