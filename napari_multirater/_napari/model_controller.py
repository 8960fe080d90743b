"""Layer side of model inference: typed run requests, jobs and the ``mr ...`` result layers (no Qt widgets).

Every result goes into a layer with a fixed name that is reused on re-runs. A run replaces its
whole output layer (zero outside the computed region: a current-slice run followed by an ROI run
leaves nothing of the slice run on screen); Labels are written through the undo history, so one
undo step brings the previous run back. All layers copy the image layer's geometry; ``mr samples``
gets one extra leading (sample) axis with scale 1.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from ..analysis.contours import sample_contours
from ..inference.engine import InferenceEngine
from ..inference.roi import LESION_DEPTH_MM, ROI, PredictionResult
from ..io.geometry import METADATA_KEY, geometry_from_layer
from .layers import (
    MODEL_CONTOUR,
    ROLE_KEY,
    binary_colormap,
    layer_in_viewer,
    layer_name,
    persona_color,
    same_layer,
    transform_kwargs,
    upsert_layer,
)
from .model_request import ALL_EXPERTS, SCOPES_2D, SCOPES_3D, RunKind, RunRequest, Scope
from .workers import Job, JobRunner, threads_disabled

SAMPLES = layer_name("samples")
SAMPLE_CONTOURS = layer_name("sample contours")
MEAN_PROB = layer_name("mean probability")
BLEND = layer_name("persona blend")
UNC_CONTOUR = layer_name("uncertainty contour")
# output families by layer role: a run shows its own family and hides the others (one click brings them back)
FAMILIES = {
    "samples": ("sample", "mean_probability", "sample_contours"),
    "personas": ("persona",),
    "uncertainty": ("uncertainty", "uncertainty_contour"),
    "explorer": ("latent_explorer",),
}


__all__ = ["ALL_EXPERTS", "ModelController", "RunKind", "RunRequest", "Scope", "threads_disabled"]


def _warn(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def persona_layer_name(rater: str) -> str:
    return layer_name("persona", rater)


def uncertainty_layer_name(kind: str) -> str:
    return layer_name("uncertainty", kind)


def _extend_transforms(image_kw: dict) -> dict:
    """An image layer's transform kwargs with one extra leading axis (scale 1, no translation)."""
    kw = dict(image_kw)
    n = len(np.asarray(kw["scale"]))
    kw["scale"] = (1.0, *np.asarray(kw["scale"], float))
    kw["translate"] = (0.0, *np.asarray(kw["translate"], float))
    rot = np.eye(n + 1)
    rot[1:, 1:] = np.asarray(kw["rotate"], float)
    kw["rotate"] = rot
    aff = np.eye(n + 2)
    aff[1:, 1:] = np.asarray(kw["affine"], float)
    aff[0, 0] = 1.0
    kw["affine"] = aff
    if np.any(np.asarray(kw.get("shear", 0)) != 0):
        kw.pop("shear")  # oblique shear on the sample axis is meaningless; keep the others
    else:
        kw.pop("shear", None)
    if "units" in kw:
        kw["units"] = ("pixel", *[str(u) for u in kw["units"]])
    if "axis_labels" in kw:
        kw["axis_labels"] = ("sample", *[str(a) for a in kw["axis_labels"]])
    kw["metadata"] = {k: v for k, v in kw["metadata"].items() if k != METADATA_KEY}  # geometry is n-D
    return kw


