"""Active collection in the Collect annotations dock (no Qt): the "next case" queue with the
project's target raters and intra-rater repeats, and "Learn my style" (a new persona from the
rater's saved masks, in a background job with progress, loss and Cancel).

Works on top of an :class:`~.annotate_controller.AnnotateController` (project, rater, case).
Long work (the fit, model disagreement) is written as progress generators; :meth:`start` runs
them in a napari worker (or synchronously with ``MULTIRATER_NOTHREADS=1``). A new checkpoint goes
to the user model folder, so it appears in every model list; listeners registered with
:func:`on_new_model` (the Model dock) are told at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

from ..annotation.queue import (
    QueueEntry,
    build_queue,
    collection_settings,
    drafts_line,
    enough_raters,
    iter_model_disagreement,
    set_collection_settings,
)
from ..datasets.case import DatasetError
from ..progress import Progress
from .annotate_controller import AnnotateError
from .workers import JobRunner

__all__ = ["NO_MODEL", "CollectController", "on_new_model"]

PERSONA_METHODS = ("dpersona", "pionono", "proseg")  # bundled methods with one persona per rater

NO_MODEL = "(none: rank by the raters' disagreement)"
_NEW_MODEL_LISTENERS: list = []


def on_new_model(listener: Callable[[str], None]) -> None:
    """Call ``listener(model name)`` whenever Learn my style wrote a new model (held weakly: a
    closed dock is never kept alive by this)."""
    ref = weakref.WeakMethod(listener) if hasattr(listener, "__self__") else weakref.ref(listener)
    _NEW_MODEL_LISTENERS.append(ref)


def _announce(name: str) -> None:
    for ref in list(_NEW_MODEL_LISTENERS):
        fn = ref()
        try:
            if fn is None:
                raise RuntimeError("gone")
            fn(name)
        except RuntimeError:  # a closed dock: its Qt object is gone
            _NEW_MODEL_LISTENERS.remove(ref)


def _registry():
    """The model registry module (``modelfiles.registry`` once models and inference are split)."""
    try:
        from ..modelfiles import registry
    except ImportError:
        from ..inference import registry
    return registry


class CollectController:
    """Queue, collection settings, repeats and Learn my style; every method callable without Qt."""

    def __init__(self, annotate):
        self.annotate = annotate
        self.queue: list[QueueEntry] = []
        self.model_scores: dict | None = None
        self.runner = JobRunner()
        self._cancel = False
        self.last_report: dict | None = None
        self.last_message = ""
        self.last_loss: float | None = None

    # --- settings and status ------------------------------------------------------------------
    @property
    def store(self):
        return self.annotate.store

    def _need(self):
        if self.store is None:
            raise AnnotateError("open an annotation project first")
        if not self.annotate.rater:
            raise AnnotateError("set your rater id first")
        return self.store, self.annotate.rater

    def settings(self) -> dict:
        return collection_settings(self.store) if self.store is not None else {}

    def set_settings(self, **changes) -> dict:
        if self.store is None:
            raise AnnotateError("open an annotation project first")
        try:
            return set_collection_settings(self.store, **changes)
        except DatasetError as e:
            raise AnnotateError(str(e)) from None

    def status_text(self) -> str:
        """``k of n cases have enough raters (target t)``."""
        if self.store is None:
            return ""
        k, n = enough_raters(self.store)
        text = f"{k} of {n} cases have enough raters (target {self.settings()['target_raters']})"
        drafts = drafts_line(self.store)
        return f"{text}; {drafts}" if drafts else text

    # --- queue -----------------------------------------------------------------------------------
    def refresh_queue(self) -> list[QueueEntry]:
        store, rater = self._need()
        self.queue = build_queue(store, rater, self.model_scores)
        return self.queue

    def iter_rank_by_model(self, model: str):
        """Generator: model disagreement of the rater's open cases (cached), then the queue."""
        from ..inference.engine import InferenceEngine, ModelLoadError

        store, rater = self._need()
        if not model or model == NO_MODEL:
            self.model_scores = None
            return self.refresh_queue()
        try:
            engine = yield from InferenceEngine.iter_load(model, device="cpu")
        except ModelLoadError as e:
            raise AnnotateError(str(e)) from None
        todo = [c for c in store.case_ids() if not store.has_mask(c, rater)]
        self.model_scores = yield from iter_model_disagreement(engine, store, todo)
        return self.refresh_queue()

    def open_next(self) -> QueueEntry | None:
        """Open the first case of the (fresh) queue; a repeat opens blind, empty, as a repeat."""
        queue = self.refresh_queue()
        if not queue:
            return None
        self.open_entry(queue[0])
        return queue[0]

    def open_entry(self, entry: QueueEntry) -> None:
        self.annotate.load_case(entry.case_id, repeat=entry.repeat)

    # --- learn my style ------------------------------------------------------------------------
    @staticmethod
    def model_choices() -> list[str]:
        return list(_registry().available_models())

    def learn_choices(self) -> list[str]:
        """Models Learn my style can extend: with personas (by method name) and trained on the
        project's kind of image (CT or phantom); models whose kind or method the name does not
        tell (user files) stay offered."""
        from ..inference.model_info import image_kind, name_kind

        kind = None
        if self.store is not None:
            first = self.store.case_ids()[:1]
            kind = image_kind({"case_id": first[0] if first else ""}, self.store.name)
        out = []
        for name in self.model_choices():
            base = name.split("+", 1)[0].lower()
            method_known = base.startswith(("lidc_", "phantom_"))
            if method_known and not base.endswith(PERSONA_METHODS):
                continue
            if kind is not None and name_kind(name) not in (None, kind):
                continue
            out.append(name)
        return out

    def output_path(self, model: str) -> Path:
        """A new file in the user model folder: ``<model>+<rater>.pt`` (``-2``, ``-3``... if taken)."""
        available_models, user_model_dir = _registry().available_models, _registry().user_model_dir
        _, rater = self._need()
        base = f"{Path(str(model)).stem}+{rater}"
        taken = set(available_models())
        name, n = base, 1
        while name in taken or (user_model_dir() / f"{name}.pt").exists():
            n += 1
            name = f"{base}-{n}"
        return user_model_dir() / f"{name}.pt"

    def iter_learn(self, model: str, steps: int = 150):
        """Generator: fit the rater's persona into a new model (see :func:`iter_add_persona`);
        returns the report. A model without personas returns the nearest-persona report with
        ``refused`` set. Cancel stops at the next step, writing nothing."""
        from ..inference.persona_fit import (
            NoPersonas,
            PersonaFitError,
            iter_add_persona,
        )

        store, rater = self._need()
        self.annotate.save_if_dirty("saved before learning your style")
        out = self.output_path(model)
        self._cancel = False
        gen = iter_add_persona(model, store.root, rater, out, int(steps))
        try:
            while True:
                if self._cancel:
                    gen.close()
                    self.last_report = {"cancelled": True, "text": "Learn my style cancelled: nothing was written"}
                    return self.last_report
                try:
                    item = next(gen)
                except StopIteration as stop:
                    report = stop.value
                    break
                if isinstance(item, Progress):
                    self.last_message = item.message
                    if "loss" in item.message:
                        self.last_loss = float(item.message.rsplit("loss", 1)[1])
                yield item
        except NoPersonas as e:
            report = {"refused": str(e), **(getattr(e, "report", None) or {})}
            report["text"] = f"{e}. {report.get('text', '')}".strip()
        except PersonaFitError as e:
            raise AnnotateError(str(e)) from None
        self.last_report = report
        return report

    @staticmethod
    def announce(report: dict | None) -> None:
        """Tell the model lists about a newly written model (call on the GUI thread)."""
        if report and report.get("out") and not report.get("refused") and not report.get("cancelled"):
            _announce(Path(report["out"]).stem)

    def cancel(self) -> None:
        """Stop Learn my style at the next step; nothing is written (the report says so)."""
        self._cancel = True

    # --- running jobs --------------------------------------------------------------------------
    @property
    def job(self):
        """The running :class:`~.workers.Job` (None when idle)."""
        return self.runner.job

    def start(self, gen, desc: str, on_done=None, on_error=None, on_progress=None, on_finished=None):
        """Run a progress generator with the plugin's :class:`~.workers.JobRunner` (a napari worker,
        or synchronously with MULTIRATER_NOTHREADS=1); callbacks run on the GUI thread."""
        holder = {}

        def finished():
            if on_finished:
                on_finished()
            _disconnect(getattr(holder.get("job"), "_worker", None))

        job = self.runner.start(
            gen,
            label=desc,
            on_progress=lambda item: on_progress(item) if on_progress and isinstance(item, Progress) else None,
            on_done=on_done,
            on_error=on_error,
            on_finished=finished,
        )
        holder["job"] = job
        return job


def _disconnect(worker) -> None:
    """Drop every slot of a finished worker: napari's task list keeps finished workers, and their
    slots would keep this dock (and its viewer) alive."""
    for name in ("yielded", "returned", "errored", "aborted", "started", "finished", "warned"):
        sig = getattr(worker, name, None)
        try:
            sig.disconnect()
        except (TypeError, RuntimeError, AttributeError):
            pass
