"""Progress items for long library computations (Qt-free core).

Library code is written as generators that yield :class:`Progress` items (one per sample, slice
or case) and return their result. Scripts, the CLI and tests drive them with
:func:`run_to_completion`; the napari side runs them as jobs
(:class:`napari_multirater._napari.workers.JobRunner`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Progress", "run_to_completion"]

T = TypeVar("T")


@dataclass
class Progress:
    """One unit of work done: ``done`` of ``total`` (total None when unknown) plus a message."""

    done: int
    total: int | None = None
    message: str = ""


def run_to_completion(gen: Generator[Any, Any, T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Drive a progress generator synchronously (scripts, CLI, tests); returns its result."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None and isinstance(item, Progress):
            on_progress(item)
