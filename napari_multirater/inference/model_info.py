"""Plain-language facts about a model for the people who run it: what it is for, the field of view it
was trained on, whether an input fits it, and which model fits an opened image.

Cards written by the trainer may carry ``input.field_of_view`` (``size_px``, ``pixel_size_mm``,
``centred``); the bundled models predate it, so :data:`KNOWN_TRAINING_DATA` supplies it from their
training data (keyed by the training-data folder name) instead of rewriting the shipped files.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import numpy as np

LIDC_NOTE = (
    "LIDC readers are anonymous: 'expert k' is the k-th smallest of the (up to) 4 outlines of a "
    "nodule, not a particular radiologist"
)

# training data -> what the model saw (the bundled models' cards predate input.field_of_view)
KNOWN_TRAINING_DATA = {
    "lidc-slices": {
        "field_of_view": {
            "size_px": [128, 128],
            "pixel_size_mm": None,
            "typical_pixel_mm": [0.5, 0.9],
            "centred": "one lung nodule (nodule-centred crops of axial CT slices)",
        },
        "purpose": "outlines of a lung nodule on CT, as 4 anonymous LIDC readers drew them",
        "data_kind": "ct",
        "note": LIDC_NOTE,
    },
    "phantom": {
        "field_of_view": {
            "size_px": [128, 128],
            "pixel_size_mm": [0.7, 0.7],
            "centred": "a whole 2D synthetic chest phantom (the lesion lies anywhere inside)",
        },
        "purpose": "the synthetic phantoms of the demo and their 4 simulated rater styles (tight, generous, "
        "smooth, misses faint edges)",
        "data_kind": "phantom",
        "note": "",
    },
}

METHOD_WORDS = {
    "dpersona": "D-Persona: varied samples and one outline per rater",
    "pionono": "Pionono: varied samples and one outline per rater",
    "proseg": "ProSeg: varied samples and one outline per rater",
    "prob_unet": "Probabilistic U-Net: varied samples, no per-rater outlines",
    "umanet": "UMA-Net: one outline per rater and a quality score",
    "unet": "U-Net: a single outline",
}

# metric -> (plain name, which way is better)
METRIC_WORDS = {
    "ged": ("spread vs the raters' spread (GED)", "lower is better"),
    "dice_soft": ("overlap of the mean outline with the raters' mean (soft Dice)", "higher is better"),
    "dice_match": ("overlap of matched samples and raters (Dice)", "higher is better"),
    "dice_each_identity_mean": ("overlap of persona k with rater k (Dice)", "higher is better"),
}


def _known(card: dict) -> dict:
    td = (card or {}).get("training_data") or {}
    text = f"{td.get('path', '')} {td.get('description', '')}".lower()
    folder = Path(str(td.get("path", ""))).name.lower()
    if folder in KNOWN_TRAINING_DATA:
        return KNOWN_TRAINING_DATA[folder]
    if "lidc" in text:
        return KNOWN_TRAINING_DATA["lidc-slices"]
    if "phantom" in text:
        return KNOWN_TRAINING_DATA["phantom"]
    return {}


def field_of_view(card: dict) -> dict | None:
    """``{"size_px": [h, w], "pixel_size_mm": [y, x] or None (native), "centred": str, ...}`` from the
    card's ``input.field_of_view`` or the known training data; None when nothing is known."""
    fov = ((card or {}).get("input") or {}).get("field_of_view") or _known(card).get("field_of_view")
    return dict(fov) if fov else None


def purpose(card: dict, name: str = "") -> str:
    """What the model is for, in words (training data + method)."""
    card = card or {}
    what = card.get("purpose") or _known(card).get("purpose") or ""
    method = METHOD_WORDS.get(str(card.get("method", "")), str(card.get("method", "")))
    return "; ".join(x for x in (what, method) if x) or name or "unknown"


def data_kind(card: dict) -> str | None:
    """``"ct"``, ``"phantom"`` or None: the kind of image the model was trained on."""
    return _known(card).get("data_kind")


def rater_note(card: dict) -> str:
    return _known(card).get("note", "")


def fov_mm(fov: dict, spacing_yx=None) -> tuple[float, float] | None:
    """The field of view in mm: at the training pixel size, else at ``spacing_yx`` (native-size models
    see the image at its own pixel size), else None."""
    if not fov:
        return None
    px = np.asarray(fov["size_px"], float)
    sp = fov.get("pixel_size_mm") or (None if spacing_yx is None else list(spacing_yx))
    if sp is None:
        return None
    mm = px * np.abs(np.broadcast_to(np.asarray(sp, float), (2,)))
    return float(mm[0]), float(mm[1])


def describe_fov(fov: dict | None, spacing_yx=None) -> str:
    """e.g. ``128 x 128 px centred on one lung nodule (80 x 80 mm at this image's pixel size)``."""
    if not fov:
        return "not recorded in the model card"
    h, w = fov["size_px"]
    text = f"{h} x {w} px, {fov.get('centred', 'centring not recorded')}"
    if fov.get("pixel_size_mm"):
        mm = fov_mm(fov)
        return text + f"; {mm[0]:.0f} x {mm[1]:.0f} mm at {float(np.ravel(fov['pixel_size_mm'])[0]):g} mm pixels"
    typical = fov.get("typical_pixel_mm")
    text += "; native scanner pixel size"
    if typical:
        lo, hi = (h * typical[0], h * typical[1])
        text += f" ({typical[0]:g}-{typical[1]:g} mm: about {lo:.0f}-{hi:.0f} mm)"
    mm = fov_mm(fov, spacing_yx)
    if mm is not None:
        text += f", {mm[0]:.0f} x {mm[1]:.0f} mm at this image's {float(spacing_yx[0]):g} mm pixels"
    return text


