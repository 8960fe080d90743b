"""Compare raters in the viewer: pairwise overlap, STAPLE/majority consensus, agreement count,
per-rater style and model-vs-rater matching, on chosen Labels layers.

The computation is a generator (:func:`compare_masks`) that yields a :class:`Progress` per rater
pair / step and returns a :class:`CompareResult`; it touches no layer, so it runs in a napari
worker (Cancel takes effect at the next yield) or synchronously (:func:`run_to_completion`).
:class:`CompareController` gathers masks from layers and writes the result layers back:
``mr agreement`` (Image: how many raters marked each voxel), ``mr consensus: majority`` and
``mr consensus: staple`` (Labels), all with the geometry of the case's image layer, reused (never
duplicated) when the comparison is run again.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis.model_vs_raters import model_vs_raters
from ..analysis.overlap import agreement_map, majority_vote, pairwise_overlap, surface_distances
from ..analysis.staple import StapleResult, staple
from ..analysis.style import case_style
from ..datasets.case import MultiRaterCase
from ..io.geometry import geometry_from_layer
from .layers import ROLE_KEY, binary_colormap, layer_name, rater_layers, same_layer, upsert_layer
from .workers import Progress, run_to_completion, start_generator_worker, threads_disabled

__all__ = [
    "AGREEMENT",
    "CONSENSUS_MAJORITY",
    "CONSENSUS_STAPLE",
    "CompareController",
    "CompareInput",
    "CompareResult",
    "compare_masks",
    "dataset_report",
    "default_report_dir",
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


@dataclass
class CompareResult:
    names: list[str]
    pairwise: dict  # pairwise_overlap() dict: dice, iou, hausdorff_mm, mean_surface_mm, missing, empty
    staple: StapleResult
    majority: np.ndarray
    agreement: np.ndarray
    style_rows: list[dict]
    model_rows: list[dict]
    consensus_method: str
    distances: bool
    messages: list[str] = field(default_factory=list)


def compare_masks(
    masks: np.ndarray,
    names: Sequence[str],
    spacing_zyx: Sequence[float],
    *,
    case: MultiRaterCase | None = None,
    distances: bool = True,
    consensus: str = "staple",
    outputs: dict[str, np.ndarray] | None = None,
    valid: Sequence[bool] | None = None,
) -> Generator[Progress, None, CompareResult]:
    """Generator: yields :class:`Progress` per pair of raters and per step, returns the result."""
    masks = np.asarray(masks) != 0
    names = list(names)
    k = masks.shape[0]
    valid = np.ones(k, bool) if valid is None else np.asarray(valid, bool)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k) if valid[i] and valid[j]]
    total = (len(pairs) if distances else 1) + 4
    done = 0
    pw = pairwise_overlap(masks, valid, spacing_zyx, names, distances=False)
    if distances:
        for i, j in pairs:
            hd, msd = surface_distances(masks[i], masks[j], spacing_zyx)
            pw["hausdorff_mm"][i, j] = pw["hausdorff_mm"][j, i] = hd
            pw["mean_surface_mm"][i, j] = pw["mean_surface_mm"][j, i] = msd
            done += 1
            yield Progress(done, total, f"{names[i]} vs {names[j]}")
    else:
        done += 1
        yield Progress(done, total, "overlap")
    st = staple(masks, valid)
    done += 1
    yield Progress(done, total, "STAPLE")
    maj = majority_vote(masks, valid)
    agree = agreement_map(masks, valid)
    done += 1
    yield Progress(done, total, "majority vote")
    if case is None:
        from ..io.geometry import Geometry

        geo = Geometry(tuple(float(s) for s in spacing_zyx[::-1]), (0.0,) * len(spacing_zyx),
                       tuple(np.eye(len(spacing_zyx)).ravel().tolist()))
        case = MultiRaterCase("viewer", np.zeros(masks.shape[1:], np.uint8), masks.astype(np.uint8),
                              valid, names, geo)
    style = case_style(case, consensus=consensus) if valid.sum() >= 2 else []
    done += 1
    yield Progress(done, total, "rater style")
    model_rows = model_vs_raters(masks, valid, names, outputs or {})
    done += 1
    yield Progress(done, total, "model vs raters")
    msgs = []
    if pw["missing"]:
        msgs.append("missing raters: " + ", ".join(pw["missing"]))
    if pw["empty"]:
        msgs.append("empty masks (nothing marked): " + ", ".join(pw["empty"]))
    if st.note:
        msgs.append(f"STAPLE: {st.note}")
    return CompareResult(names, pw, st, maj, agree, style, model_rows, consensus, distances, msgs)


def _light_case(case: MultiRaterCase, region_margin_mm: float) -> MultiRaterCase:
    """The case cropped to its raters' union (padded beyond case_style's own crop) with a
    zero-stride placeholder image: same style metrics, a fraction of the memory."""
    from ..analysis.overlap import crop_box

    spacing = case.geometry.scale_zyx
    masks = np.asarray(case.masks) != 0
    union = masks[case.valid].any(axis=0) if case.valid.any() else np.zeros(masks.shape[1:], bool)
    pad = int(np.ceil(region_margin_mm / min(spacing))) + 4
    box = crop_box(union, pad) or tuple(slice(0, 1) for _ in union.shape)
    cropped = masks[(slice(None), *box)].astype(np.uint8)
    image = np.broadcast_to(np.uint8(0), cropped.shape[1:])
    meta = {k: v for k, v in case.meta.items() if k != "sidecars"}
    return MultiRaterCase(case.case_id, image, cropped, case.valid, list(case.rater_names), case.geometry, meta)


def default_report_dir(dataset_dir) -> Path:
    """Suggested report folder ``~/multirater-reports/<dataset>-raters``: never inside the dataset,
    which may be read-only shared data (falls back to the working directory, then beside it)."""
    ds = Path(dataset_dir).expanduser().resolve()
    for base in (Path.home(), Path.cwd(), ds.parent):
        out = base.resolve() / "multirater-reports" / f"{ds.name}-raters"
        if ds != out and ds not in out.parents:
            return out
    return ds.parent / f"{ds.name}-raters"


def dataset_report(dataset_dir, out_dir=None, consensus: str = "staple", max_cases: int | None = None,
                   region_margin_mm: float = 5.0):
    """Generator: rater-style report of a dataset folder, one :class:`Progress` per case.

    Returns ``(StyleReport, {name: path}, problems)``: the report is written to ``out_dir``
    (default :func:`default_report_dir`, outside the dataset). Cases are read by the loop shared
    with ``multirater raters`` (:func:`~napari_multirater.analysis.cli_raters.style_report`):
    broken cases are skipped and broken rater files left out, all listed in ``problems`` and the
    report's notes. Cases are kept cropped to their annotations, so large volumes do not
    accumulate in memory. Closing the generator (Cancel) stops at the next case.
    """
    import queue
    import threading

    from ..analysis.cli_raters import style_report
    from ..analysis.report import write_style_report
    from ..datasets import open_dataset

    ds = open_dataset(dataset_dir)
    out = Path(out_dir) if out_dir else default_report_dir(dataset_dir)
    total = len(ds) if max_cases is None else min(len(ds), max_cases)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work():  # style_report reports progress by callback: run it beside this generator
        try:
            events.put(("done", style_report(
                ds, consensus=consensus, max_cases=max_cases, region_margin_mm=region_margin_mm,
                progress=lambda done, _total, cid: events.put(("progress", done, cid)),
                prepare=lambda case: _light_case(case, region_margin_mm), should_stop=stop.is_set)))
        except BaseException as e:  # handed to the generator, which re-raises it
            events.put(("error", e))

    thread = threading.Thread(target=work, name="multirater-dataset-report", daemon=True)
    thread.start()
    try:
        while True:
            kind, *rest = events.get()
            if kind == "progress":
                yield Progress(min(rest[0], total), total + 1, str(rest[1]))
            elif kind == "done":
                report, problems = rest[0]
                break
            else:
                raise rest[0]
    finally:
        stop.set()
    yield Progress(total + 1, total + 1, "writing report")
    paths = write_style_report(report, out)
    from ..analysis.self_agreement import project_self_agreement, write_self_agreement

    rows = project_self_agreement(dataset_dir)  # intra-rater repeats: self-agreement next to the others
    if rows:
        paths.update(write_self_agreement(rows, out))
    return report, paths, problems


def _is_labels(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


def _role(layer) -> str | None:
    return (getattr(layer, "metadata", {}) or {}).get(ROLE_KEY)


class CompareController:
    """Layer side of the comparison; every method is callable without Qt widgets."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.worker = None
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
        grids = {tuple(ly.data.shape) for ly in self.viewer.layers if ly.__class__.__name__ == "Image"
                 and not getattr(ly, "rgb", False) and _role(ly) not in ("mean_probability", "uncertainty")}
        others = [ly for ly in self.candidate_layers() if not any(same_layer(ly, r) for r in raters)
                  and _role(ly) not in MODEL_ROLES + _NOT_RATER_ROLES and tuple(ly.data.shape) in grids
                  and (_role(ly) == "rater" or not ly.name.startswith("mr ") or ly.name.startswith("mr rater: "))]
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
            raise ValueError("select at least two Labels layers of the same shape to compare" +
                             (f" ({'; '.join(messages)})" if messages else ""))
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
        outputs = {ly.name: np.asarray(ly.data) != 0 for ly in self.model_layers(ref_shape)
                   if not any(same_layer(ly, u) for u in used)}
        return CompareInput(masks, names, spacing, case, ref, outputs, messages)

    # --- running -------------------------------------------------------------------------------
    def generator(self, inp: CompareInput, distances: bool = True, consensus: str = "staple"):
        return compare_masks(inp.masks, inp.names, inp.spacing, case=inp.case, distances=distances,
                             consensus=consensus, outputs=inp.outputs)

    def compute(self, layers: Sequence | None = None, distances: bool = True, consensus: str = "staple") -> CompareResult:
        """Synchronous comparison (tests, scripts, the demo): gather, compute, add layers."""
        inp = self.gather(layers)
        result = run_to_completion(self.generator(inp, distances, consensus))
        return self.apply(inp, result)

    def start(self, layers: Sequence | None = None, distances: bool = True, consensus: str = "staple",
              on_done=None, on_error=None, on_finished=None):
        """Run in a napari generator worker; ``on_done(result)`` on the GUI thread after the
        layers were added. Returns the worker (``worker.quit()`` cancels)."""
        inp = self.gather(layers)

        def _done(result):
            self.apply(inp, result)
            if on_done is not None:
                on_done(result)

        if threads_disabled():
            try:
                _done(run_to_completion(self.generator(inp, distances, consensus)))
            except Exception as e:  # same contract as the worker: report, never raise into Qt
                if on_error is not None:
                    on_error(e)
            if on_finished is not None:
                on_finished()
            return None
        self.worker = start_generator_worker(
            compare_masks, inp.masks, inp.names, inp.spacing, case=inp.case, distances=distances,
            consensus=consensus, outputs=inp.outputs, desc="Comparing raters", on_done=_done,
            on_error=on_error, on_finished=on_finished,
        )
        return self.worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    # --- result layers -------------------------------------------------------------------------
    def apply(self, inp: CompareInput, result: CompareResult) -> CompareResult:
        """Add or update the result layers (geometry copied from the reference layer)."""
        like = inp.reference
        k = max(len(result.names), 1)
        active = self.viewer.layers.selection.active
        upsert_layer(self.viewer, AGREEMENT, result.agreement, "image", like=like,
                     metadata={ROLE_KEY: "agreement", "raters": list(result.names)},
                     colormap="inferno", contrast_limits=(0, k), opacity=0.5, blending="additive")
        if AGREEMENT in self.viewer.layers:
            self.viewer.layers[AGREEMENT].contrast_limits = (0, k)
        for method, data in (("majority", result.majority), ("staple", result.staple.consensus)):
            name = CONSENSUS_MAJORITY if method == "majority" else CONSENSUS_STAPLE
            created = name not in self.viewer.layers
            layer = upsert_layer(self.viewer, name, data.astype(np.uint8), "labels", like=like,
                                 metadata={ROLE_KEY: "consensus", "method": method, "raters": list(result.names)},
                                 **({"colormap": binary_colormap(CONSENSUS_COLORS[method]), "opacity": 0.9}
                                    if created else {}))
            if created:
                layer.contour = 1
        if active is not None and any(same_layer(active, ly) for ly in self.viewer.layers):  # keep it selected
            self.viewer.layers.selection.active = active
        result.messages = inp.messages + result.messages
        self.last_input, self.last_result = inp, result
        return result