class ModelController:
    """Runs an :class:`InferenceEngine` on an image layer and shows the results as layers."""

    def __init__(self, viewer, image_layer=None):
        self.viewer = viewer
        self.image_layer = image_layer
        self.engine: InferenceEngine | None = None
        self.jobs = JobRunner()  # one model job at a time (load, run, explorer); docks ask jobs.busy
        self.last: dict[RunKind, PredictionResult] = {}
        self.on_reset: list[Callable[[], None]] = []  # called when cached results become stale (explorer)
        self.dropped: str | None = None  # why the last finished result was not shown (None: shown)
        self.hidden_earlier: list[str] = []  # older output layers hidden by the newest run
        self._target: tuple | None = None  # (image layer, transform kwargs) results are written for
        self._roi_point: list[float] | None = None  # the ROI point (mm) of the result being shown

    # ------------------------------------------------------------------ jobs
    def _launch(self, gen, label: str, done, callbacks: dict, sync) -> Job:
        """Start ``gen`` on :attr:`jobs`; ``done(result)`` (GUI thread) before the caller's ``on_done``."""
        self.dropped = None
        return self.jobs.start(gen, label=label, on_done=done, sync=sync, **callbacks)

    def _require_idle(self) -> None:
        if self.jobs.busy:
            raise ValueError("a model job is already in progress: wait or cancel it")

    # ------------------------------------------------------------------ model and image
    def load_model(self, name_or_path, device: str = "auto", **kwargs) -> InferenceEngine:
        """Load synchronously (scripts, tests; the dock uses :meth:`start_load`)."""
        self._set_engine(InferenceEngine.load(name_or_path, device=device, **kwargs))
        return self.engine

    def start_load(
        self,
        name_or_path,
        device: str = "auto",
        *,
        options: dict | None = None,
        on_done=None,
        sync: bool | None = None,
        **callbacks,
    ) -> Job:
        """Load a model as a job with progress (reading, moving to the device); the engine is
        swapped in on the GUI thread, then ``on_done(engine)``. ``options`` go to
        :meth:`InferenceEngine.iter_load` (image_units, lidc_mapping, precision); ``callbacks`` are
        the other :meth:`JobRunner.start` callbacks (on_progress, on_error, on_cancelled, on_finished)."""
        self._require_idle()

        def done(engine):
            self._set_engine(engine)
            if on_done is not None:
                on_done(engine)

        return self._launch(
            InferenceEngine.iter_load(name_or_path, device, **(options or {})), "load model", done, callbacks, sync
        )

    def _set_engine(self, engine) -> None:
        self.engine = engine
        self._reset()

    def _reset(self) -> None:
        """Drop cached results (new model, image or intensity mapping) and tell the listeners."""
        self.last.clear()
        for listener in self.on_reset:
            listener()

    def set_image_layer(self, layer) -> bool:
        """Choose the image; returns True when it changed (then cached results/explorer are dropped)."""
        if same_layer(layer, self.image_layer):
            return False
        self.image_layer = layer
        self._reset()
        return True

    def set_intensity(self, image_units: str = "auto", lidc_mapping: str = "fixed") -> None:
        """Change how raw image values are mapped to the model input (see modelfiles.intensity)."""
        from ..modelfiles.intensity import InputNormalizer

        if self.engine is None:
            raise ValueError("load a model first (Model section)")
        self.engine.normalizer = InputNormalizer.from_card(self.engine.card, image_units, lidc_mapping)
        self._reset()

    def require(self):
        if self.engine is None:
            raise ValueError("load a model first (Model section)")
        if not layer_in_viewer(self.viewer, self.image_layer):
            raise ValueError("choose an image layer first")
        if getattr(self.image_layer, "rgb", False) or self.image_layer.ndim not in (2, 3):
            raise ValueError(f"{self.image_layer.name!r} is not a 2D or 3D grey-value image")
        return self.engine, self.image_layer

    def image_data(self) -> np.ndarray:
        layer = self.require()[1]
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        return np.asarray(data)

    def geometry(self):
        return geometry_from_layer(self.image_layer)

    def spacing_known(self) -> bool:
        """False for a plain array layer (no geometry metadata, scale 1, pixel units): the model
        then runs at native size instead of resampling a made-up 1 mm spacing."""
        from .guidance import spacing_known

        return spacing_known(self.image_layer)

    def scopes(self) -> tuple[Scope, ...]:
        return SCOPES_3D if self.image_layer is not None and self.image_layer.ndim == 3 else SCOPES_2D

    def current_slice_index(self) -> int | None:
        """Axial index (data coordinates) of the viewer's current position, None for 2D images."""
        layer = self.image_layer
        if layer is None or layer.ndim != 3:
            return None
        z = int(np.round(layer.world_to_data(self.viewer.dims.point)[0]))
        return int(np.clip(z, 0, layer.data.shape[0] - 1))

    # ------------------------------------------------------------------ regions of interest
    def roi_from_layer(self, layer, size_mm: float = 40.0) -> ROI:
        """A rectangle from a Shapes layer (last/selected shape) or a box of ``size_mm`` around a
        point of a Points layer (last/selected point), in the image's voxel grid. The point box's
        depth along z is at most :data:`LESION_DEPTH_MM` (the lesion, not the in-plane field of
        view: an 80 mm box would span a whole series of 2.5 mm slices)."""
        img = self.image_layer
        kind = layer.__class__.__name__
        if kind == "Shapes":
            if len(layer.data) == 0:
                raise ValueError(f"{layer.name!r} has no shape: draw a rectangle first")
            i = max(layer.selected_data) if layer.selected_data else len(layer.data) - 1
            verts = np.asarray(layer.data[i], float)
            idx = np.array([img.world_to_data(layer.data_to_world(v)) for v in verts])
            lo, hi = idx.min(0), idx.max(0)
            y0, x0 = (int(np.floor(v + 0.5)) for v in lo[-2:])
            y1, x1 = (int(np.floor(v + 0.5)) for v in hi[-2:])
            z = None
            if img.ndim == 3:
                z = self.current_slice_index() if layer.ndim < 3 else int(np.round(lo[0]))
                z = (z, max(int(np.round(hi[0])), z) + 1)
            return ROI.rect(z, y0, x0, max(y1, y0 + 1), max(x1, x0 + 1))
        if kind == "Points":
            if len(layer.data) == 0:
                raise ValueError(f"{layer.name!r} has no point: add a point first")
            i = max(layer.selected_data) if layer.selected_data else len(layer.data) - 1
            world = np.asarray(layer.data_to_world(layer.data[i]), float)
            idx = np.asarray(img.world_to_data(world), float)
            if img.ndim == 3 and layer.ndim < 3:
                idx[0] = self.current_slice_index()
            size = (min(size_mm, LESION_DEPTH_MM), size_mm, size_mm) if img.ndim == 3 else size_mm
            return ROI.point(self.geometry().index_to_physical(idx), size)
        raise ValueError(f"{layer.name!r} is a {kind} layer: use a Shapes (rectangle) or Points layer for the ROI")

    def scope_kwargs(self, request: RunRequest) -> dict:
        """``iter_predict_volume`` keywords for the request's scope."""
        if request.scope == Scope.CURRENT_SLICE:
            return {"slice_index": self.current_slice_index()}
        if request.scope == Scope.ROI:
            if request.roi is not None:
                return {"roi": request.roi}
            if request.roi_layer is None:
                raise ValueError("choose a Shapes or Points layer for the region of interest")
            return {"roi": self.roi_from_layer(request.roi_layer, request.roi_size_mm)}
        return {}

    @staticmethod
    def output_kwargs(request: RunRequest) -> dict:
        """``iter_predict_volume`` keywords for what the request's kind shows: binary samples only
        for the samples run (an uncertainty run draws its samples for the maps and keeps none)."""
        n = request.n_samples
        if request.kind == RunKind.SAMPLES:
            return {"samples": n}
        if request.kind == RunKind.PERSONAS:
            return {"samples": 0, "personas": True}
        return {"samples": 0, "uncertainty": True, "uncertainty_samples": n}

    # ------------------------------------------------------------------ running
    def start(self, request: RunRequest, *, on_done=None, sync: bool | None = None, **callbacks) -> Job:
        """Run ``request``; its result is shown with :meth:`apply` on the GUI thread, then
        ``on_done(result)``; ``callbacks``: the other :meth:`JobRunner.start` callbacks. Returns the
        :class:`Job`. Errors in setup raise ValueError before anything starts."""
        engine, layer = self.require()
        self._require_idle()
        kw = {**self.scope_kwargs(request), **self.output_kwargs(request)}
        kw.update(
            seed=request.seed,
            batch_slices=request.batch_slices,
            source=str(layer.metadata.get("source_path") or f"image layer {layer.name!r}"),
        )
        if not self.spacing_known():
            kw["target_spacing_mm"] = "native"
        image, geometry = self.image_data(), self.geometry()
        # results belong to the grid of the image as it is now, whatever happens to the combo
        target = (layer, transform_kwargs(layer))
        kind = request.kind

        def done(result):
            self.dropped = self._stale(target[0], result.shape)
            if self.dropped:
                _warn(f"model {kind.value}: result not shown: {self.dropped}")
                return
            if same_layer(target[0], self.image_layer):
                self.last[kind] = result
            center = getattr(kw.get("roi"), "center_mm", None)
            self._roi_point = None if center is None else [float(v) for v in center]
            try:
                with self._output_to(*target):
                    self.apply(request, result)
            finally:
                self._roi_point = None
            roi_layer = request.roi_layer if request.scope == Scope.ROI else None
            if roi_layer is not None and layer_in_viewer(self.viewer, roi_layer):  # the click stays in view
                self.viewer.layers.move(self.viewer.layers.index(roi_layer), len(self.viewer.layers))
            if on_done is not None:
                on_done(result)

        return self._launch(
            engine.iter_predict_volume(image, geometry, **kw), f"model {kind.value}", done, callbacks, sync
        )

    def _stale(self, layer, shape) -> str | None:
        """Why results computed for ``layer`` at ``shape`` can no longer be shown (None: they can)."""
        if not layer_in_viewer(self.viewer, layer):
            return f"the image layer {layer.name!r} was removed while the model was running"
        now = tuple(np.shape(layer.data[0] if getattr(layer, "multiscale", False) else layer.data))
        if now != tuple(shape):
            return f"the image layer {layer.name!r} changed shape from {tuple(shape)} to {now} during the run"
        return None

    @contextmanager
    def _output_to(self, layer, kw):
        """Write result layers for ``layer`` with transforms ``kw`` (captured when a job started)."""
        prev, self._target = self._target, (layer, kw)
        try:
            yield
        finally:
            self._target = prev

    @property
    def _out_layer(self):
        return self._target[0] if self._target is not None else self.image_layer

    def _out_kw(self) -> dict:
        return dict(self._target[1]) if self._target is not None else transform_kwargs(self.image_layer)

    def cancel(self) -> None:
        self.jobs.cancel()

    # ------------------------------------------------------------------ layers
    def _meta(self, role: str, **extra) -> dict:
        td = ((self.engine.card if self.engine else {}) or {}).get("training_data") or {}
        meta = {
            ROLE_KEY: role,
            "model": self.engine.name if self.engine else None,
            "image_layer": self._out_layer.name,
            "roi_point_mm": self._roi_point,  # Pre-fill copies the lesion at this point
            **extra,
        }
        if td.get("path"):  # blind mode hides outputs of a model trained on the open project's raters
            meta["training_data"] = str(td["path"])
        return meta

    def _labels(self, name, result_region, arr, lead=0, like_kw=None, undo=True, **kwargs):
        """Create or replace a Labels layer on the output image's grid (``lead`` extra leading axes,
        e.g. samples): ``arr`` in the region, zero elsewhere, written through the undo history (one
        step; see :func:`upsert_layer`)."""
        arr = np.asarray(arr)
        shape = tuple(arr.shape[:lead]) + tuple(np.shape(self._out_layer.data))
        full = np.zeros(shape, arr.dtype if arr.dtype.kind in "iu" else np.uint8)
        full[(slice(None),) * lead + tuple(result_region)] = arr
        return upsert_layer(self.viewer, name, full, "labels", like=like_kw or self._out_kw(), undo=undo, **kwargs)

    def _image(self, name, region, arr, **kwargs):
        """Create or replace a float Image layer on the output image's grid (``arr`` in the region,
        zero elsewhere; contrast fixed to 0..1 when created)."""
        full = np.zeros(np.shape(self._out_layer.data), np.float32)
        full[tuple(region)] = arr
        return upsert_layer(self.viewer, name, full, "image", like=self._out_kw(), contrast_limits=(0.0, 1.0), **kwargs)

    def hide_other_families(self, family: str) -> list[str]:
        """Hide the visible output layers of the other families (older runs); remembered in
        :attr:`hidden_earlier` so :meth:`show_earlier` brings them back."""
        keep = FAMILIES.get(family, ())
        roles = {r for f, rs in FAMILIES.items() if f != family for r in rs} - set(keep)
        hidden = []
        for ly in self.viewer.layers:
            md = ly.metadata or {}
            if md.get(ROLE_KEY) in roles and md.get("model") is not None and ly.visible:
                ly.visible = False
                hidden.append(ly.name)
        if hidden:
            self.hidden_earlier = [n for n in self.hidden_earlier if n not in hidden] + hidden
        return hidden

    def show_earlier(self) -> list[str]:
        """Show the output layers hidden by newer runs again."""
        shown = [n for n in self.hidden_earlier if n in self.viewer.layers]
        for n in shown:
            self.viewer.layers[n].visible = True
        self.hidden_earlier = []
        return shown

    def apply(self, request: RunRequest, result: PredictionResult):
        """Put a result into its layers (GUI thread) as ``request`` asks, hiding older output
        families. Returns the layers touched."""
        kind = request.kind
        self.hide_other_families(kind.value)
        if kind == RunKind.SAMPLES:
            return self.show_samples(result, contours=request.contours)
        if kind == RunKind.PERSONAS:
            return self.show_personas(result, request.expert)
        return self.show_uncertainty(result, request.uncertainty_kind)

    def show_samples(self, result: PredictionResult, contours: bool = False) -> list:
        out = []
        if result.samples_region is not None:
            layer = self._labels(
                SAMPLES,
                result.region,
                result.samples_region,
                lead=1,
                like_kw=_extend_transforms(self._out_kw()),
                opacity=0.6,
                metadata=self._meta("sample", seed=result.info.get("seed")),
                colormap=binary_colormap("#ffd700"),
            )
            out.append(layer)
        if result.mean_prob_region is not None:
            out.append(
                self._image(
                    MEAN_PROB,
                    result.region,
                    result.mean_prob_region,
                    colormap="magma",
                    blending="additive",
                    opacity=0.8,
                    metadata=self._meta("mean_probability"),
                )
            )
        if contours and result.samples_region is not None:
            out.append(
                self._labels(
                    SAMPLE_CONTOURS,
                    result.region,
                    sample_contours(result.samples_region),
                    metadata=self._meta("sample_contours"),
                    opacity=0.9,
                )
            )
        for name, visible in ((SAMPLE_CONTOURS, contours), (SAMPLES, not contours)):
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = visible
        self._select_image()
        return out

    def show_personas(self, result: PredictionResult, expert: str = ALL_EXPERTS) -> list:
        names = list(result.personas_region)
        chosen = names if expert == ALL_EXPERTS else [expert]
        out = []
        for k, rater in enumerate(names):
            lname = persona_layer_name(rater)
            if rater not in chosen:
                if lname in self.viewer.layers:
                    self.viewer.layers[lname].visible = False
                continue
            layer = self._labels(
                lname,
                result.region,
                result.personas_region[rater],
                colormap=binary_colormap(persona_color(k)),
                opacity=0.9,
                metadata=self._meta("persona", rater=rater, color=persona_color(k)),
            )
            layer.contour = MODEL_CONTOUR if expert == ALL_EXPERTS else 0  # model: thick (raters: thin)
            layer.visible = True
            out.append(layer)
        self._select_image()
        return out

    def show_uncertainty(self, result: PredictionResult, kind: str = "entropy") -> list:
        if kind not in result.uncertainty_region:
            raise ValueError(f"no {kind!r} map in this result (available: {', '.join(result.uncertainty_region)})")
        out = []
        for k in result.uncertainty_region:
            name = uncertainty_layer_name(k)
            if k == kind:
                out.append(
                    self._image(
                        name,
                        result.region,
                        result.uncertainty_region[k],
                        colormap="inferno",
                        blending="additive",
                        opacity=0.8,
                        metadata=self._meta("uncertainty", kind=k),
                    )
                )
                out[-1].visible = True
                _show_colorbar(out[-1], True)
            elif name in self.viewer.layers:
                self.viewer.layers[name].visible = False
                _show_colorbar(self.viewer.layers[name], False)
        self._select_image()
        return out

    def uncertainty_contour(self, kind: str, threshold: float):
        """``mr uncertainty contour``: outline of ``mr uncertainty: <kind>`` >= threshold."""
        name = uncertainty_layer_name(kind)
        if name not in self.viewer.layers:
            raise ValueError(f"compute the {kind} map first")
        mask = (np.asarray(self.viewer.layers[name].data) >= float(threshold)).astype(np.uint8)
        region = tuple(slice(0, s) for s in mask.shape)
        layer = self._labels(
            UNC_CONTOUR,
            region,
            mask,
            colormap=binary_colormap("#00e5ff"),
            metadata=self._meta("uncertainty_contour", kind=kind, threshold=float(threshold)),
        )
        layer.contour = 1
        layer.visible = True
        return layer

    def blend(self, i: int, j: int, t: float, seed: int = 0):
        """``mr persona blend``: blend of raters i and j on the 2D image / current slice."""
        engine, _ = self.require()
        image, z = self._current_2d()
        mask = (engine.blend(image, i, j, t, seed=seed) > 0.5).astype(np.uint8)
        region = self._slice_region(z, mask.shape)
        names = engine.rater_names
        layer = self._labels(
            BLEND,
            region,
            mask,
            colormap=binary_colormap("#ffffff"),
            opacity=0.8,
            metadata=self._meta(
                "persona", rater=f"{names[i]}~{names[j]}@{t:.2f}", blend=[names[i], names[j], float(t)]
            ),
        )
        layer.contour = 1
        layer.visible = True
        self._select_image()
        return layer

    def _current_2d(self):
        data = self.image_data()
        if data.ndim == 2:
            return data, None
        z = self.current_slice_index()
        return data[z], z

    def _slice_region(self, z, shape2d):
        base = (slice(0, shape2d[0]), slice(0, shape2d[1]))
        return base if z is None else (slice(z, z + 1), *base)

    def _select_image(self):
        if layer_in_viewer(self.viewer, self._out_layer):
            self.viewer.layers.selection.active = self._out_layer


def _show_colorbar(layer, on: bool) -> None:
    """The layer's colour bar (napari >= 0.5: an overlay on the canvas), if this napari has one."""
    bar = getattr(layer, "colorbar", None)
    if bar is not None:
        bar.visible = bool(on)
