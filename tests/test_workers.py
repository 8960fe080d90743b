"""The one job runner (``_napari/workers.py``): busy, cancel, errors and callback order.

The synchronous mode runs without Qt or napari (checked in a subprocess); one threaded test runs a
real napari worker and waits on the runner's own state, never on a time.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_multirater._napari.workers import Job, JobBusyError, JobRunner, Progress


def _count(n: int, log: list, fail_at: int | None = None, exc=ValueError):
    """A progress generator that records what happened to it."""
    try:
        for i in range(n):
            if i == fail_at:
                raise exc(f"broken at {i}")
            yield Progress(i + 1, n, f"step {i + 1}")
        return "result"
    finally:
        log.append("closed")


def _callbacks(events: list) -> dict:
    return {
        "on_progress": lambda p: events.append(("progress", p.done)),
        "on_done": lambda r: events.append(("done", r)),
        "on_error": lambda e: events.append(("error", str(e))),
        "on_cancelled": lambda: events.append(("cancelled",)),
        "on_finished": lambda: events.append(("finished",)),
    }


def test_sync_job_runs_callbacks_in_order_and_is_not_busy_at_the_end():
    runner, events, log = JobRunner(sync=True), [], []
    busy_seen = []
    cb = _callbacks(events)
    cb["on_progress"] = lambda p: (events.append(("progress", p.done)), busy_seen.append(runner.busy))
    cb["on_done"] = lambda r: events.append(("done", r, runner.busy))
    job = runner.start(_count(3, log), label="count", **cb)
    assert isinstance(job, Job) and not job.threaded and job.state == "done"
    assert events == [("progress", 1), ("progress", 2), ("progress", 3), ("done", "result", False), ("finished",)]
    assert busy_seen == [True, True, True] and not runner.busy and runner.job is None
    assert job.last_progress.done == job.last_progress.total == 3 and log == ["closed"]


def test_a_second_job_is_refused_while_one_runs():
    runner, events, log, other = JobRunner(sync=True), [], [], []
    refused = []

    def progress(p):
        if p.done == 1:
            with pytest.raises(JobBusyError, match="count is still running"):
                runner.start(_count(2, other), label="other")
            refused.append(True)

    runner.start(_count(2, log), label="count", on_progress=progress, on_done=events.append)
    assert refused and events == ["result"]
    assert other == []  # the refused generator never ran
    assert isinstance(JobBusyError("x"), ValueError)  # docks catch ValueError for every refusal
    runner.start(_count(1, other), label="again", on_done=events.append)  # free again afterwards
    assert other == ["closed"]
    assert events == ["result", "result"]


def test_cancel_stops_at_the_next_yield_and_closes_the_generator():
    runner, events, log = JobRunner(sync=True), [], []
    cb = _callbacks(events)
    cb["on_progress"] = lambda p: (events.append(("progress", p.done)), p.done == 2 and runner.cancel())
    job = runner.start(_count(5, log), label="count", **cb)
    assert job.state == "cancelled" and job.cancel_requested
    assert events == [("progress", 1), ("progress", 2), ("cancelled",), ("finished",)]
    assert log == ["closed"] and not runner.busy
    assert not runner.cancel()  # nothing left to cancel


def test_errors_go_to_on_error_or_are_raised_when_nobody_listens():
    runner, events, log = JobRunner(sync=True), [], []
    job = runner.start(_count(3, log, fail_at=1), label="count", **_callbacks(events))
    assert job.state == "failed" and isinstance(job.error, ValueError)
    assert events == [("progress", 1), ("error", "broken at 1"), ("finished",)] and not runner.busy
    finished = []
    with pytest.raises(ValueError, match="broken at 0"):
        runner.start(_count(3, log, fail_at=0), label="count", on_finished=lambda: finished.append(1))
    assert finished == [1] and not runner.busy  # never left busy after a failure


def test_a_failing_on_done_is_the_jobs_error():
    runner, events = JobRunner(sync=True), []

    def done(result):
        raise RuntimeError(f"cannot show {result}")

    job = runner.start(_count(1, []), label="count", on_done=done, on_error=lambda e: events.append(str(e)))
    assert job.state == "failed" and events == ["cannot show result"] and not runner.busy


def test_environment_switch_and_per_call_override(monkeypatch):
    monkeypatch.setenv("MULTIRATER_NOTHREADS", "1")
    runner = JobRunner()
    assert not runner.start(_count(1, []), label="a").threaded  # no Qt needed: ran synchronously
    monkeypatch.setenv("MULTIRATER_NOTHREADS", "0")
    assert not JobRunner().start(_count(1, []), label="b", sync=True).threaded


def test_sync_runner_and_moved_analysis_import_no_qt():
    code = (
        "import sys\nfrom napari_multirater._napari.workers import JobRunner, Progress\n"
        "import napari_multirater.analysis.compare, napari_multirater.analysis.dataset_report\n"
        "import napari_multirater.analysis.contours, napari_multirater._napari.model_request\n"
        "def gen():\n    yield Progress(1, 1)\n    return 7\n"
        "out = []\nJobRunner(sync=True).start(gen(), label='x', on_done=out.append)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'superqt')]\n"
        "assert out == [7] and not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.gui
def test_threaded_job_busy_cancel_and_error(qtbot):
    pytest.importorskip("napari")
    import threading

    runner = JobRunner(sync=False)
    gate, events, log = threading.Event(), [], []

    def waiting():  # holds at its first yield until the test has cancelled
        try:
            yield Progress(1, 10, "first")
            gate.wait(30)
            yield Progress(2, 10, "second")
            return "never"
        finally:
            log.append("closed")

    job = runner.start(waiting(), label="wait", **_callbacks(events))
    assert job.threaded and runner.busy and runner.job is job
    with pytest.raises(JobBusyError):
        runner.start(_count(1, []), label="other")
    qtbot.waitUntil(lambda: job.last_progress is not None, timeout=30_000)
    runner.cancel()
    gate.set()
    qtbot.waitUntil(lambda: ("finished",) in events, timeout=30_000)
    assert job.state == "cancelled" and ("cancelled",) in events and not any(e[0] == "done" for e in events)
    assert not runner.busy and log == ["closed"]
    # an error on the worker thread (even a RuntimeError, which superqt would swallow) reaches on_error
    events.clear()
    job = runner.start(_count(3, [], fail_at=1, exc=RuntimeError), label="fail", **_callbacks(events))
    qtbot.waitUntil(lambda: ("finished",) in events, timeout=30_000)
    assert job.state == "failed" and ("error", "broken at 1") in events and not runner.busy
    # and a result arrives on the GUI thread
    events.clear()
    job = runner.start(_count(2, []), label="ok", **_callbacks(events))
    qtbot.waitUntil(lambda: ("finished",) in events, timeout=30_000)
    assert events[-2:] == [("done", "result"), ("finished",)] and job.state == "done"
