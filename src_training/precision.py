"""Numeric precision for training and inference: ``auto``, ``fp32`` or ``bf16`` (Qt-free).

``auto`` picks bf16 autocast + channels_last memory format where the hardware computes bf16
natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs with bf16; older CUDA GPUs get fp16 autocast
with a gradient scaler) and fp32 elsewhere (MPS, CPUs without native bf16, where bf16 is emulated
and slower). Losses, KL terms and metrics stay fp32: the models compute them on ``.float()``
tensors, and the numerically fragile parts (latent means/scales, sampled codes, attention
softmax) run inside :func:`fp32_region`.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved precision: what autocast runs (``dtype`` None = fp32) and the memory format."""

    name: str  # "fp32", "bf16" or "fp16"
    dtype: torch.dtype | None
    channels_last: bool
    reason: str

    @property
    def autocast_enabled(self) -> bool:
        return self.dtype is not None

    def describe(self) -> str:
        extra = " + channels_last" if self.channels_last else ""
        return f"{self.name}{extra} ({self.reason})"


FP32 = Precision("fp32", None, False, "full precision")


@functools.lru_cache(maxsize=1)
def cpu_bf16_native() -> tuple[bool, str]:
    """(True, why) when this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    hw = sorted(f for f in ("amx_bf16", "avx512_bf16") if f in flags)
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    if hw and onednn:
        return True, f"CPU has {'+'.join(hw)}"
    if not flags and platform.system() != "Linux":
        return False, "CPU bf16 support unknown on this system"
    return False, "CPU has no native bf16 (AVX512-BF16/AMX)"


def resolve_precision(choice: str, device: torch.device | str) -> Precision:
    """Turn ``auto|fp32|bf16`` into a :class:`Precision` for ``device``.

    An explicit ``bf16`` on hardware without native bf16 still runs (emulated, slower) and says so.
    """
    choice = (choice or "auto").lower()
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {choice!r}")
    dev = torch.device(device)
    if choice == "fp32":
        return Precision("fp32", None, False, "requested")
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision("bf16", torch.bfloat16, False, "CUDA bf16 autocast")
        if choice == "bf16":
            raise ValueError("--precision bf16: this GPU has no bf16 support (use auto for fp16 autocast)")
        return Precision("fp16", torch.float16, False, "CUDA fp16 autocast with gradient scaling")
    if dev.type == "cpu":
        native, why = cpu_bf16_native()
        if choice == "bf16":
            return Precision("bf16", torch.bfloat16, True, why if native else f"requested; {why}: emulated, slow")
        if native:
            return Precision("bf16", torch.bfloat16, True, f"auto: {why}")
        return Precision("fp32", None, False, f"auto: {why}")
    if choice == "bf16":
        raise ValueError(f"--precision bf16 is not supported on {dev.type}; use fp32 or auto")
    return Precision("fp32", None, False, f"auto: fp32 on {dev.type}")


def autocast(precision: Precision, device: torch.device | str):
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    dev = torch.device(device)
    if not precision.autocast_enabled:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=precision.dtype)


def fp32_region(device_type: str):
    """Disable any active autocast: code inside runs in fp32 (cast inputs with ``.float()``)."""
    return torch.autocast(device_type, enabled=False)


def prepare_model(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Move ``model`` to the memory format ``precision`` wants (weights stay fp32)."""
    fmt = torch.channels_last if precision.channels_last else torch.contiguous_format
    return model.to(memory_format=fmt)


def prepare_input(x: torch.Tensor, precision: Precision) -> torch.Tensor:
    """``x`` in the memory format ``precision`` wants (4D tensors only)."""
    if precision.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
