"""The model card stored in every checkpoint: what the model is, what it saw, how it was trained."""

from __future__ import annotations

import datetime as _dt
import json
import platform

import numpy as np
import torch

from . import __version__

LIDC_ATTRIBUTION = (
    "Trained on LIDC-IDRI (The Cancer Imaging Archive, CC BY 3.0): Armato SG III et al., Med Phys "
    "38(2):915-931, 2011, doi:10.1118/1.3528204; TCIA collection DOI 10.7937/K9/TCIA.2015.LO9QL9SX; "
    "Clark K et al., J Digit Imaging 26:1045-1057, 2013."
)


def build_model_card(
    cfg: dict, meta: dict, step: int, epoch: int, wall_seconds: float, val_metrics: dict | None
) -> dict:
    """A JSON-able description of the model (weights_only-safe: str, numbers, lists, dicts)."""
    train_items, val_items = meta["train_items"], meta["val_items"]
    is_lidc = getattr(train_items.dataset, "patient", None) is not None
    device = meta["device"]
    card = {
        "method": cfg["model"]["method"],
        "stage": cfg["model"].get("stage", 1),
        "rater_names": list(meta["rater_names"]),
        "raters_ranked_by_area": bool(meta["rank_raters"]),
        "training_data": {
            "path": meta["data"],
            "train_slices": len(train_items),
            "train_patients": len(train_items.patients),
            "val_slices": len(val_items),
            "val_patients": len(val_items.patients),
            "split": "by patient (train and val share no patient)",
        },
        "intensity": {
            "units": _units(train_items.dataset, is_lidc),
            "window": [float(v) for v in meta["window"]],
            "mapping": "x_norm = clip((x - window[0]) / (window[1] - window[0]), 0, 1)",
            "window_source": meta.get("window_source", "unknown"),
        },
        "input": {
            "channels": 1,
            "pad_multiple": 16,
            "slice_axis": "z (axial) for volumes",
            "pixel_size_mm": _pixel_size(train_items, is_lidc),
            "field_of_view": _field_of_view(train_items, is_lidc),
        },
        "val_samples": int(cfg["train"]["val_samples"]),
        "training_budget": {
            "steps": int(step),
            "epochs": int(epoch),
            "batch_size": int(cfg["train"]["batch_size"]) * meta["dist"].world,
            "device": f"{device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "processes": meta["dist"].world,
            "precision": meta.get("precision", "fp32"),
            "wall_seconds": round(float(wall_seconds), 1),
            "total_steps_planned": int(meta["total_steps"]),
        },
        "val_metrics": {k: v for k, v in (val_metrics or {}).items() if isinstance(v, (int, float, list, str, dict))},
        "select_metric": cfg["train"]["select_metric"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": {
            "napari-multirater": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
    }
    if is_lidc:
        from napari_multirater.modelfiles.intensity import LIDC_HU_MAPPING

        card["attribution"] = LIDC_ATTRIBUTION
        card["intensity"]["hu_to_training_units"] = {  # how CT in HU becomes the 8-bit training scale
            **{k: list(v) if isinstance(v, tuple) else v for k, v in LIDC_HU_MAPPING.items()},
            "measured_with": "python -m src_training.tools.fit_lidc_intensity",
        }
    return json.loads(json.dumps(card, default=_plain))  # plain types only: loads with weights_only=True


def _pixel_size(train_items, is_lidc: bool):
    """Median in-plane pixel size (y, x) in mm of the training images; None when unknown (LIDC
    crops do not store their spacing, so inference keeps the native grid)."""
    if is_lidc or not getattr(train_items, "cases", None):
        return None
    sizes = np.array([c.geometry.scale_zyx[-2:] for c in train_items.cases], float)
    return [float(v) for v in np.median(sizes, axis=0)]


def _field_of_view(train_items, is_lidc: bool):
    """What one training image showed: median in-plane size in px, pixel size (None: native) and what
    is centred. Inference uses it to tell users when an input is much larger than that."""
    if getattr(train_items, "_fast", False):
        shapes = [tuple(np.shape(train_items.dataset.images)[-2:])]
    else:
        shapes = [tuple(np.shape(c.image)[-2:]) for c in getattr(train_items, "cases", [])]
    if not shapes:
        return None
    size = [int(v) for v in np.median(np.array(shapes, float), axis=0)]
    centred = (
        "one lung nodule (nodule-centred crops of axial CT slices)"
        if is_lidc
        else "whole images of the training dataset, as stored"
    )
    return {"size_px": size, "pixel_size_mm": _pixel_size(train_items, is_lidc), "centred": centred}


def _units(dataset, is_lidc: bool) -> str:
    """What the training intensities were: LIDC 8-bit crops, Hounsfield units, or raw values."""
    if is_lidc:
        return "lidc_uint8"
    manifest = getattr(dataset, "manifest", {}) or {}
    return "HU" if str(manifest.get("modality", "")).upper() == "CT" else "raw"


def _plain(obj):
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
