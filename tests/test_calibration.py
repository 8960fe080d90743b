"""Contention-aware choice of threads then precision (issue 30): injected timings, nothing timed."""

from __future__ import annotations

import pytest
import torch

from napari_multirater.inference import calibration
from napari_multirater.inference import engine as engine_mod
from napari_multirater.inference.engine import InferenceEngine
from src_training.models import build_model
from src_training.tools.testing import tiny_card


def table_probe(table):
    calls = []

    def probe(threads, precision):
        calls.append((threads, precision))
        return table[(threads, precision)]

    return probe, calls


# seconds per probe call on a 2-core machine with a competing 2-thread process: 2 threads thrash
BUSY = {(1, "fp32"): 0.10, (2, "fp32"): 0.37, (1, "bf16"): 0.09, (2, "bf16"): 0.35}


def test_threads_first_then_precision_under_contention():
    probe, calls = table_probe(BUSY)
    c = calibration.choose(probe, [1, 2], ["fp32", "bf16"], default=(2, "bf16"), loadavg=3.5)
    assert (c.threads, c.precision) == (1, "bf16")  # 1 thread first; then bf16 stays (fp32 is not faster)
    assert "3.9x faster than the default 2 thread(s) bf16" in c.reason and "load 3.5" in c.reason
    assert c.timings_ms["1 thread(s) fp32"] == pytest.approx(100.0)
    assert {p for t, p in calls if t == 2} == {"bf16"}  # step 2 times precisions at the chosen count only


def test_precision_changes_only_when_clearly_faster():
    table = {(1, "fp32"): 0.05, (2, "fp32"): 0.04, (1, "bf16"): 0.10, (2, "bf16"): 0.095}
    c = calibration.choose(table_probe(table)[0], [1, 2], ["fp32", "bf16"], default=(2, "bf16"))
    assert (c.threads, c.precision) == (2, "fp32")  # 2 threads within 10% of 1 at bf16: default count kept
    quiet = {(1, "bf16"): 0.030, (2, "bf16"): 0.020, (2, "fp32"): 0.021}
    c = calibration.choose(table_probe(quiet)[0], [1, 2], ["bf16", "fp32"], default=(2, "bf16"))
    assert (c.threads, c.precision) == (2, "bf16") and "default was fastest" in c.reason


def test_clearly_slower_candidates_are_not_timed_again():
    probe, calls = table_probe({(1, "fp32"): 0.01, (2, "fp32"): 0.03, (4, "fp32"): 0.011})
    c = calibration.choose(probe, [1, 2, 4], ["fp32"], default=(4, "fp32"), rounds=3)
    assert c.threads == 4  # 1 thread is only 9% faster
    assert calls.count((2, "fp32")) == 2  # warm-up + first round, then pruned
    assert calls.count((1, "fp32")) == 1 + 3
    assert calibration.thread_candidates(6) == [1, 2, 4, 6] and calibration.thread_candidates(1) == [1]


def _engine(**kw):
    torch.manual_seed(0)
    cfg = {
        "method": "prob_unet",
        "num_raters": 3,
        "latent_dim": 2,
        "backbone": {"widths": [4, 8]},
        "prior": {"widths": [4, 8]},
    }
    return InferenceEngine(build_model(cfg), tiny_card("prob_unet"), device="cpu", **kw)


def test_engine_applies_the_choice_and_rechecks_old_calibrations(monkeypatch):
    monkeypatch.setattr(engine_mod, "cpu_bf16_native", lambda: (True, "test CPU"))
    monkeypatch.setattr(calibration, "usable_cores", lambda: 2)
    monkeypatch.setattr(calibration, "_RECENT", None)
    eng = _engine(threads=2)
    assert eng.threads == 2 and eng.calibration is None and not eng.recheck(now=1e9)  # fixed: never re-timed
    probe, _ = table_probe(BUSY)
    choice = eng.calibrate(probe=probe, now=100.0)
    assert (eng.threads, eng.precision.name) == (1, "bf16") and eng.calibration is choice
    assert "calibrated" in eng.precision.reason and eng.summary()["threads"].startswith("1 thread(s), bf16")
    before = torch.get_num_threads()
    seen = eng._call(lambda dev: torch.get_num_threads())
    assert seen == 1 and torch.get_num_threads() == before  # restored after the call
    quiet = {(1, "bf16"): 0.05, (2, "bf16"): 0.02, (1, "fp32"): 0.06, (2, "fp32"): 0.01}
    assert not eng.recheck(now=100.0 + calibration.RECHECK_S / 2, probe=table_probe(quiet)[0])
    assert eng.recheck(now=100.0 + calibration.RECHECK_S, probe=table_probe(quiet)[0])
    assert (eng.threads, eng.precision.name) == (2, "bf16")  # a run's re-check keeps the precision
    other = _engine(threads=2)  # a second model loaded soon after: threads reused, precision timed
    probe, calls = table_probe(quiet)
    assert (other.calibrate(probe=probe, now=130.0 + calibration.RECHECK_S).precision, other.threads) == ("fp32", 2)
    assert {t for t, _ in calls} == {2}


def test_engine_threads_argument_is_checked():
    with pytest.raises(ValueError, match="threads must be 'auto' or a positive number"):
        _engine(threads=0)
    assert _engine().threads is None  # default: torch's thread count is left alone


def test_a_thrashing_default_is_dropped_after_its_warm_up_call():
    probe, calls = table_probe({(1, "fp32"): 0.05, (2, "fp32"): 2.2})
    c = calibration.choose(probe, [1, 2], ["fp32"], default=(2, "fp32"))
    assert c.threads == 1 and calls.count((2, "fp32")) == 1 and "44.0x faster" in c.reason


def test_nothing_to_compare_times_nothing(monkeypatch):
    probe, calls = table_probe({})
    c = calibration.choose(probe, [2], ["fp32"], default=(2, "fp32"), loadavg=1.0)
    assert (c.threads, c.precision, calls) == (2, "fp32", []) and c.reason.startswith("the only candidate")
    monkeypatch.setattr(calibration, "_RECENT", (50.0, 2))  # another engine timed 2 threads 10 s ago
    eng = _engine(precision="fp32")
    assert eng.calibrate(probe=probe, now=60.0).threads == 2 and calls == []


def test_threads_from_environment(monkeypatch):
    for value, expected in (("auto", "auto"), ("3", 3), ("torch", None), ("0", "auto"), ("many", "auto")):
        monkeypatch.setenv(calibration.ENV_VAR, value)
        assert calibration.threads_from_env() == expected


def test_auto_threads_calibrate_for_real_without_asserting_times(monkeypatch):
    monkeypatch.setattr(calibration, "_RECENT", None)
    eng = _engine(threads="auto", precision="fp32")
    c = eng.calibration
    assert c is not None and eng.threads == c.threads and c.precision == "fp32" == eng.precision.name
    assert set(c.timings_ms) >= {
        f"{t} thread(s) fp32" for t in calibration.thread_candidates(calibration.usable_cores())
    }
