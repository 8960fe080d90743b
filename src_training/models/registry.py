"""Method registry: ``build_model(config)`` and the default configs in ``src_training/configs``."""

from __future__ import annotations

import json
from pathlib import Path

from .base import MultiRaterModel, deep_merge
from .config_check import check_model_config
from .dpersona import DPersona
from .pionono import PiononoModel
from .prob_unet import ProbUNet
from .proseg import ProSeg
from .umanet import UMANet
from .unet import UNetModel

METHODS = ("unet", "prob_unet", "dpersona", "proseg", "umanet", "pionono")

_CLASSES = {
    "unet": UNetModel,
    "prob_unet": ProbUNet,
    "dpersona": DPersona,
    "proseg": ProSeg,
    "umanet": UMANet,
    "pionono": PiononoModel,
}

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def build_model(config: dict) -> MultiRaterModel:
    """Instantiate the model named by ``config["method"]`` (D-Persona stage from ``config["stage"]``).
    Types and sizes are checked first (:func:`check_model_config`): nothing absurd is allocated."""
    if not isinstance(config, dict) or "method" not in config:
        raise ValueError("model config must be a dict with a 'method' key")
    method = config["method"]
    if method in _CLASSES:
        check_model_config(config)
    if method not in _CLASSES:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    return _CLASSES[method](config)


def default_config(name: str, overrides: dict | None = None) -> dict:
    """Load ``configs/<name>.json`` (e.g. "prob_unet", "dpersona_stage2") merged with ``overrides``."""
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise ValueError(f"no config {name!r}; available: {', '.join(known)}")
    return deep_merge(json.loads(path.read_text()), overrides)
