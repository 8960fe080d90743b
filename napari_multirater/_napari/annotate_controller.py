"""Annotation collection in the viewer: load a project case, let one rater paint their own mask,
save it (manually, by autosave and on case switch) into the case-folder project.

Layers (all marked ``metadata["multirater_annotate"] = True`` and replaced on every case switch, so
undo never crosses cases):

* ``mr image: <case>`` - the case image with its physical geometry;
* ``mr annotation: <rater>`` - the current rater's binary Labels layer, same geometry; it only
  exists once a rater id is set (no rater, nothing to paint);
* unblinded only: ``mr rater: <other>`` - other raters' saved masks as read-only contours
  (``metadata["unblinded_view"] = True``; removed again when blind mode is switched on).

Blind mode (default) never reads other raters' masks and hides rater layers of the same case that
came from elsewhere (e.g. the reader).

Whether there is something to save is decided by comparing the mask's checksum with the saved
one (napari's undo/redo emit no edit event).

Nothing is lost: any failed save (Save button, autosave, case/rater/project switch, layer removal,
close) keeps the layer as it is, writes an emergency copy (mask + sidecar, user config folder
first, see :meth:`AnnotationStore.save_emergency_copy`) and shows a notification naming it. A
save over a revision another session saved meanwhile (same rater id, second window or machine) is
refused and kept as a conflict copy. If the emergency copy fails too, closing asks the user
(:func:`decide_close`: Save as..., Discard, Cancel).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..annotation.lock import AUTOSAVE_TIMEOUT, LockTimeout
from ..annotation.prefill import pick_lesion
from ..annotation.queue import collection_settings
from ..annotation.session import AnnotationSession
from ..annotation.store import AnnotationStore, RaterIdentity, SaveConflict, loaded_revision
from ..datasets.case import DatasetError
from ..datasets.case_folder import check_identifier, image_checksum, now_iso, unconfirmed_prefill, write_json
from ..io.geometry import geometry_from_layer
from ..io.medical import MedicalIOError, write_image
from .guidance import REOPEN_HINT, case_identity, plain_dicom
from .layers import (
    ROLE_KEY,
    binary_colormap,
    display_window,
    layer_name,
    rater_color,
    same_layer,
    set_labels_undoable,
    transform_kwargs,
)

__all__ = [
    "AnnotateController",
    "AnnotateError",
    "AutosavePostponed",
    "ConflictError",
    "CLOSE_CHOICES",
    "OWNER_KEY",
    "UNBLINDED_KEY",
    "decide_close",
]

OWNER_KEY = "multirater_annotate"
UNBLINDED_KEY = "unblinded_view"  # other raters' masks this controller loaded for unblinded viewing
_NOT_PREFILL_ROLES = ("rater", "consensus", "agreement")
_KEPT_HIDDEN = "multirater_blind_hidden"  # blind mode watches this layer's visibility
_DERIVED_FROM_RATERS = ("consensus", "agreement")  # Compare raters' outputs: blind mode hides them too
_PROVENANCE_KEYS = ("model", "model_name", "checkpoint", "persona", "output", "sample", "seed", "kind")


class AnnotateError(ValueError):
    """A user action cannot be done now (no rater id, no project, no case...); message for the UI."""


class AutosavePostponed(AnnotateError):
    """Autosave did not get the lock within a short timeout; the next timer tick retries."""


class ConflictError(AnnotateError):
    """Another session saved a newer revision of this annotation; ours went to a conflict copy."""


CLOSE_CHOICES = ("save_as", "discard", "cancel")


def decide_close(work_state: str, choice: str | None = None) -> str:
    """What closing does (pure; the dock asks the user only when this returns ``"ask"``).

    ``work_state``: ``"safe"`` (saved, nothing to save, or an emergency copy holds the work) or
    ``"at_risk"`` (the save and the emergency copy both failed). ``choice``: the user's answer,
    one of :data:`CLOSE_CHOICES`. Returns ``"close"``, ``"ask"``, ``"save_as"`` (ask for a path,
    write there, then close) or ``"stay"`` (cancel the close, keep everything open).
    """
    if work_state == "safe":
        return "close"
    if work_state != "at_risk":
        raise ValueError(f"unknown work state {work_state!r}")
    if choice is None:
        return "ask"
    if choice not in CLOSE_CHOICES:
        raise ValueError(f"unknown close choice {choice!r}; expected one of {CLOSE_CHOICES}")
    return {"save_as": "save_as", "discard": "close", "cancel": "stay"}[choice]


def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # pragma: no cover - napari is always there in the viewer
        return
    show_error(message)


class AnnotateController:
    """Layer logic of annotation collection; every public method is callable without Qt."""

    def __init__(
        self,
        viewer,
        *,
        autosave_interval: float = 30.0,
        blind: bool = True,
        clock: Callable[[], float] = time.monotonic,
        identity_path=None,
    ):
        self.viewer = viewer
        self.store: AnnotationStore | None = None
        self.rater: str | None = None
        self.blind = bool(blind)
        self.autosave_interval = float(autosave_interval)
        self.clock = clock
        self.identity_path = identity_path
        self.case_id: str | None = None
        self.session: AnnotationSession | None = None
        self.image_layer = None
        self.annotation_layer = None
        self.last_save_reason = ""
        self._saved_sha: str | None = None  # checksum of the mask as last saved (or loaded)
        self._suppress_edits = False
        self._removing_own = False
        self._rescued_sha: str | None = None  # checksum of the mask last kept in an emergency copy
        self.at_risk = False  # the last save and its emergency copy both failed
        self.repeat = False  # the open case is an intra-rater repeat (saved next to the first mask, blind)
        self.last_rescue: str | None = None  # path of the last emergency / conflict copy
        self.last_prefill = ""  # what the last pre-fill wrote, for the status line
        self.on_edit: Callable[[], None] | None = None  # the view refreshes its "unsaved" marker
        self.notify: Callable[[str], None] = _notify_error  # errors that must not go unnoticed
        viewer.layers.events.removing.connect(self._on_layer_removing)

    # --- identity ------------------------------------------------------------------------------
    def load_identity(self) -> RaterIdentity:
        return RaterIdentity.load(self.identity_path)

    def remember(self, **changes) -> None:
        """Persist rater id / last project / preferences (never raises: preferences only)."""
        ident = self.load_identity()
        if all(getattr(ident, k, None) == v for k, v in changes.items()):
            return
        for k, v in changes.items():
            setattr(ident, k, v)
        try:
            ident.save(self.identity_path)
        except (OSError, DatasetError):
            pass

    def set_rater(self, rater_id: str) -> None:
        """Set who is annotating. Unsaved work of the previous rater is saved first; the current
        case is reloaded for the new rater (blind mode: without anyone else's mask)."""
        rater_id = (rater_id or "").strip()
        try:
            check_identifier(rater_id, "rater id")
        except DatasetError as e:
            raise AnnotateError(str(e)) from None
        if rater_id == self.rater:
            return
        self.save_if_dirty("saved on rater change")
        self.rater = rater_id
        self.remember(rater_id=rater_id)
        if self.store is not None and self.case_id is not None:
            self.load_case(self.case_id, save_first=False)

    # --- project -------------------------------------------------------------------------------
    def open_project(self, path) -> AnnotationStore:
        self.save_if_dirty("saved on project change")
        try:
            store = AnnotationStore(path)
        except DatasetError as e:
            raise AnnotateError(f"{path} is not an annotation project: {e}") from None
        self._close_case()
        self.store = store
        self.remember(last_project=str(Path(path).resolve()))
        return store

    def create_project(self, path, name: str | None = None, image_paths=()) -> AnnotationStore:
        """New project folder (optionally importing image files as cases) and open it."""
        try:
            store = AnnotationStore.create_project(path, name or Path(path).name)
            errors: list[str] = []
            store.import_images(image_paths, errors=errors)
        except DatasetError as e:
            raise AnnotateError(str(e)) from None
        self.open_project(path)
        if errors:
            raise AnnotateError("some images could not be imported: " + "; ".join(errors))
        return store

    def new_project_from_layer(self, path, image_layer, name: str | None = None) -> str:
        """New project from an image layer in the viewer (its data and geometry); the case is
        loaded for annotation. Returns the case id."""
        if image_layer is None or image_layer.__class__.__name__ != "Image":
            raise AnnotateError("choose an image layer to start a project from")
        if plain_dicom(image_layer):
            raise AnnotateError(
                f"layer {image_layer.name!r} is a DICOM series opened by napari's own reader: its slices are in "
                f"file-name order and it has no spacing; {REOPEN_HINT}"
            )
        data = np.asarray(image_layer.data)
        if data.ndim not in (2, 3) or getattr(image_layer, "rgb", False):
            raise AnnotateError(f"layer {image_layer.name!r}: only 2D/3D grey-value images can be annotated")
        geo = geometry_from_layer(image_layer)
        try:
            store = AnnotationStore.create_project(path, name or Path(path).name)
            source = (image_layer.metadata or {}).get("source_path")
            case_id, patient_id = case_identity(image_layer.name, image_layer.metadata)  # DICOM ids, not "series"
            cid = store.add_case(data, geo, case_id, source=source, patient_id=patient_id)
        except DatasetError as e:
            raise AnnotateError(str(e)) from None
        self.open_project(path)
        self.load_case(cid)
        return cid

    def import_images(self, paths) -> list[str]:
        store = self._need_store()
        errors: list[str] = []
        ids = store.import_images(paths, errors=errors)
        if errors:
            raise AnnotateError(f"imported {len(ids)} case(s); could not import: " + "; ".join(errors))
        return ids

    def _need_store(self) -> AnnotationStore:
        if self.store is None:
            raise AnnotateError("open or create an annotation project first")
        return self.store

    # --- cases ---------------------------------------------------------------------------------
    def case_rows(self) -> list[tuple[str, bool]]:
        """``(case_id, annotated by the current rater)`` for every case."""
        if self.store is None:
            return []
        return [(c, bool(self.rater) and self.store.has_mask(c, self.rater)) for c in self.store.case_ids()]

    def progress(self) -> tuple[int, int]:
        if self.store is None:
            return 0, 0
        if not self.rater:
            return 0, len(self.store.case_ids())
        return self.store.progress(self.rater)

    def next_case(self, unannotated_only: bool = False) -> str | None:
        """Go to the next case (or the next one the rater has not annotated); None at the end."""
        store = self._need_store()
        if unannotated_only and not self.rater:
            raise AnnotateError("set your rater id first")
        cid = store.next_case(self.case_id, self.rater, unannotated_only)
        if cid is not None:
            self.load_case(cid)
        return cid

    def previous_case(self) -> str | None:
        cid = self._need_store().previous_case(self.case_id)
        if cid is not None:
            self.load_case(cid)
        return cid

    def load_case(self, case_id: str, save_first: bool = True, repeat: bool = False) -> None:
        """Show ``case_id``: image, the rater's own mask (editable) and, unblinded, the others.
        ``repeat``: redo one's own case blind (first mask and others hidden; saved as a repeat)."""
        store = self._need_store()
        if save_first:
            self.save_if_dirty("saved on case switch")
        self.repeat = bool(repeat)
        image, geometry, info = store.load_image(case_id)
        own, sidecar, own_error = self._load_own(case_id) if self.rater else (None, None, None)
        self._close_case()
        self.case_id = case_id
        self.last_save_reason = ""
        kw = geometry.layer_kwargs(str(info.get("source_path", "")) or None)
        meta = {
            **kw.pop("metadata"),
            ROLE_KEY: "image",
            "case_id": case_id,
            OWNER_KEY: True,
            "image_sha256": info["image_sha256"],
        }
        window = store.manifest.get("intensity_window") or display_window(image)
        self.image_layer = self.viewer.add_image(
            image,
            name=layer_name("image", case_id),
            metadata=meta,
            colormap="gray",
            contrast_limits=tuple(window),
            **kw,
        )
        if not self.blind and not self.repeat:
            self._add_other_raters(case_id)
        self._hide_foreign_raters(case_id)
        if self.rater:
            self.session = AnnotationSession(self.rater, autosave_interval=self.autosave_interval, clock=self.clock)
            self.session.start_case(
                case_id, image_sha256=info["image_sha256"], sidecar=sidecar, revision=loaded_revision(own, sidecar)
            )
            self._add_own_layer(case_id, own if own is not None else np.zeros(image.shape, np.uint8), sidecar)
        else:
            self.session = None
        self.viewer.reset_view()
        if own_error:
            raise AnnotateError(own_error)

    def _load_own(self, case_id: str) -> tuple:
        """``(mask, sidecar, message)``: an unreadable own mask is moved to ``raters/.broken``
        first (so saving the fresh one never destroys it) and the message says where."""
        try:
            return (*self._own_io()[0](case_id, self.rater), None)
        except LockTimeout as e:
            raise AnnotateError(f"your annotation of {case_id} is being saved elsewhere; try again ({e})") from None
        except DatasetError as e:
            if self.repeat:  # never quarantine the first mask because the repeat is unreadable
                raise AnnotateError(f"your repeat of {case_id} cannot be loaded: {e}") from None
            error = e
        try:
            moved = self.store.quarantine(case_id, self.rater)
        except (OSError, DatasetError) as e:
            raise AnnotateError(
                f"your saved annotation of {case_id} cannot be loaded ({error}) nor moved "
                f"aside ({e}); not opening it for editing"
            ) from None
        where = ", ".join(str(m) for m in moved) or "nowhere (already gone)"
        return (
            None,
            None,
            (
                f"your saved annotation could not be loaded ({error}); the broken files were "
                f"moved to {where}; starting from an empty mask"
            ),
        )

    def _own_io(self):
        """``(load, save)`` of the rater's own mask: the first mask, or the repeat in repeat mode."""
        if not self.repeat:
            return self.store.load_mask, self.store.save_mask
        from functools import partial

        from ..annotation.repeats import load_repeat, save_repeat

        return partial(load_repeat, self.store), partial(save_repeat, self.store)

    def _rater_index(self, rater: str) -> int:
        raters = self.store.raters() if self.store is not None else []
        return raters.index(rater) if rater in raters else len(raters)

    def _add_own_layer(self, case_id: str, mask: np.ndarray, sidecar: dict | None) -> None:
        kw = transform_kwargs(self.image_layer)
        kw["metadata"].update(
            {
                ROLE_KEY: "rater",
                "rater": self.rater,
                "case_id": case_id,
                OWNER_KEY: True,
                "annotation": True,
                "sidecar": sidecar or {},
                "repeat": self.repeat,
            }
        )
        self._saved_sha = image_checksum((mask != 0).astype(np.uint8))
        who = f"{self.rater} (repeat)" if self.repeat and self.announce_repeats else self.rater
        layer = self.viewer.add_labels(
            mask.astype(np.uint8),
            name=layer_name("annotation", who),
            colormap=binary_colormap(rater_color(self._rater_index(self.rater))),
            opacity=0.6,
            **kw,
        )
        layer.selected_label = 1
        layer.brush_size = max(3, int(min(mask.shape[-2:]) // 40))
        layer.events.paint.connect(self._on_edit)
        layer.events.data.connect(self._on_edit)
        self.annotation_layer = layer
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"

    def _add_other_raters(self, case_id: str) -> list[str]:
        """Unblinded: other raters' masks as read-only contours; unreadable ones are skipped.
        Blind: nothing is read."""
        names = []
        if self.blind:
            return names
        for other in self.store.annotated_raters(case_id):
            if other == self.rater:
                continue
            try:
                mask, sidecar = self.store.load_mask(case_id, other)
            except DatasetError as e:  # skipped, but never silently
                self.notify(f"rater {other}'s annotation of {case_id} is not shown: {e}")
                continue
            if mask is None:
                continue
            kw = transform_kwargs(self.image_layer)
            kw["metadata"].update(
                {
                    ROLE_KEY: "rater",
                    "rater": other,
                    "case_id": case_id,
                    OWNER_KEY: True,
                    UNBLINDED_KEY: True,
                    "sidecar": sidecar or {},
                }
            )
            layer = self.viewer.add_labels(
                mask,
                name=layer_name("rater", other),
                opacity=0.8,
                colormap=binary_colormap(rater_color(self._rater_index(other))),
                **kw,
            )
            layer.contour = 1
            layer.editable = False
            names.append(layer.name)
        return names

    def _hide_foreign_raters(self, case_id: str) -> list[str]:
        """Blind mode: hide rater layers of this case that this controller did not create, and every
        layer computed from raters (``mr agreement``, ``mr consensus: ...``)."""
        hidden = []
        if not self.blind and not self.repeat:  # a repeat is always drawn blind
            return hidden
        for ly in self.viewer.layers:
            if self._blinded(ly, case_id):
                if not (ly.metadata or {}).get(_KEPT_HIDDEN):
                    ly.metadata[_KEPT_HIDDEN] = True
                    ly.events.visible.connect(self._keep_hidden)  # one eye-click must not show it
                if ly.visible:
                    ly.visible = False
                    hidden.append(ly.name)
        return hidden

    def _blinded(self, layer, case_id: str | None) -> bool:
        """Blind mode hides this layer: another rater's mask or small-nodule points of the case, or a
        layer computed from raters (consensus, agreement, a model trained on this project)."""
        md = layer.metadata or {}
        if md.get(ROLE_KEY) in _DERIVED_FROM_RATERS or self._trained_here(md):
            return True
        return (
            md.get(ROLE_KEY) in ("rater", "points")
            and md.get("case_id") == case_id
            and not md.get(OWNER_KEY)
            and md.get("rater") != self.rater
        )

    def _keep_hidden(self, event) -> None:
        """A layer blind mode hid was switched visible: hide it again and say why."""
        layer = getattr(event, "source", None)
        if layer is None or not layer.visible or not (self.blind or self.repeat):
            return
        if self._blinded(layer, self.case_id):
            layer.visible = False
            self.notify(f"Blind mode: {layer.name!r} stays hidden while you annotate; switch blind mode off to see it")

    def _trained_here(self, md: dict) -> bool:
        """A model output (layer metadata ``md``) of a model trained on this project's raters."""
        path = md.get("training_data")
        if not path or self.store is None:
            return False
        try:
            return Path(str(path)).expanduser().resolve() == Path(self.store.root).resolve()
        except OSError:
            return False

    def set_blind(self, blind: bool) -> None:
        """Blind mode on: the other raters' layers this controller loaded are removed (others'
        rater layers of the case are hidden); off: other raters' masks shown as contours."""
        blind = bool(blind)
        if blind == self.blind:
            return
        self.blind = blind
        if self.case_id is None or self.store is None:
            return
        if blind:
            for ly in list(self.viewer.layers):
                if (ly.metadata or {}).get(UNBLINDED_KEY):
                    self.viewer.layers.remove(ly)
            self._hide_foreign_raters(self.case_id)
        elif not self.repeat:
            self._add_other_raters(self.case_id)
            if self.annotation_layer is not None:  # keep painting on one's own layer
                self.viewer.layers.selection.active = self.annotation_layer

    def other_rater_layers(self) -> list:
        """Layers showing another rater's mask of the current case (visible or not)."""
        return [
            ly
            for ly in self.viewer.layers
            if (ly.metadata or {}).get(ROLE_KEY) == "rater"
            and (ly.metadata or {}).get("case_id") == self.case_id
            and (ly.metadata or {}).get("rater") != self.rater
        ]

    def _close_case(self) -> None:
        self._removing_own = True
        try:
            for ly in list(self.viewer.layers):
                if (ly.metadata or {}).get(OWNER_KEY):
                    self.viewer.layers.remove(ly)
        finally:
            self._removing_own = False
        self.case_id = None
        self.session = None
        self.image_layer = None
        self.annotation_layer = None
        self._saved_sha = None
        self._rescued_sha = None
        self.at_risk = False

    # --- editing -------------------------------------------------------------------------------
    def _on_edit(self, event=None) -> None:
        if self.session is not None and not self._suppress_edits:
            self.session.record_edit()
            if self.on_edit is not None:
                self.on_edit()

    def prefill_sources(self) -> list:
        """Labels layers a rater may start from: not their own, and never another rater's mask
        or a consensus (that would break blinding); model outputs first."""
        out = []
        for ly in self.viewer.layers:
            if ly.__class__.__name__ != "Labels" or same_layer(ly, self.annotation_layer):
                continue
            if (ly.metadata or {}).get(ROLE_KEY) in _NOT_PREFILL_ROLES:
                continue
            if self.blind and self._trained_here(ly.metadata or {}):
                continue  # trained on the other raters of this project: would break blinding
            out.append(ly)
        return sorted(out, key=lambda ly: (ly.metadata or {}).get(ROLE_KEY) not in ("persona", "sample"))

    def prefill_from_layer(self, source, *, everything: bool = False, point_mm=None) -> dict:
        """Replace the rater's mask by the lesion of Labels layer ``source`` (e.g. a model persona)
        at the ROI point (``point_mm``, world mm; default: the point the model run was centred on),
        or by every mark of it (``everything``, or no point known); undoable. The source is hidden
        and the annotation brought to the top so edits show. Provenance records the source; the
        mask counts as the rater's once edited or :meth:`confirm`-ed. :attr:`last_prefill` says
        what was written."""
        layer = self._need_annotation_layer()
        if source is None or source.__class__.__name__ != "Labels":
            raise AnnotateError("choose a Labels layer to pre-fill from")
        if same_layer(source, layer):
            raise AnnotateError("cannot pre-fill the annotation from itself")
        if (source.metadata or {}).get(ROLE_KEY) in _NOT_PREFILL_ROLES:
            raise AnnotateError(
                f"layer {source.name!r} is another rater's annotation or a consensus; "
                "pre-fill from a model output or your own labels"
            )
        if tuple(source.data.shape) != tuple(layer.data.shape):
            raise AnnotateError(
                f"layer {source.name!r} has shape {tuple(source.data.shape)}, the case has {tuple(layer.data.shape)}"
            )
        md = source.metadata or {}
        info = {"layer": source.name}
        for key in _PROVENANCE_KEYS:
            value = md.get(key)
            if isinstance(value, (str, int, float, bool)) and key != "kind":
                info[key] = value
        role = md.get(ROLE_KEY)
        if role:
            info["source_role"] = str(role)
        info.setdefault(
            "output", f"{role} {md.get('persona') or md.get('rater') or source.name}".strip() if role else source.name
        )
        point = md.get("roi_point_mm") if point_mm is None else point_mm
        index = None
        if point is not None and not everything:
            index = np.asarray(layer.world_to_data(np.asarray(point, float)[-layer.ndim :]), float)
        pick = pick_lesion(source.data, index, np.abs(np.asarray(layer.scale, float)), everything)
        self._suppress_edits = True
        try:
            set_labels_undoable(layer, pick.mask.astype(layer.data.dtype))
        finally:
            self._suppress_edits = False
        info["copied"] = pick.summary()
        self.session.mark_prefilled(info)
        source.visible = False  # the model's layer above would hide every edit
        self.viewer.layers.move(self.viewer.layers.index(layer), len(self.viewer.layers))
        self.viewer.layers.selection.active = layer
        self.last_prefill = (
            f"Pre-filled {pick.summary()}. Hid {source.name!r}; your annotation is on top. "
            "Edit it, or press Confirm if it is right as it is (until then it is a draft, not counted)."
        )
        return dict(self.session.provenance)

    @property
    def announce_repeats(self) -> bool:
        """Whether the project shows repeats as such (False: neutral, for test-retest designs)."""
        try:
            return self.store is None or bool(collection_settings(self.store)["announce_repeats"])
        except DatasetError:
            return True

    @property
    def is_draft(self) -> bool:
        """The open mask is an untouched model pre-fill (saved as a draft, not counted)."""
        return self.session is not None and unconfirmed_prefill({"provenance": self.session.provenance})

    def confirm(self) -> dict:
        """The rater accepts the pre-fill as it is: recorded as ``confirmed`` and saved, so it counts
        as their annotation (training, reports, queue, agreement)."""
        self._need_annotation_layer()
        if self.session.provenance.get("kind") != "prefilled":
            raise AnnotateError("nothing to confirm: this mask is not a model pre-fill (Save saves it)")
        self.session.provenance.update(confirmed=True, confirmed_at=now_iso())
        return self.save("confirmed and saved")

    def _need_annotation_layer(self):
        if not self.rater:
            raise AnnotateError("set your rater id before annotating (painting is locked until then)")
        if self.store is None or self.case_id is None:
            raise AnnotateError("open a project and a case first")
        layer = self.annotation_layer
        if not self._own_layer_present():
            raise AnnotateError("your annotation layer was removed; reload the case to continue")
        return layer

    # --- saving --------------------------------------------------------------------------------
    def _current_mask(self) -> np.ndarray:
        return (np.asarray(self.annotation_layer.data) != 0).astype(np.uint8)

    def has_unsaved_changes(self) -> bool:
        """Whether the mask differs from the last saved (or loaded) one, by checksum."""
        if self.session is None or not self._own_layer_present():
            return False
        return image_checksum(self._current_mask()) != self._saved_sha

    def save(self, reason: str = "saved", lock_timeout: float | None = None) -> dict:
        """Save the rater's mask of the current case; returns the sidecar.

        Any failure keeps the layer and raises :class:`AnnotateError` after rescuing the mask
        (:meth:`rescue`: emergency copy + notification); a newer revision saved by another
        session raises :class:`ConflictError` (mask kept as a conflict copy); a lock held elsewhere
        with ``lock_timeout`` (autosave) raises :class:`AutosavePostponed` (retried next tick).
        """
        layer = self._need_annotation_layer()
        mask = self._current_mask()
        geo = geometry_from_layer(layer)
        try:
            sidecar = self._own_io()[1](
                self.case_id, self.rater, mask, geometry=geo, lock_timeout=lock_timeout, **self.session.save_kwargs()
            )
        except LockTimeout as e:
            if lock_timeout is not None:
                raise AutosavePostponed(f"autosave postponed: {e}") from None
            raise AnnotateError(self.rescue(f"not saved: {e}", mask)) from None
        except SaveConflict as e:
            self.session.postpone()
            if e.copy_path:  # the store kept the refused version as a conflict copy
                self._rescued_sha, self.last_rescue = image_checksum(mask), str(e.copy_path)
            else:  # nothing kept on disk (a repeat's conflict): an emergency copy keeps it
                self.rescue(f"not saved: {e}", mask)
            msg = (
                f"{e}. Nothing was overwritten: reload the case to continue from the newer version, "
                "or use 'overwrite' to replace it with yours"
            )
            self.notify(msg)
            raise ConflictError(msg) from None
        except (DatasetError, OSError) as e:
            self.session.postpone()
            raise AnnotateError(
                self.rescue(str(e) if str(e).startswith("case ") else f"not saved: {e}", mask)
            ) from None
        self.session.mark_saved(sidecar)
        self._saved_sha = sidecar.get("mask_sha256") or image_checksum(mask)
        self.at_risk = False
        layer.metadata["sidecar"] = sidecar
        self.last_save_reason = f"{reason} as a draft" if self.is_draft else reason
        return sidecar

    def overwrite(self) -> dict:
        """After a :class:`ConflictError`: save this session's mask over the newer revision (the
        user said so; the other version stays in its sidecar history only as that revision)."""
        self._need_annotation_layer()
        mask, sidecar = self._own_io()[0](self.case_id, self.rater)
        self.session.revision = loaded_revision(mask, sidecar)
        return self.save("saved (overwrote the other session's version)")

    def rescue(self, error: str, mask: np.ndarray | None = None) -> str:
        """Keep the mask after a failed save: emergency copy (unless this very mask is already in
        one) and a notification; returns the message. Never raises."""
        mask = self._current_mask() if mask is None else mask
        sha = image_checksum(mask)
        if sha == self._rescued_sha and self.last_rescue:
            return f"{error}. Your annotation is kept in {self.last_rescue} (and still open here)"
        geo = geometry_from_layer(self.annotation_layer)
        record = {**self.session.save_kwargs(), "error": error}
        try:
            path = self.store.save_emergency_copy(self.case_id, self.rater, mask, geo, record)
        except (DatasetError, OSError) as e:
            self.at_risk = True
            msg = (
                f"{error}. The emergency copy failed too ({e}); your annotation is still open here: "
                "free some disk space and save again, or save the layer elsewhere"
            )
        else:
            self._rescued_sha, self.last_rescue, self.at_risk = sha, str(path), False
            msg = f"{error}. Your unsaved annotation was kept as {path} (and is still open here)"
        self.notify(msg)
        return msg

    def save_if_dirty(self, reason: str = "saved") -> dict | None:
        """Save when the mask differs from the saved one (edit events or not)."""
        if self.has_unsaved_changes():
            return self.save(reason)
        if self.session is not None and self._own_layer_present():
            self.session.dirty = False  # e.g. painted, then undone back to the saved state
        return None

    def autosave_if_due(self, now: float | None = None) -> dict | None:
        """Every autosave interval: save when the mask differs from the saved one. A lock held
        elsewhere raises :class:`AutosavePostponed` after ``AUTOSAVE_TIMEOUT`` s instead of
        blocking the GUI; the next call (timer tick) tries again."""
        s = self.session
        if s is None or not s.check_due(now):
            return None
        if not self.has_unsaved_changes():
            s.mark_unchanged(now)
            return None
        return self.save("autosaved", lock_timeout=AUTOSAVE_TIMEOUT)

    def autosave_tick(self, now: float | None = None) -> str | None:
        """The autosave timer's body: never raises. Returns a status message (postponed or
        failed, with where the emergency copy is), None when nothing happened or all is saved."""
        try:
            self.autosave_if_due(now)
        except AutosavePostponed as e:
            return str(e)
        except AnnotateError as e:
            return f"Autosave failed: {e}"
        except Exception as e:  # noqa: BLE001 - a timer must never raise into the Qt event loop
            try:
                return f"Autosave failed: {self.rescue(f'not saved: {type(e).__name__}: {e}')}"
            except Exception:  # noqa: BLE001
                return f"Autosave failed: {type(e).__name__}: {e}"
        return None

    def set_autosave_interval(self, seconds: float) -> None:
        self.autosave_interval = float(seconds)
        if self.session is not None:
            self.session.autosave_interval = float(seconds)
        self.remember(autosave_seconds=float(seconds))

    @property
    def dirty(self) -> bool:
        return bool(self.session is not None and self.session.dirty)

    def _own_layer_present(self) -> bool:
        return any(same_layer(ly, self.annotation_layer) for ly in self.viewer.layers)

    def _on_layer_removing(self, event) -> None:
        """The user deletes the annotation layer: save unsaved work first (or rescue it)."""
        if self._removing_own:
            return
        try:
            layer = self.viewer.layers[event.index]
        except (IndexError, AttributeError, TypeError):
            return
        if same_layer(layer, self.annotation_layer):
            self.save_or_rescue("saved before the layer was removed")
            self.annotation_layer = None

    def save_or_rescue(self, reason: str) -> str | None:
        """``save_if_dirty``, never raising: a failed save leaves an emergency copy (see
        :meth:`rescue`) and a notification. Returns that message, None when saved or nothing to
        save. ``at_risk`` tells whether the emergency copy failed too."""
        try:
            self.save_if_dirty(reason)
            return None
        except AnnotateError as e:  # save() already rescued and notified
            return str(e)
        except Exception as e:  # noqa: BLE001 - closing must go on; the work is rescued below
            if self.session is None or not self._own_layer_present():
                return f"not saved: {e}"
            return self.rescue(f"not saved: {type(e).__name__}: {e}")

    def prepare_close(self) -> str | None:
        """Before closing: save (or rescue) unsaved work. None: safe to close; else the message
        to ask the user with (:func:`decide_close` returns ``"ask"``)."""
        msg = self.save_or_rescue("saved on close")
        state = "at_risk" if self.at_risk and self.has_unsaved_changes() else "safe"
        return msg if decide_close(state) == "ask" else None

    def resolve_close(self, choice: str, path=None) -> bool:
        """The user's answer to :meth:`prepare_close`'s question; True when closing may go on.
        ``save_as`` writes the mask (and a sidecar) to ``path``; if that fails too, False."""
        action = decide_close("at_risk" if self.at_risk else "safe", choice)
        if action == "close":
            return True
        if action == "stay":
            return False
        if not path:
            return False
        try:
            self.save_as(path)
        except AnnotateError as e:
            self.notify(str(e))
            return False
        return True

    def save_as(self, path) -> Path:
        """Write the current mask (image geometry) to ``path`` plus ``<path stem>.json`` with the
        session's record; outside the project, for when the project cannot be written."""
        layer = self._need_annotation_layer()
        p = Path(path)
        try:
            write_image(p, self._current_mask(), geometry_from_layer(layer), label=True)
            stem = p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem
            write_json(
                p.with_name(stem + ".json"),
                {
                    **self.session.save_kwargs(),
                    "rater": self.rater,
                    "case_id": self.case_id,
                    "saved": now_iso(),
                    "project": str(self.store.root),
                },
            )
        except (MedicalIOError, OSError) as e:
            raise AnnotateError(f"could not save your annotation as {p}: {e}") from None
        self.at_risk = False
        self.last_rescue = str(p)
        self._rescued_sha = image_checksum(self._current_mask())
        return p

    def close(self) -> str | None:
        """Dock closing: save (or rescue) unsaved work, then stop listening. The annotation layer
        stays in the viewer, so nothing is lost even when both the save and the copy failed."""
        msg = self.save_or_rescue("saved on close")
        self.disconnect()
        return msg

    def disconnect(self) -> None:
        """Stop listening to the viewer (dock closed)."""
        try:
            self.viewer.layers.events.removing.disconnect(self._on_layer_removing)
        except (TypeError, ValueError, RuntimeError):
            pass
