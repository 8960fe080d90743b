"""Checkpoint files: ``{"format_version": 1, "config", "model_card", "state_dict", **extra}``.

Everything stored is ``torch.load(weights_only=True)``-safe (tensors, dicts, lists, numbers, strings,
None). Writes are atomic (temp file in the same folder + ``os.replace``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from napari_multirater.datasets.case_folder import default_file_mode

from .models.base import MultiRaterModel
from .models.registry import build_model

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "model_card", "state_dict")
_RESERVED = set(REQUIRED_KEYS)


class CheckpointError(ValueError):
    """The file is not a usable napari-multirater checkpoint."""


def save_checkpoint(path, model: MultiRaterModel, model_card: dict, extra: dict | None = None,
                    fp16: bool = False) -> Path:
    """Write ``model`` (config + weights) and its card; ``fp16`` halves float tensors on disk."""
    extra = dict(extra or {})
    clash = _RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra keys clash with reserved checkpoint keys: {sorted(clash)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"format_version": FORMAT_VERSION, "config": model.config, "model_card": dict(model_card or {}),
               "state_dict": state, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, default_file_mode())  # readable like any other file, not mkstemp's 0600
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_checkpoint_dict(path, map_location="cpu") -> dict:
    """The raw checkpoint dict (for resume: includes optimizer state etc. stored under extra keys)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, weights_only=True, map_location=map_location)
    except Exception as exc:  # pickle / zip errors, unsafe globals ...: the raw code means nothing to a user
        why = ("it holds Python objects that a safe (weights-only) load refuses"
               if "Unsupported global" in str(exc) else "not a PyTorch checkpoint file, or a damaged / truncated one")
        raise CheckpointError(f"{path} is not a readable napari-multirater checkpoint ({why})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a napari-multirater checkpoint (got {type(data).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path} is missing checkpoint keys {missing} (not a napari-multirater checkpoint?)")
    if int(data["format_version"]) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {data['format_version']}; this code reads <= {FORMAT_VERSION}")
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
