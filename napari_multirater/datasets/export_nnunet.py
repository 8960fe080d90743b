"""Export a case-folder dataset in the nnU-Net layout (trains nnU-Net v2 or MONAI directly)::

    <out>/imagesTr/<case>_0000.nii.gz     the image, geometry kept
    <out>/labelsTr/<case>.nii.gz          --labels consensus | majority | rater:NAME  (one label per image)
    <out>/dataset.json                    nnU-Net v2 keys + "multirater" (raters, label source)

``consensus`` is STAPLE (probability >= 0.5), ``majority`` the voxels marked by more than half of
the raters who annotated the case. With ``rater:NAME`` the cases NAME did not annotate are left
out (nnU-Net needs a label per image) and listed.

``--labels all`` writes **one complete nnU-Net dataset per rater** (nnU-Net takes one label per
image, so the raters cannot share one dataset), e.g. to train one model per rater::

    <out>/<rater>/imagesTr, labelsTr, dataset.json   the cases that rater annotated (images hard-linked
                                                     between the raters' folders where the file system can)
    <out>/multirater_export.json                      the raters, their folders and case counts

Move or link each ``<out>/<rater>`` to ``$nnUNet_raw/DatasetNNN_<name>``. ``multirater import folder
<out>`` reads it back as one multi-rater dataset. Everything is built beside ``out`` and renamed
into place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io.medical import write_image
from .case import DatasetError
from .case_folder import CaseFolderDataset, iter_cases_reporting, write_json
from .staging import staged_folder

SUFFIX = ".nii.gz"
ALL_INDEX = "multirater_export.json"  # --labels all: the index beside the per-rater datasets


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
    per_rater = dict.fromkeys(ds.rater_names, 0)  # --labels all: cases per rater's dataset
    with staged_folder(out) as tmp:
        folders = [tmp / r for r in ds.rater_names] if kind == "all" else [tmp]
        for f in folders:
            (f / "imagesTr").mkdir(parents=True)
            (f / "labelsTr").mkdir()
        for i, case in enumerate(iter_cases_reporting(ds, problems), start=1):
            if kind == "all":
                maps = {r: case.masks[k] for k, r in enumerate(case.rater_names) if case.valid[k]}
                roots = {r: tmp / r for r in maps}
            else:
                m = label_of(case, kind, rater)
                maps = {} if m is None else {"label": m}
                roots = {"label": tmp}
            if not maps:
                left_out.append(case.case_id)
                continue
            first = None
            for key, m in maps.items():
                first = _write_image_once(roots[key] / "imagesTr" / f"{case.case_id}_0000{SUFFIX}", case, first)
                write_image(roots[key] / "labelsTr" / f"{case.case_id}{SUFFIX}", m, case.geometry, label=True)
                if key in per_rater:
                    per_rater[key] += 1
            n += 1
            if progress is not None:
                progress(i, len(ds))
        if n == 0:
            raise DatasetError(
                f"{dataset_root}: no case to export with --labels {labels}"
                + (f" ({'; '.join(problems)})" if problems else "")
            )
        if kind == "all":
            for r, count in per_rater.items():
                if count:
                    write_json(tmp / r / "dataset.json", _dataset_json(ds, count, "rater", r, labels))
                else:  # a rater without annotations: no dataset (nnU-Net needs a training case)
                    shutil.rmtree(tmp / r)
            write_json(tmp / ALL_INDEX, _all_index(ds, per_rater, labels))
        else:
            write_json(tmp / "dataset.json", _dataset_json(ds, n, kind, rater, labels))
    summary = {"cases": n, "left_out": left_out, "problems": problems, "out": str(out), "labels": labels}
    if kind == "all":
        summary["per_rater"] = per_rater
    return summary


def _write_image_once(target: Path, case, first: Path | None) -> Path:
    """The case's image at ``target``: a hard link to ``first`` (already written) where possible."""
    if first is not None:
        try:
            os.link(first, target)
            return first
        except OSError:
            pass
    write_image(target, case.image, case.geometry)
    return first or target


def _all_index(ds: CaseFolderDataset, per_rater: dict[str, int], spec: str) -> dict:
    return {
        "layout": "one nnU-Net dataset per rater: <rater>/imagesTr, <rater>/labelsTr, <rater>/dataset.json",
        "labels_from": spec,
        "raters": {r: {"folder": r, "numTraining": n} for r, n in per_rater.items() if n},
        "raters_without_cases": [r for r, n in per_rater.items() if not n],
        "source": str(ds.root),
    }


def _dataset_json(ds: CaseFolderDataset, n: int, kind: str, rater: str | None, spec: str) -> dict:
    values = sorted((int(v), str(name)) for v, name in ds.manifest["labels"].items() if str(v).isdigit())
    labels = {name: v for v, name in values}  # nnU-Net: name -> value (the manifest: value -> name)
    label_name = rater if kind == "rater" else kind
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
            "label_layout": "labelsTr/<case>",
            "label_name": label_name,
            "source": str(ds.root),
        },
    }
