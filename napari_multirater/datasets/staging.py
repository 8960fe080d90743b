"""Build a new dataset folder completely beside its destination, then rename it into place.

An import or export that fails (bad input, disk full, Ctrl-C) leaves nothing behind: the
destination appears only once every file is written. Imported cases get sidecars that record
``provenance`` per rater (``{"kind": "imported", ...}``) and the mask checksum.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..io.outputs import staged_output_folder
from .case import DatasetError, MultiRaterCase
from .case_folder import image_checksum, read_json, write_case, write_json


def check_new_folder(out) -> Path:
    """``out`` must not exist, or be an empty folder; its parent folder must exist."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty (choose a new folder)")
    if not out.parent.is_dir():
        raise DatasetError(f"{out.parent} does not exist (create it first)")
    return out


@contextlib.contextmanager
def staged_folder(out) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out`` (one rename),
    on any error it is removed and ``out`` is untouched."""
    with staged_output_folder(check_new_folder(out)) as tmp:
        yield tmp


def write_imported_case(root, case: MultiRaterCase, provenance: dict[str, dict]) -> Path:
    """Write ``case`` (case-folder format) with one ``{"kind": "imported", ...}`` provenance per
    rater in its sidecar, plus the mask checksum (as the annotation store records it)."""
    for rater, prov in provenance.items():
        if prov.get("kind") != "imported":
            raise DatasetError(f"rater {rater}: imported provenance must have kind 'imported'")
    cdir = write_case(root, case, provenance={"kind": "imported"})
    for k, rater in enumerate(case.rater_names):
        side = cdir / "raters" / f"{rater}.json"
        if not case.valid[k] or not side.exists():
            continue
        sidecar = read_json(side, "annotation sidecar")
        sidecar["provenance"] = dict(provenance.get(rater, {"kind": "imported"}))
        sidecar["mask_sha256"] = image_checksum(case.masks[k])
        write_json(side, sidecar)
    return cdir
