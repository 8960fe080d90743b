"""``multirater bench`` side by side: the D-Persona reference code's sampling in the same process.

The reference code (github.com/ycwu1997/D-Persona) is never copied into this project: the user
gives the folder of their checkout (``--reference-dpersona PATH``: the repository, its
``D-Persona`` folder or its ``code`` folder, the one holding ``lib/DPersona.py``), and it is
imported from there with its own dependencies (``segmentation_models_pytorch`` for its ResNet34
U-Net). Its ``DPersona`` is built as its ``lib/initialize_model.py`` builds it for LIDC (latent 6,
4 Fcomb convs, 4 experts, the ResNet34 backbone) with random weights: its backbone factory asks for
ImageNet encoder weights, which would be a download, so the bench passes ``encoder_weights=None``
(speed does not depend on the weights). Timed call: ``model.val_step(x, sample_num=N)`` in eval
mode under ``torch.no_grad`` (backbone + prior once, then its per-sample Fcomb loop), on CPU,
interleaved round by round with this project's ``model.sample`` on the same image at the same
torch thread count.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from .bench_common import Settings, _log, _model_input, _stats, _timed
from .bench_inputs import image_crop

REFERENCE_NS = (1, 10, 100)
_TOP_LEVEL = ("lib", "pionono_models", "Probabilistic_Unet_Pytorch")  # the reference's packages


class ReferenceUnavailable(RuntimeError):
    """The reference code cannot be found or imported (the message says why)."""


def reference_code_dir(path) -> Path:
    """The folder holding ``lib/DPersona.py`` at or under ``path``."""
    root = Path(str(path)).expanduser()
    for cand in (root, root / "code", root / "D-Persona" / "code"):
        if (cand / "lib" / "DPersona.py").is_file():
            return cand
    raise ReferenceUnavailable(f"no lib/DPersona.py in {root}, {root / 'code'} or {root / 'D-Persona' / 'code'}")


def load_reference_dpersona(path, num_experts: int = 4):
    """The reference ``DPersona`` (random weights, eval mode, CPU) imported from the user's checkout."""
    import torch

    code = reference_code_dir(path)
    clash = [
        m
        for m in _TOP_LEVEL
        if m in sys.modules and not str(getattr(sys.modules[m], "__file__", "")).startswith(str(code))
    ]
    if clash:
        raise ReferenceUnavailable(f"module name(s) {', '.join(clash)} already imported from elsewhere")
    sys.path.insert(0, str(code))
    try:
        backbone = importlib.import_module("pionono_models.segmentation_backbone")
        ref = importlib.import_module("lib.DPersona")
    except Exception as e:  # noqa: BLE001 - any import failure of third-party code means "not installed"
        raise ReferenceUnavailable(f"cannot import the reference code from {code}: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(code))
    unet = backbone.Unet
    backbone.Unet = lambda *a, **kw: unet(*a, **{**kw, "encoder_weights": None})  # no ImageNet download
    ref.device = torch.device("cpu")  # its module-level device (CUDA when available) places tensors
    try:
        torch.manual_seed(0)
        model = ref.DPersona(
            input_channels=1,
            num_classes=1,
            latent_dim=6,
            no_convs_fcomb=4,
            num_experts=num_experts,
            reg_factor=0.00001,
            original_backbone=False,
        )
    except Exception as e:  # noqa: BLE001
        raise ReferenceUnavailable(f"cannot build the reference DPersona: {type(e).__name__}: {e}") from None
    finally:
        backbone.Unet = unet
    return model.to("cpu").eval(), code


def bench_reference(engine, path, s: Settings, precisions=("fp32", "auto")) -> dict:
    """Sampling N in :data:`REFERENCE_NS` of this project's model (each precision) and of the
    reference code, interleaved, on CPU; ``{"skipped": reason}`` when the reference is unavailable."""
    import torch

    from src_training.precision import autocast, prepare_input, prepare_model, resolve_precision

    try:
        ref, code = load_reference_dpersona(path, max(1, engine.model.num_raters))
    except ReferenceUnavailable as e:
        _log(f"side by side skipped: {e}")
        return {"skipped": str(e)}
    cpu = torch.device("cpu")
    ours = {prec.name: prec for prec in (resolve_precision(p, cpu) for p in precisions)}
    x0 = _model_input(engine, image_crop(s.image_size), cpu)
    ns = [n for n in REFERENCE_NS if n in s.sample_ns] or list(REFERENCE_NS[:2])
    out = {
        "reference_code": str(code),
        "reference_parameters": int(sum(p.numel() for p in ref.parameters())),
        "call": "model.val_step(x, sample_num=N), eval mode, torch.no_grad, fp32",
        "threads": torch.get_num_threads(),
        "rows": [],
    }

    def ours_fn(prec, n):
        def run():
            prepare_model(engine.model, prec)
            with torch.inference_mode(), autocast(prec, cpu):
                engine.model.sample(prepare_input(x0, prec), n, torch.Generator().manual_seed(0))

        return run

    def ref_fn(n):
        xr = x0[:, :1].contiguous()

        def run():
            with torch.no_grad():
                ref.val_step(xr, sample_num=n)

        return run

    for n in ns:
        fns = {f"ours {k}": ours_fn(p, n) for k, p in ours.items()}
        fns["reference"] = ref_fn(n)
        for fn in fns.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(max(3, s.repeats)):
            for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                times[k].append(_timed(fns[k], cpu))
        row = {"n": n, **{k: _stats(v) for k, v in times.items()}}
        row["speedup"] = {k: row["reference"]["median"] / row[k]["median"] for k in fns if k != "reference"}
        out["rows"].append(row)
        _log(f"side by side N={n}: " + ", ".join(f"{k} {row[k]['median']:.1f} ms" for k in fns))
    prepare_model(engine.model, engine.precision)
    return out
