"""One job runner for the plugin's long computations (model runs, comparisons, reports, training).

Library code is written as generators that yield :class:`Progress` items (one per sample, slice
or case; defined in the Qt-free :mod:`napari_multirater.progress`, re-exported here) and return
their result. A :class:`JobRunner` runs one such generator at a time and is the only owner of the
running worker; a dock asks its controller's runner whether it is ``busy`` instead of keeping a
worker of its own.

API (small on purpose; new jobs such as "Learn my style" use exactly this)::

    runner = JobRunner()               # sync=None: a napari thread worker unless MULTIRATER_NOTHREADS=1
    job = runner.start(gen, label="model samples",
                       on_progress=..., on_done=..., on_error=..., on_cancelled=..., on_finished=...)
    runner.busy                        # True while a job runs (docks disable their Run buttons)
    runner.job                         # the running Job, or None
    runner.cancel()                    # cooperative: takes effect at the generator's next yield

Contract of :meth:`JobRunner.start`:

* ``gen`` is a generator object (not started yet). ``start`` raises :class:`JobBusyError` (a
  ``ValueError``) while another job runs; nothing is started then.
* Threaded (default): ``gen`` runs in a napari ``GeneratorWorker``; a napari progress bar follows
  the :class:`Progress` items; every callback runs on the GUI thread. Synchronous (``sync=True``
  or ``MULTIRATER_NOTHREADS=1``): ``gen`` runs to completion inside ``start`` (scripts, tests, the
  demo) with the same callbacks in the same order.
* ``on_progress(item)`` for every yielded item; then exactly one of ``on_done(result)``,
  ``on_error(exc)`` or ``on_cancelled()``; then ``on_finished()``. The runner is no longer busy
  when these final callbacks run, so ``on_done`` may start the next job.
* Errors never reach Qt: without ``on_error`` the runner shows a napari error notification
  ``"<label> failed: <exc>"`` (threaded) or re-raises (synchronous); with ``on_error`` the caller
  reports. An exception raised by ``on_done`` fails the job the same way. Without
  ``on_cancelled`` a threaded cancel shows ``"<label>: cancelled"``.
* :meth:`Job.cancel` / :meth:`JobRunner.cancel` ask the generator to stop at its next yield (it
  is closed then, so its ``finally`` blocks run) and ``on_cancelled`` replaces ``on_done``. In
  synchronous mode only a callback (e.g. ``on_progress``) can cancel.
* :attr:`Job.last_progress` and :attr:`Job.state` (running, done, failed, cancelled) can be read
  at any time from the GUI thread (tests wait on them instead of on a time).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..progress import Progress, run_to_completion

__all__ = [
    "Job",
    "JobBusyError",
    "JobRunner",
    "Progress",
    "run_to_completion",
    "threads_disabled",
]

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


def threads_disabled() -> bool:
    """``MULTIRATER_NOTHREADS=1`` runs every job synchronously (debugging, scripts)."""
    return os.environ.get("MULTIRATER_NOTHREADS", "0") not in ("", "0", "false", "False")


class JobBusyError(ValueError):
    """Another job of this runner is still running."""


@dataclass(eq=False)
class Job:
    """One run of a generator: its state and its last progress item (read them from the GUI thread)."""

    label: str
    threaded: bool
    state: str = RUNNING  # running, done, failed, cancelled
    last_progress: Progress | None = None
    error: BaseException | None = None
    cancel_requested: bool = False
    _worker: Any = field(default=None, repr=False)  # the napari worker (threaded jobs only)

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def cancel(self) -> None:
        """Stop at the generator's next yield (no effect once the job has ended)."""
        if self.state != RUNNING:
            return
        self.cancel_requested = True
        if self._worker is not None:
            self._worker.quit()


