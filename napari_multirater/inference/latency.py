"""Latency benchmark of the inference engine (not a test): now an alias of ``multirater bench``.

    python -m napari_multirater.inference.latency [--checkpoint X] [--method prob_unet] [--threads 2]

Kept so the old command still works; it runs ``multirater bench`` without the training section
(see :mod:`napari_multirater.inference.bench` for what is measured and how). Old flags map onto
bench: ``--samples-volume`` -> ``--volume-samples``, ``--no-big`` -> ``--skip-3d``; other bench flags
(``--out``, ``--quick``, ...) pass through unchanged.
"""

from __future__ import annotations

import argparse
import sys

from .bench import build_engine  # noqa: F401 - re-exported (the old helper of this module)
from .bench import main as bench_main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m napari_multirater.inference.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="prob_unet", help="fresh compact model when no --checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--samples-volume", type=int, default=8)
    p.add_argument("--no-big", action="store_true", help="skip the 3D volume runs")
    args, rest = p.parse_known_args(argv)
    forward = ["--skip-train", "--method", args.method, "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--volume-samples", str(args.samples_volume)] + (["--skip-3d"] if args.no_big else []) + rest
    return bench_main(forward)


if __name__ == "__main__":
    sys.exit(main())
