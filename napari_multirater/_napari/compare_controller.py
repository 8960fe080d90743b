"""Compare raters in the viewer: pairwise overlap, STAPLE/majority consensus, agreement count,
per-rater style and model-vs-rater matching, on chosen Labels layers.

The computation is the Qt-free generator :func:`~napari_multirater.analysis.compare.compare_masks`,
run as a job on the controller's :class:`~napari_multirater._napari.workers.JobRunner` (which also
runs the dataset report, :func:`~napari_multirater.analysis.dataset_report.dataset_report`).
:class:`CompareController` gathers masks from layers and writes the result layers back:
``mr agreement`` (Image: how many raters marked each voxel), ``mr consensus: majority`` and
``mr consensus: staple`` (Labels), all with the geometry of the case's image layer, reused (never
duplicated) when the comparison is run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..analysis.compare import CompareResult, compare_masks
from ..analysis.dataset_report import dataset_report
from ..datasets.case import MultiRaterCase
from ..io.geometry import geometry_from_layer
from .layers import ROLE_KEY, binary_colormap, layer_name, rater_layers, same_layer, upsert_layer
from .workers import Job, JobRunner, run_to_completion, threads_disabled

__all__ = [
    "AGREEMENT",
    "CONSENSUS_MAJORITY",
    "CONSENSUS_STAPLE",
    "CompareController",
    "CompareInput",
    "CompareResult",
    "threads_disabled",
]

AGREEMENT = layer_name("agreement")
CONSENSUS_MAJORITY = layer_name("consensus", "majority")
CONSENSUS_STAPLE = layer_name("consensus", "staple")
MODEL_ROLES = ("persona", "sample")
RESULT_ROLES = ("agreement", "consensus")
_NOT_RATER_ROLES = ("sample_contours", "uncertainty_contour", "latent_explorer")
CONSENSUS_COLORS = {"majority": "#ffffff", "staple": "#ffd700"}


@dataclass
class CompareInput:
    """Masks gathered from layers: masks (K, *shape) bool, names, spacing (z, y, x) mm."""

    masks: np.ndarray
    names: list[str]
    spacing: tuple[float, ...]
    case: MultiRaterCase
    reference: object  # the layer whose geometry the results copy (image layer if found)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # model outputs by layer name
    messages: list[str] = field(default_factory=list)


def _is_labels(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


def _role(layer) -> str | None:
    return (getattr(layer, "metadata", {}) or {}).get(ROLE_KEY)


class CompareController:
    """Layer side of the comparison; every method is callable without Qt widgets."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.jobs = JobRunner()  # one job at a time: a comparison or a dataset report
        self.last_result: CompareResult | None = None
        self.last_input: CompareInput | None = None

    # --- layer choice --------------------------------------------------------------------------
    def candidate_layers(self) -> list:
        """Labels layers the user may compare (result layers of a comparison excluded)."""
        return [ly for ly in self.viewer.layers if _is_labels(ly) and _role(ly) not in RESULT_ROLES]

    def default_layers(self) -> list:
        """Layers preselected in the dock: the rater layers, plus any other Labels layer on the grid
        (shape) of an open grey image that is not a model output, a comparison result or an ROI /
        annotation helper: rater masks opened from files, ``mr rater: ...`` layers of an import."""
        raters = [ly for ly in rater_layers(self.viewer) if _is_labels(ly)]
        grids = {
            tuple(ly.data.shape)
            for ly in self.viewer.layers
            if ly.__class__.__name__ == "Image"
            and not getattr(ly, "rgb", False)
            and _role(ly) not in ("mean_probability", "uncertainty")
        }
        others = [
            ly
            for ly in self.candidate_layers()
            if not any(same_layer(ly, r) for r in raters)
            and _role(ly) not in MODEL_ROLES + _NOT_RATER_ROLES
            and tuple(ly.data.shape) in grids
            and (_role(ly) == "rater" or not ly.name.startswith("mr ") or ly.name.startswith("mr rater: "))
        ]
        return raters + others

    def model_layers(self, shape=None) -> list:
        """Labels layers holding model outputs (metadata role persona/sample)."""
        out = [ly for ly in self.viewer.layers if _is_labels(ly) and _role(ly) in MODEL_ROLES]
        return [ly for ly in out if shape is None or tuple(ly.data.shape) == tuple(shape)]

    def reference_layer(self, layers: Sequence):
        """The image layer of the raters' case (metadata case_id, else same shape), else the first
        of ``layers``: its geometry is copied to every result layer."""
        first = layers[0]
        case_id = (first.metadata or {}).get("case_id")
        shape = tuple(first.data.shape)
        images = [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Image" and tuple(ly.data.shape) == shape]
        for ly in images:
            if case_id is not None and (ly.metadata or {}).get("case_id") == case_id:
                return ly
        return images[0] if images else first

    def gather(self, layers: Sequence | None = None) -> CompareInput:
        """Masks from ``layers`` (default: the rater layers). Layers whose shape differs from the
        first one are skipped with a message; fewer than two usable layers raise ValueError."""
        layers = list(self.default_layers() if layers is None else layers)
        if not layers:
            raise ValueError("no rater layers to compare: open a case (or the phantom sample) or select Labels layers")
        messages = []
        ref_shape = tuple(layers[0].data.shape)
        used = []
        for ly in layers:
            if tuple(ly.data.shape) != ref_shape:
                messages.append(f"skipped {ly.name!r}: shape {tuple(ly.data.shape)} differs from {ref_shape}")
                continue
            used.append(ly)
        if len(used) < 2:
            raise ValueError(
                "select at least two Labels layers of the same shape to compare"
                + (f" ({'; '.join(messages)})" if messages else "")
            )
        names = []
        for ly in used:
            name = (ly.metadata or {}).get("rater") or ly.name
            while name in names:
                name = f"{name}'"
            names.append(str(name))
        masks = np.stack([np.asarray(ly.data) != 0 for ly in used])
        ref = self.reference_layer(used)
        geo = geometry_from_layer(ref)
        spacing = tuple(float(abs(s)) for s in geo.scale_zyx)
        image = np.asarray(ref.data) if ref.__class__.__name__ == "Image" else np.zeros(ref_shape, np.uint8)
        case_id = str((used[0].metadata or {}).get("case_id", "viewer"))
        case = MultiRaterCase(case_id, image, masks.astype(np.uint8), np.ones(len(used), bool), names, geo)
        outputs = {
            ly.name: np.asarray(ly.data) != 0
            for ly in self.model_layers(ref_shape)
            if not any(same_layer(ly, u) for u in used)
        }
        return CompareInput(masks, names, spacing, case, ref, outputs, messages)

    # --- running -------------------------------------------------------------------------------
    def generator(self, inp: CompareInput, distances: bool = True, consensus: str = "staple"):
        return compare_masks(
            inp.masks,
            inp.names,
            inp.spacing,
            case=inp.case,
            distances=distances,
            consensus=consensus,
            outputs=inp.outputs,
        )

    def compute(
        self, layers: Sequence | None = None, distances: bool = True, consensus: str = "staple"
    ) -> CompareResult:
        """Synchronous comparison (tests, scripts, the demo): gather, compute, add layers."""
        inp = self.gather(layers)
        result = run_to_completion(self.generator(inp, distances, consensus))
        return self.apply(inp, result)

    def start(
        self,
        layers: Sequence | None = None,
        distances: bool = True,
        consensus: str = "staple",
        on_done=None,
        sync: bool | None = None,
        **callbacks,
    ) -> Job:
        """Compare as a job; ``on_done(result)`` on the GUI thread after the layers were added.
        ``callbacks``: the other :meth:`JobRunner.start` callbacks. Returns the :class:`Job`."""
        if self.jobs.busy:
            raise ValueError(f"{self.jobs.job.label} is still running: wait for it or cancel it")
        inp = self.gather(layers)

        def _done(result):
            self.apply(inp, result)
            if on_done is not None:
                on_done(result)

        return self.jobs.start(
            self.generator(inp, distances, consensus), label="Comparing raters", on_done=_done, sync=sync, **callbacks
        )

    def start_report(
        self, dataset_dir, out_dir=None, consensus: str = "staple", on_done=None, sync: bool | None = None, **callbacks
    ) -> Job:
        """The rater-style report of a dataset folder as a job (see
        :func:`~napari_multirater.analysis.dataset_report.dataset_report`); ``on_done((report,
        paths, problems))``; a dataset that cannot be opened goes to ``on_error`` like any failure."""
        gen = dataset_report(dataset_dir, out_dir, consensus)
        return self.jobs.start(gen, label="Rater style report", on_done=on_done, sync=sync, **callbacks)

    def cancel(self) -> None:
        self.jobs.cancel()

    # --- result layers -------------------------------------------------------------------------
    def apply(self, inp: CompareInput, result: CompareResult) -> CompareResult:
        """Add or update the result layers (geometry copied from the reference layer)."""
        like = inp.reference
        k = max(len(result.names), 1)
        active = self.viewer.layers.selection.active
        upsert_layer(
            self.viewer,
            AGREEMENT,
            result.agreement,
            "image",
            like=like,
            metadata={ROLE_KEY: "agreement", "raters": list(result.names)},
            colormap="inferno",
            contrast_limits=(0, k),
            opacity=0.5,
            blending="additive",
        )
        if AGREEMENT in self.viewer.layers:
            self.viewer.layers[AGREEMENT].contrast_limits = (0, k)
        for method, data in (("majority", result.majority), ("staple", result.staple.consensus)):
            name = CONSENSUS_MAJORITY if method == "majority" else CONSENSUS_STAPLE
            created = name not in self.viewer.layers
            layer = upsert_layer(
                self.viewer,
                name,
                data.astype(np.uint8),
                "labels",
                like=like,
                metadata={ROLE_KEY: "consensus", "method": method, "raters": list(result.names)},
                **({"colormap": binary_colormap(CONSENSUS_COLORS[method]), "opacity": 0.9} if created else {}),
            )
            if created:
                layer.contour = 1
        if active is not None and any(same_layer(active, ly) for ly in self.viewer.layers):  # keep it selected
            self.viewer.layers.selection.active = active
        result.messages = inp.messages + result.messages
        self.last_input, self.last_result = inp, result
        return result
