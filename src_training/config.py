"""Resolve a training configuration: method defaults <- --config file <- command-line flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

from napari_multirater.argtypes import MAX_SAMPLES

from .models.base import deep_merge

CONFIG_DIR = Path(__file__).parent / "configs"

TRAIN_DEFAULTS = {
    "epochs": 20,
    "max_steps": None,
    "batch_size": 12,
    "lr": 1e-4,
    "seed": 0,
    "augment": {"enabled": True, "flips": True, "rot90": True, "rotate_deg": 15.0, "intensity": 0.1},
    "rank_raters": "auto",  # LIDC: sort raters by area (expert k = k-th smallest annotation)
    "intensity_window": None,  # None: the dataset's window ([0, 255] for LIDC 8-bit slices)
    "val_samples": 10,
    "val_max_images": None,
    "select_metric": "dice_match",
    "log_every": 10,
    "save_every": 200,
    "val_every": None,  # also validate every N steps (None: only at the end of each epoch / of the budget)
    "precision": "auto",  # auto | fp32 | bf16 (src_training/precision.py); "amp": false in old configs = fp32
    "stage1": None,
}


def load_config_file(path) -> dict:
    """A config file as ``{"model": {...}, "train": {...}}`` (flat files: train keys under "train")."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {p} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {p} must hold a JSON object")
    if "model" in raw:
        return {"model": dict(raw["model"]), "train": dict(raw.get("train", {}))}
    train = dict(raw.get("train", raw.get("training", {})))
    model = {
        k: v for k, v in raw.items() if k not in ("train", "training", "description", "notes") and not k.startswith("_")
    }
    return {"model": model, "train": train}


def method_config_path(method: str, stage: int | None = None) -> Path:
    name = f"{method}_stage2.json" if stage == 2 else f"{method}.json"
    return CONFIG_DIR / name


def resolve_config(args) -> dict:
    """Merge the method's shipped config, the user's --config and explicit CLI flags."""
    from .models.registry import METHODS

    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    cfg = {"model": {"method": args.method}, "train": dict(TRAIN_DEFAULTS)}
    stage = 2 if getattr(args, "stage1", None) else None
    shipped = method_config_path(args.method, stage)
    if shipped.exists():
        cfg = deep_merge(cfg, load_config_file(shipped))
    if getattr(args, "config", None):
        cfg = deep_merge(cfg, load_config_file(args.config))
    cfg["model"]["method"] = args.method
    flags = {
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "stage1": getattr(args, "stage1", None),
        "val_samples": getattr(args, "val_samples", None),
        "val_max_images": getattr(args, "val_max_images", None),
        "select_metric": getattr(args, "select_metric", None),
        "save_every": getattr(args, "save_every", None),
        "val_every": getattr(args, "val_every", None),
        "precision": getattr(args, "precision", None),
    }
    cfg["train"].update({k: v for k, v in flags.items() if v is not None})
    if getattr(args, "no_augment", False):
        cfg["train"]["augment"] = {**cfg["train"]["augment"], "enabled": False}
    if getattr(args, "rank_raters", None) is not None:
        cfg["train"]["rank_raters"] = {"auto": "auto", "on": True, "off": False}[args.rank_raters]
    if cfg["train"]["stage1"]:
        cfg["model"]["stage"] = 2
    check_train_values(cfg["train"])
    return cfg


_AT_LEAST_ONE = ("epochs", "batch_size", "val_samples", "log_every", "save_every")
_NONE_OR_AT_LEAST_ONE = ("max_steps", "val_max_images", "val_every")


def check_train_values(train: dict) -> None:
    """Range-check the merged training values (flags are checked by the parser already; this
    catches a --config file): ValueError naming the key."""

    def bad(key, want):
        flag = "--" + key.replace("_", "-")
        return ValueError(f"train.{key} (config file or {flag}) must be {want}, got {train[key]!r}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for key in _AT_LEAST_ONE:
        if key in train and not (is_int(train[key]) and train[key] >= 1):
            raise bad(key, "an integer >= 1")
    for key in _NONE_OR_AT_LEAST_ONE:
        if train.get(key) is not None and not (is_int(train[key]) and train[key] >= 1):
            raise bad(key, "null or an integer >= 1")
    if "val_samples" in train and train["val_samples"] > MAX_SAMPLES:  # each is a full-size map
        raise bad("val_samples", f"an integer from 1 to {MAX_SAMPLES}")
    if "seed" in train and not (is_int(train["seed"]) and train["seed"] >= 0):
        raise bad("seed", "an integer >= 0")
    lr = train.get("lr")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise bad("lr", "a finite number > 0")
