"""Checkpoint files: ``{"format_version": 1, "config", "model_card", "state_dict", **extra}``.

Everything stored is ``torch.load(weights_only=True)``-safe (tensors, dicts, lists, numbers, strings,
None). Writes go through the project's verified atomic writer (:mod:`napari_multirater.io.atomic`).
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import torch

from napari_multirater.argtypes import MAX_SAMPLES
from napari_multirater.io.atomic import atomic_write_bytes

from .models.base import MultiRaterModel
from .models.registry import build_model

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "model_card", "state_dict")
_RESERVED = set(REQUIRED_KEYS)


class CheckpointError(ValueError):
    """The file is not a usable napari-multirater checkpoint."""


def save_checkpoint(
    path, model: MultiRaterModel, model_card: dict, extra: dict | None = None, fp16: bool = False
) -> Path:
    """Write ``model`` (config + weights) and its card; ``fp16`` halves float tensors on disk."""
    extra = dict(extra or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra keys clash with reserved checkpoint keys: {sorted(clash)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "config": model.config,
        "model_card": dict(model_card or {}),
        "state_dict": state,
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())  # verified (size + sha256 read back), then renamed in
    return path


def _load_error(path: Path, exc: Exception) -> str:
    """One plain line for a failed ``torch.load``: which global a safe load refused, or that the file
    is not a (complete) checkpoint. Never torch's advice to retry with ``weights_only=False`` (that
    would run code from the file) and never its raw unpickler codes."""
    text = str(exc)
    m = re.search(r"(?:unsupported|Unsupported)(?: global:)? GLOBAL ([\w.]+)|Unsupported class ([\w.]+)", text)
    if m:
        return (
            f"refused: it holds Python objects (a reference to {m.group(1) or m.group(2)}); a checkpoint may "
            "only hold tensors and plain data, anything else could run code when loaded"
        )
    try:
        size = f"{path.stat().st_size} bytes on disk"
    except OSError:
        size = "size unknown"
    return f"not a PyTorch checkpoint file, or a damaged / truncated one ({size})"


def load_checkpoint_dict(path, map_location="cpu") -> dict:
    """The raw checkpoint dict (for resume: includes optimizer state etc. stored under extra keys)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - pickle / zip errors, unsafe globals ...: the raw code means nothing to a user
        raise CheckpointError(
            f"{path} is not a readable napari-multirater checkpoint: {_load_error(path, exc)}"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a napari-multirater checkpoint (got {type(data).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path} is missing checkpoint keys {missing} (not a napari-multirater checkpoint?)")
    version = data["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an integer, got {type(version).__name__}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version}; this code reads <= {FORMAT_VERSION}")
    for key, kind in (("config", dict), ("model_card", dict), ("state_dict", dict)):
        if not isinstance(data[key], kind):
            raise CheckpointError(f"{path}: {key} must be a {kind.__name__}, got {type(data[key]).__name__}")
    try:
        check_model_card(data["model_card"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    bad = [k for k, v in data["state_dict"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entry {bad[0]!r} is not a named tensor")
    return data


# card keys the project reads, and the type each must have
CARD_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str,
    "stage": int,
    "purpose": str,
    "attribution": str,
    "exported_from": str,
    "raters_ranked_by_area": bool,
    "val_samples": int,
    "rater_names": list,
    "notes": list,
    "personas_added": list,
    "input": dict,
    "intensity": dict,
    "training_data": dict,
    "evaluation": dict,
    "val_metrics": dict,
}


def check_model_card(card: dict) -> None:
    """Raise ``ValueError`` when a key the project reads has the wrong type (a crafted card would
    otherwise end in a traceback wherever it is shown)."""
    for key, kind in CARD_TYPES.items():
        value = card.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ValueError(f"model_card {key} must be a {name}, got {type(value).__name__}")
    val_samples = card.get("val_samples")
    if val_samples is not None and not 0 <= val_samples <= MAX_SAMPLES:
        raise ValueError(f"model_card val_samples = {val_samples} is out of range (0 to {MAX_SAMPLES})")
    if "notes" in card and not all(isinstance(n, str) for n in card["notes"] or []):
        raise ValueError("model_card notes must be a list of text lines")
    inp = card.get("input") or {}
    fov = inp.get("field_of_view")
    if fov is not None:
        size = fov.get("size_px") if isinstance(fov, dict) else None
        if not (isinstance(size, list) and len(size) == 2 and all(_int_in(v, 1, 1 << 16) for v in size)):
            raise ValueError("model_card input.field_of_view must be a dict with size_px [h, w] in pixels")
    if "pad_multiple" in inp and not _int_in(inp["pad_multiple"], 1, 1024):
        raise ValueError(
            f"model_card input.pad_multiple must be an integer from 1 to 1024, got {inp['pad_multiple']!r}"
        )
    window = (card.get("intensity") or {}).get("window")
    if window is not None and not (
        isinstance(window, list) and len(window) == 2 and all(_finite_number(v) for v in window)
    ):
        raise ValueError(f"model_card intensity.window must be two finite numbers, got {window!r}")


def _int_in(value, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_finite_weights(path, state: dict) -> None:
    """Refuse NaN / inf weights: they give an all-background "confident no lesion" output."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: weight {name} has {bad} non-finite value(s) (NaN/inf): a damaged checkpoint, refused"
            )


def load_checkpoint(path, map_location="cpu"):
    """Rebuild the model from its stored config, load weights (fp16 -> fp32) -> ``(model, model_card)``."""
    data = load_checkpoint_dict(path, map_location)
    check_finite_weights(path, data["state_dict"])
    try:
        model = build_model(data["config"])  # checks the config's types and sizes before allocating
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild model: {exc}") from None
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v for k, v in data["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config: {exc}") from exc
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, data["model_card"]