class JobRunner:
    """Runs one progress generator at a time, in a napari worker or synchronously."""

    def __init__(self, sync: bool | None = None):
        self.sync = sync  # None: threads unless MULTIRATER_NOTHREADS=1 (checked at each start)
        self.job: Job | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None

    def cancel(self) -> bool:
        """Cancel the running job; returns whether there was one."""
        job = self.job
        if job is None:
            return False
        job.cancel()
        return True

    def start(
        self,
        gen: Generator,
        *,
        label: str,
        on_progress: Callable[[Any], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        sync: bool | None = None,
    ) -> Job:
        """Run ``gen``; see the module docstring for the callback contract. Returns the :class:`Job`."""
        if self.job is not None:
            gen.close()
            raise JobBusyError(f"{self.job.label} is still running: wait for it or cancel it")
        if sync is None:
            sync = self.sync if self.sync is not None else threads_disabled()
        job = Job(label, threaded=not sync)
        self.job = job
        ends = _Ends(self, job, on_done, on_error, on_cancelled, on_finished)
        if sync:
            self._run_sync(job, gen, on_progress, ends)
        else:
            try:
                self._run_threaded(job, gen, on_progress, ends)
            except BaseException:
                self.job = None
                raise
        return job

    # ------------------------------------------------------------------ internals
    def _run_sync(self, job: Job, gen: Generator, on_progress, ends: _Ends) -> None:
        try:
            try:
                while True:
                    try:
                        item = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    _record(job, item, on_progress)
                    if job.cancel_requested:
                        gen.close()
                        ends.cancelled()
                        return
            except Exception as exc:
                if not ends.error(exc, reraise=True):
                    raise
                return
            if not ends.done(result, reraise=True) and job.error is not None:
                raise job.error
        finally:
            ends.finished()

    def _run_threaded(self, job: Job, gen: Generator, on_progress, ends: _Ends) -> None:
        from napari.qt.threading import create_worker
        from napari.utils import progress as napari_progress

        pbar = napari_progress(total=0, desc=job.label)
        seen = {"done": 0}

        def guarded():
            try:
                return (yield from gen)
            except Exception as exc:
                job.error = exc  # reported as raised; superqt drops RuntimeErrors (no signal at all)
                if isinstance(exc, RuntimeError):
                    raise _WorkerError(str(exc)) from exc
                raise

        def yielded(item):
            if isinstance(item, Progress):
                if item.total and pbar.total != item.total:
                    pbar.total = item.total
                step = max(item.done - seen["done"], 0)
                seen["done"] = item.done
                if step:
                    pbar.update(step)
                if item.message:
                    pbar.set_description(f"{job.label}: {item.message}")
            _record(job, item, on_progress)

        def finished():
            pbar.close()
            gen.close()  # after a cancel: run the generator's finally blocks (no-op when it ended)
            if job.state == RUNNING:  # no returned/errored signal: aborted, or an error superqt swallowed
                if job.error is not None:
                    ends.error(job.error)
                else:
                    ends.cancelled()
            ends.finished()

        worker = create_worker(guarded, _start_thread=False, _ignore_errors=True)
        job._worker = worker
        worker.yielded.connect(yielded)
        worker.returned.connect(ends.done)
        worker.errored.connect(lambda exc: ends.error(job.error if job.error is not None else exc))
        worker.finished.connect(finished)
        worker.start()


class _WorkerError(Exception):
    """Carries a generator's RuntimeError through superqt (which drops RuntimeErrors)."""


def _record(job: Job, item, on_progress) -> None:
    if isinstance(item, Progress):
        job.last_progress = item
    if on_progress is not None:
        on_progress(item)


class _Ends:
    """The final callbacks of one job: exactly one outcome, then ``on_finished`` (once)."""

    def __init__(self, runner: JobRunner, job: Job, on_done, on_error, on_cancelled, on_finished):
        self.runner, self.job = runner, job
        self.on_done, self.on_error, self.on_cancelled, self.on_finished = on_done, on_error, on_cancelled, on_finished
        self._finished = False

    def _end(self, state: str) -> bool:
        if self.job.state != RUNNING:
            return False
        self.job.state = state
        if self.runner.job is self.job:
            self.runner.job = None  # not busy while the final callbacks run
        return True

    def done(self, result, reraise: bool = False) -> bool:
        """Deliver the result; a failing ``on_done`` fails the job (reported like any error)."""
        if not self._end(DONE) or self.on_done is None:
            return True
        try:
            self.on_done(result)
        except Exception as exc:  # noqa: BLE001 - a failing on_done callback fails the job, reported like any error
            self.job.state = FAILED
            return self._report(exc, reraise)
        return True

    def error(self, exc: BaseException, reraise: bool = False) -> bool:
        """Report ``exc``; returns False when the caller should re-raise it (sync, no on_error)."""
        if not self._end(FAILED):
            return True
        return self._report(exc, reraise)

    def _report(self, exc: BaseException, reraise: bool) -> bool:
        self.job.error = exc
        if self.on_error is not None:
            self.on_error(exc)
        elif reraise:
            return False
        else:
            _notify("error", f"{self.job.label} failed: {exc}")
        return True

    def cancelled(self) -> None:
        if not self._end(CANCELLED):
            return
        if self.on_cancelled is not None:
            self.on_cancelled()
        elif self.job.threaded:
            _notify("info", f"{self.job.label}: cancelled")

    def finished(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._end(CANCELLED)  # safety: never leave the runner busy
        if self.on_finished is not None:
            self.on_finished()


def _notify(kind: str, message: str) -> None:
    from napari.utils.notifications import show_error, show_info

    (show_error if kind == "error" else show_info)(message)
