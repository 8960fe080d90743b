"""Self-calibration of the CPU thread count, then the precision, under the load the engine finds (Qt-free).

With other processes on the cores (a training, a browser, a second evaluation), torch's default of
one thread per core makes the threads spin-wait on each other: on a 2-core machine with a
competing 2-thread process, sampling took 2-3x longer with 2 threads than with 1 (issue 30). The
engine therefore times a short probe (one small ``sample`` call) for each candidate, interleaved
round by round so load drift hits all alike, and keeps the fastest: first the thread count at the
default precision, then, at that thread count, the other precision where ``auto`` may choose it.
A candidate replaces the default only when it is faster by ``margin`` (noise is not a reason to
change). :func:`choose` is pure: tests inject the probe and never time anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

MARGIN = 0.10  # a candidate must be >= 10% faster than the default to replace it
ROUNDS = 2  # timed probe calls per candidate (after one untimed warm-up call each)
PRUNE = 2.0  # candidates slower than this x the best after one round are not timed again
RECHECK_S = 120.0  # a run starting this long after the last calibration re-checks the thread count
ENV_VAR = "MULTIRATER_THREADS"  # default of InferenceEngine.load: auto (calibrate), a number, or torch (leave as is)


@dataclass(frozen=True)
class Choice:
    """What the calibration chose and why (``timings_ms``: median probe time per candidate)."""

    threads: int
    precision: str
    reason: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    loadavg: float | None = None

    def describe(self) -> str:
        return f"{self.threads} thread(s), {self.precision}: {self.reason}"


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_candidates(max_threads: int) -> list[int]:
    """1, 2, 4, ... up to ``max_threads`` (which is always included)."""
    out, t = [], 1
    while t < max_threads:
        out.append(t)
        t *= 2
    return out + [max(1, int(max_threads))]


def _label(threads: int, precision: str) -> str:
    return f"{threads} thread(s) {precision}"


def _medians(probe, cands, rounds: int) -> dict[tuple[int, str], float]:
    """Median probe seconds per candidate. A candidate more than ``PRUNE`` x slower than the best
    after a round (2 x ``PRUNE`` after the warm-up, whose time then stands for it) gets no more
    calls: under heavy contention a wrong thread count takes 10-40x longer (issue 30)."""
    warm = {c: float(probe(*c)) for c in cands}  # warm-up: first-call allocations, thread-pool start
    live = [c for c in cands if warm[c] <= 2 * PRUNE * min(warm.values())]  # looser: warm-ups are noisy
    times = {c: ([] if c in live else [warm[c]]) for c in cands}
    for r in range(rounds):
        if r:
            best = min(min(times[c]) for c in live)
            live = [c for c in live if min(times[c]) <= PRUNE * best]
        for c in live if r % 2 == 0 else live[::-1]:
            times[c].append(float(probe(*c)))
    return {c: float(np.median(v)) for c, v in times.items()}


def _best(medians: dict, default, margin: float):
    """The fastest key, unless the default is within ``margin`` of it."""
    best = min(medians, key=medians.__getitem__)
    return best if medians[best] < (1.0 - margin) * medians[default] else default


def choose(
    probe: Callable[[int, str], float],
    threads: list[int],
    precisions: list[str],
    default: tuple[int, str],
    rounds: int = ROUNDS,
    margin: float = MARGIN,
    loadavg: float | None = None,
) -> Choice:
    """Thread count first (at the default precision), then precision (at the chosen thread count).
    With one thread count (e.g. from :func:`recent_threads`) only the precision is timed.

    ``probe(threads, precision)`` returns the seconds of one probe call; ``default`` is the
    (threads, precision) the engine would use without calibration.
    """
    d_threads, d_prec = default
    threads = sorted(set(threads) | {d_threads})
    step1 = _medians(probe, [(t, d_prec) for t in threads], rounds) if len(threads) > 1 else {}
    n_thr = _best(step1, (d_threads, d_prec), margin)[0] if step1 else d_threads
    others = [(n_thr, p) for p in precisions if p != d_prec]
    step2 = _medians(probe, [(n_thr, d_prec)] + others, rounds) if others else {}
    prec = _best(step2, (n_thr, d_prec), margin)[1] if step2 else d_prec
    timings = {_label(*c): 1000.0 * v for c, v in {**step1, **step2}.items()}
    load = f", 1-min load {loadavg:.1f} on {usable_cores()} core(s)" if loadavg is not None else ""
    if not timings:  # one thread count, one precision: nothing to compare, nothing timed
        return Choice(n_thr, prec, f"the only candidate{load}", timings, loadavg)
    chosen_ms = timings[_label(n_thr, prec)]
    if (n_thr, prec) == (d_threads, d_prec):
        why = f"the default was fastest (or within {100 * margin:.0f}%)"
    else:
        base = {**step2, **step1}[(d_threads, d_prec)]
        why = f"{1000.0 * base / chosen_ms:.1f}x faster than the default {_label(d_threads, d_prec)}"
    return Choice(n_thr, prec, f"probe {chosen_ms:.1f} ms, {why}{load}", timings, loadavg)


def threads_from_env() -> int | str | None:
    """``$MULTIRATER_THREADS``: ``auto`` (default) calibrates, a number fixes the thread count,
    ``torch`` leaves torch's own setting alone (None); anything else is ignored (``auto``)."""
    v = os.environ.get(ENV_VAR, "auto").strip().lower()
    if v == "torch":
        return None
    return int(v) if v.isdigit() and int(v) > 0 else "auto"


def loadavg_1min() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


_RECENT: tuple[float, int] | None = None  # (time.monotonic(), threads) of this process's last calibration


def remember_threads(threads: int, now: float) -> None:
    global _RECENT
    _RECENT = (float(now), int(threads))


def recent_threads(now: float) -> int | None:
    """The thread count another engine of this process chose less than :data:`RECHECK_S` ago
    (the load is a property of the machine, not of the model: a second model need not re-time it)."""
    if _RECENT is None or not 0.0 <= now - _RECENT[0] < RECHECK_S:
        return None
    return _RECENT[1]
