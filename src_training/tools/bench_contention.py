"""``multirater bench`` section 5: the engine on a busy machine.

A competing process (``torch`` matmuls in ``--competitor-threads`` threads, like a training beside
the viewer) runs for the whole section. Under it, ``engine.sample`` (the dock's path: normalise,
sample, sigmoid, to numpy) on one image is timed for every fixed choice (threads 1, 2, ... x fp32 /
bf16 where the CPU has native bf16) and for ``auto``: an engine that calibrates threads, then
precision, under that load (:mod:`napari_multirater.inference.calibration`), whose choice and
reason are recorded. All variants are interleaved run by run, so load drift hits all alike; the
ratio ``auto`` / best fixed choice is the figure of merit (target <= 1.5x).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

from .bench_common import Settings, _log, _stats, _timed
from .bench_inputs import image_crop

COMPETITOR = (
    "import sys, torch\n"
    "torch.set_num_threads(int(sys.argv[1]))\n"
    "a = torch.randn(384, 384)\n"
    "b = a @ a\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    b = torch.tanh(a @ b)\n"
)


@contextmanager
def competing_process(threads: int = 2, ready_timeout_s: float = 60.0):
    """A child process busy with torch matmuls in ``threads`` threads for the duration of the block."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(
        [sys.executable, "-c", COMPETITOR, str(threads)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        t = time.monotonic()
        line = proc.stdout.readline() if proc.stdout else ""
        if line.strip() != "ready" or time.monotonic() - t > ready_timeout_s:
            raise RuntimeError("the competing process did not start")
        yield {"pid": proc.pid, "threads": threads, "work": "torch matmul 384x384 + tanh in a loop"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _loadavg() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def bench_contention(engine, s: Settings, competitor_threads: int = 2, ns=None) -> dict:
    """Fixed (threads, precision) choices and ``auto`` under a competing process, interleaved."""
    import torch

    from napari_multirater.inference import calibration
    from napari_multirater.inference.engine import InferenceEngine
    from src_training.precision import cpu_bf16_native, prepare_model

    cpu = torch.device("cpu")
    crop = image_crop(s.image_size)
    ns = tuple(ns or ((1, 10) if s.quick else (1, 100)))
    precisions = ["fp32", "bf16"] if cpu_bf16_native()[0] else ["fp32"]
    threads = calibration.thread_candidates(calibration.usable_cores())
    before = torch.get_num_threads()

    def make(**kw):
        return InferenceEngine(engine.model, engine.card, device=cpu, name=engine.name, **kw)

    out: dict = {"competitor": None, "ns": list(ns), "rows": [], "auto": {}}
    with competing_process(competitor_threads) as comp:
        out["competitor"] = comp
        out["loadavg_start"] = _loadavg()
        fixed = {f"{t} thread(s) {p}": make(threads=t, precision=p) for t in threads for p in precisions}
        t0 = time.perf_counter()
        auto = make(precision="auto")
        choice = auto.calibrate(reuse=False)  # under this load, not the one another engine saw
        out["auto"] = {
            "calibration_s": time.perf_counter() - t0,
            "threads": choice.threads if choice else None,
            "precision": auto.precision.name,
            "reason": choice.reason if choice else "not on CPU",
            "probe_ms": dict(choice.timings_ms) if choice else {},
        }
        _log(f"contention: auto chose {choice.describe() if choice else 'n/a'}")
        variants = {**fixed, "auto": auto}
        for n in ns:

            def call(e, n=n):
                def run():
                    prepare_model(e.model, e.precision)  # the variants share one model
                    e.sample(crop, n, seed=0)

                return run

            fns = {k: call(e) for k, e in variants.items()}
            for fn in fns.values():
                fn()  # warm-up
            times: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(max(3, min(s.repeats, 7))):
                for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                    times[k].append(_timed(fns[k], cpu))
            row = {"n": n, "times": {k: _stats(v) for k, v in times.items()}}
            best = min((k for k in fixed), key=lambda k: row["times"][k]["median"])
            row["best_fixed"] = best
            row["auto_over_best"] = row["times"]["auto"]["median"] / row["times"][best]["median"]
            out["rows"].append(row)
            _log(
                f"contention N={n}: "
                + ", ".join(f"{k} {v['median']:.1f} ms" for k, v in row["times"].items())
                + f"; auto / best ({best}) = {row['auto_over_best']:.2f}x"
            )
        out["loadavg_end"] = _loadavg()
    torch.set_num_threads(before)
    prepare_model(engine.model, engine.precision)
    return out
