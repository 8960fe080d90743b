"""Types and ranges of a model config, checked before a model is built from it.

A config comes from a checkpoint file (untrusted) or a user's ``--config``; a size in it
(``heads.n_infer = 1e9``, ``backbone.widths = [1e6]``) would allocate until the kernel kills the
process, and a wrong type would end in a traceback deep inside a model. :func:`check_model_config`
raises one ``ValueError`` naming the key instead. Only the model's keys are checked; ``train`` and
``_``-prefixed keys (notes, recipes) are not used to build a model.
"""

from __future__ import annotations

import math

MAX_INT = 4096  # any size-like integer of a model config (widths, hidden units, samples, ...)
MAX_LEVELS = 8  # entries of a list of widths
MAX_RATERS = 256
MAX_PARAMS = 100_000_000  # estimated conv parameters of all width lists together (400 MB in fp32)
INT_LIMITS = {"kl_warmup_steps": 10**9, "num_raters": MAX_RATERS, "stage": 2, "bank_seed": 2**63 - 1}
LIST_LIMITS = {"rater_names": MAX_RATERS, "train_frequency": MAX_RATERS}  # one entry per rater; others MAX_LEVELS
SKIP = ("train",)


def _where(path: str) -> str:
    return f"model config {path}" if path else "model config"


def _check_value(path: str, key: str, value) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        hi = INT_LIMITS.get(key, MAX_INT)
        if not 0 <= value <= hi:
            raise ValueError(f"{_where(path)} = {value} is out of range (0 to {hi})")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > 1e9:
            raise ValueError(f"{_where(path)} = {value!r} is not a finite number of sensible size")
    elif isinstance(value, list):
        most = LIST_LIMITS.get(key, MAX_LEVELS)
        if len(value) > most:
            raise ValueError(f"{_where(path)} has {len(value)} entries (at most {most})")
        if key == "rater_names":  # names, checked as identifiers by check_rater_names
            return
        for i, v in enumerate(value):
            if isinstance(v, (list, dict)):
                raise ValueError(f"{_where(path)}[{i}] must be a number")
            _check_value(f"{path}[{i}]", key, v)
    elif isinstance(value, dict):
        _check_dict(path, value)
    else:
        raise ValueError(f"{_where(path)} has an unsupported type {type(value).__name__}")


def _check_dict(prefix: str, d: dict) -> None:
    for key, value in d.items():
        if not isinstance(key, str):
            raise ValueError(f"{_where(prefix)} has a non-text key {key!r}")
        if key.startswith("_") or (not prefix and key in SKIP):
            continue
        _check_value(f"{prefix}.{key}" if prefix else key, key, value)


def _param_estimate(d: dict) -> int:
    """3x3 conv parameters of every ``widths`` list (times its convs per block), recursively."""
    total = 0
    for key, value in d.items():
        if isinstance(value, dict) and not str(key).startswith("_") and key not in SKIP:
            total += _param_estimate(value)
    widths = d.get("widths")
    if isinstance(widths, list) and all(isinstance(w, int) for w in widths):
        convs = d.get("convs_per_block", 2)
        convs = convs if isinstance(convs, int) and not isinstance(convs, bool) else 2
        total += sum(a * b for a, b in zip(widths, widths[1:])) * 9 * max(convs, 1)
    return total


def check_rater_names(names, num_raters) -> None:
    """Rater names become file names (``persona_<name>.nii.gz``): each must be a valid identifier."""
    from napari_multirater.datasets.case import DatasetError
    from napari_multirater.datasets.case_folder import check_identifier

    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("model config rater_names must be a list of names")
    if num_raters is not None and len(names) != num_raters:
        raise ValueError(f"model config rater_names has {len(names)} entries, num_raters is {num_raters}")
    if len(set(names)) != len(names):
        raise ValueError(f"model config rater_names are not unique: {names}")
    for name in names:
        try:
            check_identifier(name, "rater name")
        except DatasetError as e:
            raise ValueError(f"model config rater_names: {e}") from None


def check_model_config(config) -> None:
    """Raise ``ValueError`` (one line naming the key) unless ``config`` has sane types and sizes."""
    if not isinstance(config, dict):
        raise ValueError(f"model config must be a dict, got {type(config).__name__}")
    if not isinstance(config.get("method"), str):
        raise ValueError("model config must name its 'method'")
    _check_dict("", config)
    if config.get("rater_names") is not None:
        check_rater_names(config["rater_names"], config.get("num_raters"))
    params = _param_estimate(config)
    if params > MAX_PARAMS:
        raise ValueError(
            f"model config widths would make about {params / 1e6:.0f} M parameters (at most {MAX_PARAMS / 1e6:.0f} M)"
        )
