"""Device choice and CUDA-to-CPU fallback for inference (Qt-free)."""

from __future__ import annotations

import logging

import torch

from src_training.precision import PRECISION_CHOICES  # noqa: F401 - re-exported for the Model dock

log = logging.getLogger(__name__)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(choice: str = "auto") -> tuple[torch.device, str]:
    """``auto`` = cuda, then mps, then cpu. An unavailable explicit choice falls back to CPU.

    Returns ``(device, message)``; the message names the device (and why when it fell back).
    """
    choice = (choice or "auto").lower()
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {choice!r}")
    if choice in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda"), f"cuda ({torch.cuda.get_device_name(0)})"
    if choice in ("auto", "mps") and _mps_available():
        return torch.device("mps"), "mps (Apple GPU)"
    if choice in ("cuda", "mps"):
        return torch.device("cpu"), f"cpu ({choice} requested but not available)"
    return torch.device("cpu"), f"cpu ({torch.get_num_threads()} threads)"


def is_cuda_error(exc: BaseException) -> bool:
    """True for errors raised by CUDA/MPS (OOM, missing kernel image, launch failures...)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(k in text for k in ("cuda", "cudnn", "cublas", "out of memory", "no kernel image", "mps"))


def run_with_fallback(fn, device: torch.device, on_fallback=None):
    """Run ``fn(device)``; on a GPU error retry ``fn(cpu)`` once.

    Returns ``(result, device_used, warning)`` with ``warning`` None unless it fell back; the
    warning is also logged and passed to ``on_fallback(warning)`` so callers can show it.
    """
    device = torch.device(device)
    try:
        return fn(device), device, None
    except Exception as exc:  # noqa: BLE001 - only GPU errors are swallowed, others re-raised
        if device.type == "cpu" or not is_cuda_error(exc):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warning = f"{device.type} failed ({first[:200]}); falling back to CPU"
        log.warning(warning)
        if on_fallback is not None:
            on_fallback(warning)
        cpu = torch.device("cpu")
        return fn(cpu), cpu, warning
