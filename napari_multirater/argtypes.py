"""Range-checked argparse types and a parser whose errors are one line (exit code 2).

Every numeric flag of the ``multirater`` subcommands uses one of these, so bad input is refused
by the parser with a message naming the flag (``argument --batch-size: must be an integer >= 1,
got '0'``) before any work starts or any file is written.
"""

from __future__ import annotations

import argparse
import math
import sys

__all__ = [
    "OneLineParser",
    "int_at_least",
    "float_range",
    "POSITIVE_INT",
    "NONNEG_INT",
    "SEED",
    "POSITIVE_FLOAT",
    "int_list",
    "float_list",
    "MAX_CASES",
    "MAX_RATERS",
    "MAX_SAMPLES",
    "MIN_SPACING_MM",
]

# Upper bounds of user numbers that size an allocation (checked before anything is allocated)
MAX_CASES = 100_000  # synthetic cases (ids and splits are built up front)
MAX_RATERS = 64  # simulated raters
MAX_SAMPLES = 1_000  # diverse samples per image (each is a full-size map)
MIN_SPACING_MM = 0.01  # a model's in-plane pixel size (a 512 px, 0.7 mm slice would grow 70x per side)


class OneLineParser(argparse.ArgumentParser):
    """``error()`` prints one line (``prog: error: message (see prog --help)``), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(lo: int, what: str = "an integer", hi: int | None = None):
    """argparse type: an integer >= ``lo`` (and <= ``hi``: what is allocated from it stays bounded)."""
    want = f"{what} >= {lo}" if hi is None else f"{what} from {lo} to {hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    parse.__name__ = f"int>={lo}"  # argparse names the type in some messages
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False):
    """argparse type: a finite float in [lo, hi] (``lo_open``/``hi_open``: bound excluded)."""
    lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
    hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
    want = (
        "a finite number"
        + (f" {lo_s}" if lo_s else "")
        + (" and" if lo_s and hi_s else "")
        + (f" {hi_s}" if hi_s else "")
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        bad = not math.isfinite(value)
        bad |= lo is not None and (value <= lo if lo_open else value < lo)
        bad |= hi is not None and (value >= hi if hi_open else value > hi)
        if bad:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _list(text: str, conv, counts: tuple[int, ...], what: str) -> list:
    parts = [p for p in str(text).replace(" ", "").split(",") if p != ""]
    if len(parts) not in counts:
        n = " or ".join(str(c) for c in counts)
        raise argparse.ArgumentTypeError(f"needs {n} comma-separated {what}, got {text!r}")
    try:
        values = [conv(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs comma-separated {what}, got {text!r}") from None
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"needs finite {what}, got {text!r}")
    return values


def int_list(*counts: int):
    """argparse type: ``counts`` comma-separated integers (e.g. ``--roi z0,y0,x0,z1,y1,x1``)."""

    def parse(text: str) -> list[int]:
        return _list(text, int, counts, "integers")

    parse.__name__ = "integers"
    return parse


def float_list(*counts: int):
    """argparse type: ``counts`` comma-separated finite numbers."""

    def parse(text: str) -> list[float]:
        return _list(text, float, counts, "numbers")

    parse.__name__ = "numbers"
    return parse


POSITIVE_INT = int_at_least(1)
NONNEG_INT = int_at_least(0)
SEED = int_at_least(0, "an integer seed")
POSITIVE_FLOAT = float_range(0, lo_open=True)


def fail(message: str, code: int = 2) -> int:
    """Print ``error: message`` (one line) to stderr and return ``code`` (for ``return fail(...)``)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return code
