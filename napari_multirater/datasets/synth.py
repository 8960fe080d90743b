"""Write a synthetic phantom dataset in the case-folder format (``multirater synth``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..argtypes import MAX_CASES, MAX_RATERS
from ..io.outputs import check_output_folder, staged_output_folder
from .case_folder import MANIFEST, create_dataset, new_manifest, write_case
from .phantom import PHANTOM_WINDOW_HU, STYLE_DESCRIPTIONS, make_phantom_case, rater_styles


def generate_phantom_dataset(
    out_dir,
    n_cases: int,
    *,
    n_raters: int = 4,
    ndim: int = 2,
    seed: int = 0,
    val_fraction: float = 0.2,
    suffix: str = ".nii.gz",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate ``n_cases`` phantom cases with ``n_raters`` simulated raters into ``out_dir``.

    Each case is its own patient; the last ``val_fraction`` of cases form the val split. The dataset
    is built beside ``out_dir`` and renamed into place when complete (a full disk leaves nothing);
    ``overwrite`` replaces an earlier dataset there (a folder with ``dataset.json``), nothing else.
    """
    if not 1 <= n_cases <= MAX_CASES:
        raise ValueError(f"the number of cases must be 1 to {MAX_CASES}, got {n_cases}")
    if not 1 <= n_raters <= MAX_RATERS:
        raise ValueError(f"the number of raters must be 1 to {MAX_RATERS}, got {n_raters}")
    out_dir = check_output_folder(out_dir, overwrite=overwrite, marker=MANIFEST)
    styles = rater_styles(n_raters)
    n_val = int(round(n_cases * val_fraction)) if n_cases > 1 else 0
    patients = [f"phantom-{seed}-{i:04d}" for i in range(n_cases)]
    manifest = new_manifest(
        f"phantom-{ndim}d-seed{seed}",
        [s.name for s in styles],
        modality="CT",
        intensity_window=list(PHANTOM_WINDOW_HU),
        description="Synthetic CT-like phantoms with simulated rater styles: "
        + "; ".join(f"{s.name}: {STYLE_DESCRIPTIONS[s.kind]} (offset {s.offset_mm:+.1f} mm)" for s in styles),
        splits={"train": patients[: n_cases - n_val], "val": patients[n_cases - n_val :]},
    )
    manifest["generator"] = {"seed": seed, "ndim": ndim, "n_cases": n_cases}
    with staged_output_folder(out_dir, replace=overwrite) as tmp:
        create_dataset(tmp, manifest)
        for i in range(n_cases):
            case = make_phantom_case(i, seed=seed, ndim=ndim, n_raters=n_raters)
            write_case(tmp, case, suffix=suffix, provenance={"kind": "synthetic", "source": "phantom rater style"})
            if progress:
                progress(i + 1, n_cases)
    return out_dir
