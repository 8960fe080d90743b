"""Checkpoint files: ``{"format_version": 1, "config", "model_card", "state_dict", **extra}``.

Everything stored is ``torch.load(weights_only=True)``-safe (tensors, dicts, lists, numbers, strings,
None). Writes go through the project's verified atomic writer (:mod:`napari_multirater.io.atomic`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

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
    if int(data["format_version"]) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {data['format_version']}; this code reads <= {FORMAT_VERSION}"
        )
    return data


def load_checkpoint(path, map_location="cpu"):
    """Rebuild the model from its stored config, load weights (fp16 -> fp32) -> ``(model, model_card)``."""
    data = load_checkpoint_dict(path, map_location)
    try:
        model = build_model(data["config"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot rebuild model: {exc}") from exc
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v for k, v in data["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored config: {exc}") from exc
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, data["model_card"]