DOCK_ROI_HOW = "Use a region of interest: click the lesion in the 'mr roi point' layer and run."


def cli_roi_how(fov: dict | None, spacing_yx=None) -> str:
    """The command-line form of the same advice (``multirater predict``)."""
    size = roi_size_mm(fov, spacing_yx, default=64.0)
    return (
        f"Use a region of interest: --roi-point z,y,x (the lesion centre in mm) --roi-size-mm {size:g}, "
        "or --roi z0,y0,x0,z1,y1,x1 (voxels)."
    )


def input_advice(
    fov: dict | None, shape_yx, spacing_yx=None, factor: float = 2.0, how: str = DOCK_ROI_HOW
) -> str | None:
    """A sentence when an input of ``shape_yx`` pixels (``spacing_yx`` mm, None = unknown) is much
    larger (> ``factor`` per side) than the field of view the model was trained on; else None.
    ``how`` ends it: what to do instead (the dock's or :func:`cli_roi_how`)."""
    if not fov:
        return None
    h, w = (int(v) for v in shape_yx[-2:])
    if spacing_yx is not None and fov.get("pixel_size_mm"):
        mm = fov_mm(fov)
        sy, sx = (abs(float(s)) for s in spacing_yx[-2:])
        ratio = max(h * sy / mm[0], w * sx / mm[1])
        size = f"{h * sy:.0f} x {w * sx:.0f} mm"
        fov_text = f"{mm[0]:.0f} x {mm[1]:.0f} mm"
    else:  # native-size model (or unknown spacing): compare pixels
        ph, pw = fov["size_px"]
        ratio = max(h / ph, w / pw)
        size = f"{h} x {w} px"
        fov_text = f"{ph} x {pw} px"
    if ratio <= factor:
        return None
    return (
        f"This image ({size}) is {ratio:.0f}x wider than what the model was trained on ({fov_text}, "
        f"{fov.get('centred', '')}): on the whole image it marks unrelated structures. {how}"
    )


def roi_size_mm(fov: dict | None, spacing_yx=None, default: float = 40.0) -> float:
    """A point-ROI box edge matching the training field of view (mm), else ``default``."""
    mm = fov_mm(fov, spacing_yx) if fov else None
    return float(round(max(mm))) if mm else float(default)


def image_kind(layer_metadata: dict, name: str = "", data=None) -> str | None:
    """``"phantom"`` for the synthetic phantoms, ``"ct"`` for other CT-like images, None if unsure."""
    md = layer_metadata or {}
    text = f"{name} {md.get('case_id', '')} {md.get('source_path', '')}".lower()
    if "phantom" in text:
        return "phantom"
    if md.get("dicom") or "lidc" in text or "dcm" in text:
        return "ct"
    if data is not None:
        arr = np.asarray(data[0] if getattr(data, "ndim", 0) == 3 else data)
        if arr.dtype.kind in "iuf" and arr.size and float(arr.min()) < -500:
            return "ct"
    return None


def name_kind(name: str) -> str | None:
    """Kind of data a bundled model was trained on, from its name (``lidc_*``, ``phantom_*``)."""
    n = str(name).lower()
    return "ct" if n.startswith("lidc") else ("phantom" if n.startswith("phantom") else None)


def name_purpose(name: str) -> str:
    """What a model is for, from its name alone (the list shows it before anything is loaded)."""
    kind = name_kind(name)
    method = str(name).lower().split("_", 1)[-1]
    what = {"ct": "lung nodules on CT (click the nodule)", "phantom": "the demo phantoms"}.get(kind, "")
    return "; ".join(x for x in (what, METHOD_WORDS.get(method, "")) if x) or "a checkpoint of unknown purpose"


def pick_model(names, kind: str | None, preferred: tuple = ("dpersona",)) -> str | None:
    """The model to pre-select for data of ``kind``: one trained on that kind, D-Persona first."""
    if kind is None:
        return None
    fits = [n for n in names if name_kind(n) == kind]
    for p in preferred:
        for n in fits:
            if n.lower().endswith(p):
                return n
    return fits[0] if fits else None


def plain_metrics(card: dict, limit: int = 3) -> str:
    """Validation numbers in words, with which way is better.

    The evaluation stored at export (``multirater export --eval-json``: all val images, the README's
    numbers) is preferred over the training-time selection metrics (a val subset that also chose
    the checkpoint, so optimistic)."""
    card = card or {}
    ev = card.get("evaluation")
    full = isinstance(ev, dict) and any(isinstance(ev.get(k), (int, float)) for k in METRIC_WORDS)
    vm = ev if full else card.get("val_metrics") or {}
    out = []
    for key, (words, better) in METRIC_WORDS.items():
        v = vm.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v):
            out.append(f"{words}: {v:.2f} ({better})")
        if len(out) >= limit:
            break
    n = vm.get("n_images")
    if out and isinstance(n, int):
        if not full:
            out[-1] += f"; the selection subset of {n} val images"
        elif vm.get("split") in (None, "val") and vm.get("subset") == "report":
            out[-1] += f"; {n} val images not used for selection"
        elif vm.get("split") in (None, "val"):
            out[-1] += f"; all {n} val images"
        else:  # e.g. a held-out phantom series scored with --split all
            data = PureWindowsPath(str(vm.get("data") or "")).name  # the folder name, slash or backslash separated
            out[-1] += f"; {n} images of {data or 'another dataset'} (split {vm['split']})"
    return "; ".join(out) or "n/a"
