"""Annotation session state (pure): current case and rater, active time, dirty flag, autosave
policy and provenance of the mask being edited.

Active annotation time is the sum of the gaps between consecutive events (case opened, each edit),
each gap capped at ``idle_cap`` seconds, so a rater who walks away for lunch is credited at most
``idle_cap`` seconds for the pause. Time is measured with an injectable monotonic ``clock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..datasets.case_folder import now_iso

__all__ = ["AnnotationSession", "DRAWN", "IDLE_CAP_S"]

IDLE_CAP_S = 60.0
DRAWN = {"kind": "drawn"}


class AnnotationSession:
    """What one rater is doing on one case; the controller feeds it events, the store its saves."""

    def __init__(
        self,
        rater: str,
        *,
        autosave_interval: float = 30.0,
        idle_cap: float = IDLE_CAP_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rater = rater
        self.autosave_interval = float(autosave_interval)
        self.idle_cap = float(idle_cap)
        self.clock = clock
        self.case_id: str | None = None
        self.image_sha256: str | None = None
        self.provenance: dict = dict(DRAWN)
        self.created: str | None = None
        self.last_saved: str | None = None
        self.previous_active = 0.0  # seconds already recorded in the sidecar
        self.active_seconds = 0.0  # seconds accumulated in this session, not yet saved
        self.dirty = False
        self.n_edits = 0
        self.revision: int | None = None  # revision of the saved annotation this work started from
        self._last_event: float | None = None
        self._last_save_t: float | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start_case(
        self,
        case_id: str,
        *,
        image_sha256: str | None = None,
        sidecar: dict | None = None,
        now: float | None = None,
        revision: int | None = None,
    ) -> None:
        """Begin (or resume) annotating ``case_id``; ``sidecar`` is the rater's saved one, if any;
        ``revision`` the saved revision loaded (saves over a newer one are refused)."""
        now = self.clock() if now is None else now
        sidecar = sidecar or {}
        self.case_id = case_id
        self.image_sha256 = image_sha256
        prov = sidecar.get("provenance")
        self.provenance = dict(prov) if isinstance(prov, dict) and "kind" in prov else dict(DRAWN)
        self.created = sidecar.get("created")
        self.last_saved = sidecar.get("saved")
        try:
            self.previous_active = float(sidecar.get("active_seconds", 0.0))
        except (TypeError, ValueError):
            self.previous_active = 0.0
        self.active_seconds = 0.0
        self.dirty = False
        self.n_edits = 0
        self.revision = revision
        self._last_event = now
        self._last_save_t = now

    def record_edit(self, now: float | None = None) -> None:
        """An edit happened (a paint stroke, fill, erase...)."""
        now = self.clock() if now is None else now
        if self._last_event is not None:
            self.active_seconds += min(max(now - self._last_event, 0.0), self.idle_cap)
        self._last_event = now
        self.dirty = True
        self.n_edits += 1
        if self.provenance.get("kind") == "prefilled":
            self.provenance["edited"] = True

    def mark_prefilled(self, source: dict, now: float | None = None) -> None:
        """The mask was replaced by a copy of ``source`` (e.g. a model output); later edits set
        ``edited`` to True. ``source`` holds e.g. ``model``, ``output``, ``layer``."""
        now = self.clock() if now is None else now
        self.provenance = {
            "kind": "prefilled",
            **{k: v for k, v in source.items() if k != "kind"},
            "prefilled_at": now_iso(),
            "edited": False,
        }
        self.dirty = True
        self._last_event = now

    # --- saving --------------------------------------------------------------------------------
    @property
    def total_active_seconds(self) -> float:
        return self.previous_active + self.active_seconds

    def autosave_due(self, now: float | None = None) -> bool:
        """True when there are unsaved edits and the last save (or case start) is at least
        ``autosave_interval`` seconds ago; never with an interval <= 0 (autosave off)."""
        if not self.dirty or self.autosave_interval <= 0 or self._last_save_t is None:
            return False
        now = self.clock() if now is None else now
        return now - self._last_save_t >= self.autosave_interval

    def check_due(self, now: float | None = None) -> bool:
        """True when ``autosave_interval`` passed since the last save or check, edits or not:
        some edits send no event (napari's undo/redo), so the mask itself must be compared."""
        if self.autosave_interval <= 0 or self._last_save_t is None:
            return False
        now = self.clock() if now is None else now
        return now - self._last_save_t >= self.autosave_interval

    def postpone(self, now: float | None = None) -> None:
        """A save failed: keep the edits (still dirty), try again one interval later."""
        self._last_save_t = self.clock() if now is None else now

    def mark_unchanged(self, now: float | None = None) -> None:
        """The mask equals the saved one: nothing to save; the next check is an interval away."""
        self.dirty = False
        self._last_save_t = self.clock() if now is None else now

    def save_kwargs(self) -> dict:
        """Keyword arguments for :meth:`AnnotationStore.save_mask`."""
        return {
            "provenance": dict(self.provenance),
            "active_seconds": self.total_active_seconds,
            "created": self.created,
            "image_sha256": self.image_sha256,
            "expected_revision": self.revision,
        }

    def mark_saved(self, sidecar: dict, now: float | None = None) -> None:
        """A save succeeded (``sidecar`` as returned by the store)."""
        now = self.clock() if now is None else now
        self.dirty = False
        self._last_save_t = now
        self.created = sidecar.get("created", self.created)
        self.last_saved = sidecar.get("saved", now_iso())
        self.previous_active = float(sidecar.get("active_seconds", self.total_active_seconds))
        self.active_seconds = 0.0
        if isinstance(sidecar.get("revision"), int):
            self.revision = sidecar["revision"]
