"""Run library generators in napari workers: progress bar per yield, cooperative cancel, errors
shown as notifications.

Library code is written as generators that yield ``Progress`` items (one per sample, slice or
case; defined in the Qt-free :mod:`napari_multirater.progress`, re-exported here) and return their
result. ``start_generator_worker`` runs one in a napari GeneratorWorker:
each yield advances a napari progress bar, ``worker.quit()`` (the Cancel button) takes effect at
the next yield, the result is handed to ``on_done`` on the GUI thread, and an exception becomes a
napari error notification with a clear message instead of a traceback or a frozen GUI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator

from ..progress import Progress, run_to_completion

__all__ = ["Progress", "run_to_completion", "start_generator_worker", "threads_disabled"]


def threads_disabled() -> bool:
    """``MULTIRATER_NOTHREADS=1`` runs inference synchronously (debugging, scripts)."""
    return os.environ.get("MULTIRATER_NOTHREADS", "0") not in ("", "0", "false", "False")


def start_generator_worker(
    gen_func: Callable[..., Generator],
    *args,
    desc: str,
    total: int | None = None,
    on_done: Callable | None = None,
    on_error: Callable[[Exception], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    **kwargs,
):
    """Start ``gen_func(*args, **kwargs)`` in a napari generator worker and return the worker."""
    from napari.qt.threading import create_worker
    from napari.utils import progress as napari_progress
    from napari.utils.notifications import show_error, show_info

    pbar = napari_progress(total=total or 0, desc=desc)
    state = {"done": 0}

    def _yielded(item):
        if isinstance(item, Progress):
            if item.total and pbar.total != item.total:
                pbar.total = item.total
            step = max(item.done - state["done"], 0)
            state["done"] = item.done
            if step:
                pbar.update(step)
            if item.message:
                pbar.set_description(f"{desc}: {item.message}")

    def _returned(result):
        if on_done is not None:
            on_done(result)

    def _errored(exc):
        message = f"{desc} failed: {exc}"
        if on_error is not None:
            on_error(exc)
        show_error(message)

    def _aborted():
        show_info(f"{desc}: cancelled")

    def _finished():
        pbar.close()
        if on_finished is not None:
            on_finished()

    worker = create_worker(gen_func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    worker.yielded.connect(_yielded)
    worker.returned.connect(_returned)
    worker.errored.connect(_errored)
    worker.aborted.connect(_aborted)
    worker.finished.connect(_finished)
    worker.start()
    return worker
