"""Export a case-folder dataset in the nnU-Net layout (trains nnU-Net v2 or MONAI directly)::

    <out>/imagesTr/<case>_0000.nii.gz     the image, geometry kept
    <out>/labelsTr/<case>.nii.gz          --labels consensus | majority | rater:NAME  (one label per image)
    <out>/labelsTr/<rater>/<case>.nii.gz  --labels all  (one folder per rater; a missing rater has no file)
    <out>/dataset.json                    nnU-Net v2 keys + "multirater" (raters, label source)

``consensus`` is STAPLE (probability >= 0.5), ``majority`` the voxels marked by more than half of
the raters who annotated the case. With ``rater:NAME`` the cases NAME did not annotate are left
out (nnU-Net needs a label per image) and listed. Built beside ``out`` and renamed into place.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..io.medical import write_image
from .case import DatasetError
from .case_folder import CaseFolderDataset, iter_cases_reporting, write_json
from .staging import staged_folder

SUFFIX = ".nii.gz"


def parse_labels(spec: str, raters: list[str]) -> tuple[str, str | None]:
    """``consensus`` / ``majority`` / ``all`` / ``rater:NAME`` -> (kind, rater)."""
    if spec in ("consensus", "majority", "all"):
        return spec, None
    if spec.startswith("rater:"):
        name = spec[len("rater:") :]
        if name not in raters:
            raise DatasetError(f"--labels {spec}: no rater {name!r} in this dataset (raters: {', '.join(raters)})")
        return "rater", name
    raise DatasetError(f"--labels {spec!r}: use consensus, majority, all or rater:NAME")


def label_of(case, kind: str, rater: str | None) -> np.ndarray | None:
    """The single label map of a case for ``kind`` (None: the chosen rater did not annotate it)."""
    if kind == "majority":
        from ..analysis.overlap import majority_vote

        return majority_vote(case.masks, case.valid)
    if kind == "consensus":
        from ..analysis.staple import staple

        return staple(case.masks, case.valid).consensus
    k = case.rater_names.index(rater)
    return case.masks[k].astype(np.uint8) if case.valid[k] else None


def export_nnunet(
    dataset_root,
    out,
    labels: str = "consensus",
    *,
    split: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the nnU-Net layout of ``dataset_root`` (optionally one split) to ``out``; returns a
    summary (``cases``, ``left_out``, ``problems``). DatasetError when nothing can be exported."""
    ds = CaseFolderDataset(dataset_root, split=split, strict=False)
    kind, rater = parse_labels(labels, ds.rater_names)
    problems: list[str] = []
    left_out: list[str] = []
    n = 0
    with staged_folder(out) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        if kind == "all":
            for r in ds.rater_names:
                (tmp / "labelsTr" / r).mkdir()
        for i, case in enumerate(iter_cases_reporting(ds, problems), start=1):
            if kind == "all":
                maps = {r: case.masks[k] for k, r in enumerate(case.rater_names) if case.valid[k]}
                targets = {r: tmp / "labelsTr" / r / f"{case.case_id}{SUFFIX}" for r in maps}
            else:
                m = label_of(case, kind, rater)
                maps = {} if m is None else {"label": m}
                targets = {"label": tmp / "labelsTr" / f"{case.case_id}{SUFFIX}"}
            if not maps:
                left_out.append(case.case_id)
                continue
            write_image(tmp / "imagesTr" / f"{case.case_id}_0000{SUFFIX}", case.image, case.geometry)
            for key, m in maps.items():
                write_image(targets[key], m, case.geometry, label=True)
            n += 1
            if progress is not None:
                progress(i, len(ds))
        if n == 0:
            raise DatasetError(
                f"{dataset_root}: no case to export with --labels {labels}"
                + (f" ({'; '.join(problems)})" if problems else "")
            )
        write_json(tmp / "dataset.json", _dataset_json(ds, n, kind, rater, labels))
    return {"cases": n, "left_out": left_out, "problems": problems, "out": str(out), "labels": labels}


def _dataset_json(ds: CaseFolderDataset, n: int, kind: str, rater: str | None, spec: str) -> dict:
    values = sorted((int(v), str(name)) for v, name in ds.manifest["labels"].items() if str(v).isdigit())
    labels = {name: v for v, name in values}  # nnU-Net: name -> value (the manifest: value -> name)
    label_name = {"rater": rater, "all": None}.get(kind, kind)
    return {
        "name": ds.manifest.get("name", ""),
        "description": ds.manifest.get("description", ""),
        "channel_names": {"0": ds.manifest.get("modality") or "unknown"},
        "labels": labels,
        "numTraining": n,
        "file_ending": SUFFIX,
        "multirater": {
            "raters": list(ds.rater_names),
            "labels_from": spec,
            "label_layout": "labelsTr/<rater>/<case>" if kind == "all" else "labelsTr/<case>",
            "label_name": label_name,
            "source": str(ds.root),
        },
    }
