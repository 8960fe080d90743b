"""Intra-rater repeats: a rater's second, blind annotation of a case they already annotated.

A repeat is stored NEXT to the first mask, never over it::

    <project>/cases/<case>/raters/repeats/<rater>.json          sidecar (commit point), names the mask file
    <project>/cases/<case>/raters/repeats/<rater>.r<N>.nii.gz   the repeat mask of revision N

The ``repeats`` folder is not a rater (training, the rater report and the Compare dock read
``raters/<rater>.*`` only). Saving runs under the same (case, rater) lock as the first mask; the
mask file is written (verified, atomic) under a new name before the sidecar that points to it, so
a crash leaves either the previous repeat or the new one, never a mix, and the first mask is
never opened for writing. Same keyword arguments and errors as
:meth:`~napari_multirater.annotation.store.AnnotationStore.save_mask`.

A repeat sidecar is untrusted: its ``mask_file`` must be ``<rater>.r<N>.nii.gz`` in the same
folder; any other value (an absolute path, ``..``) is never read or deleted: the sidecar is moved
to ``raters/.quarantine/`` with a warning naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..datasets.case import DatasetError
from ..datasets.case_folder import (
    annotation_sidecar,
    check_identifier,
    image_checksum,
    read_json,
    write_json,
)
from ..io.medical import MedicalIOError, read_label_image, write_image
from .store import (
    ChecksumMismatch,
    SaveConflict,
    SaveError,
    _binary_mask,
    loaded_revision,
)

__all__ = ["REPEAT_DIR", "has_repeat", "load_repeat", "repeat_cases", "save_repeat"]

REPEAT_DIR = "repeats"


def _rdir(store, case_id: str) -> Path:
    return store.own_dir(store.raters_dir(case_id), REPEAT_DIR)


def _mask_name(sidecar: dict, rater: str) -> str | None:
    """The sidecar's ``mask_file`` when it is ``<rater>.r<N>.nii.gz``, else None (untrusted)."""
    name = sidecar.get("mask_file")
    ok = isinstance(name, str) and re.fullmatch(rf"{re.escape(rater)}\.r[1-9][0-9]{{0,8}}\.nii\.gz", name)
    return name if ok else None


def _refuse(store, side: Path, sidecar: dict) -> None:
    store._quarantine_entry(
        side, f"repeat sidecar names mask_file {sidecar.get('mask_file')!r}, not <rater>.r<N>.nii.gz"
    )


def has_repeat(store, case_id: str, rater: str) -> bool:
    try:
        return (_rdir(store, case_id) / f"{check_identifier(rater, 'rater id')}.json").is_file()
    except DatasetError:
        return False


def repeat_cases(store, rater: str) -> list[str]:
    """Cases where ``rater`` saved a repeat."""
    return [c for c in store.case_ids() if has_repeat(store, c, rater)]


def load_repeat(store, case_id: str, rater: str) -> tuple[np.ndarray | None, dict | None]:
    """``(mask uint8 | None, sidecar | None)`` of ``rater``'s repeat of ``case_id``."""
    check_identifier(rater, "rater id")
    side = _rdir(store, case_id) / f"{rater}.json"
    if not side.is_file():
        return None, None
    sidecar = read_json(store.contained(side), "repeat sidecar")
    name = _mask_name(sidecar, rater)
    if name is None:
        _refuse(store, side, sidecar)
        return None, None
    mpath = store.contained(_rdir(store, case_id) / name)
    img = store._image_info(case_id)
    try:
        mask, _, _ = read_label_image(mpath, reference=img.geometry, shape=img.shape)
    except MedicalIOError as e:
        raise DatasetError(f"case {case_id}, rater {rater}, repeat: {e}") from None
    if sidecar.get("image_sha256") not in (None, img.sha256):
        raise ChecksumMismatch(f"{side}: this repeat was made on a different image")
    return (np.asarray(mask) != 0).astype(np.uint8), sidecar


def save_repeat(
    store,
    case_id: str,
    rater: str,
    mask,
    *,
    provenance: dict,
    active_seconds: float = 0.0,
    created: str | None = None,
    image_sha256: str | None = None,
    geometry=None,
    lock_timeout: float | None = None,
    expected_revision: int | None = None,
) -> dict:
    """Save ``rater``'s repeat of ``case_id`` (they must have a first mask); returns the sidecar."""
    check_identifier(rater, "rater id")
    where = f"case {case_id}, rater {rater}, repeat"
    if not store.has_mask(case_id, rater):
        raise DatasetError(f"{where}: no first annotation to repeat")
    mask = _binary_mask(mask, where)
    img = store._image_info(case_id)
    if image_sha256 is not None and image_sha256 != img.sha256:
        raise ChecksumMismatch(f"{where}: the mask was drawn on a different image; not saving")
    if tuple(mask.shape) != img.shape:
        raise DatasetError(f"{where}: mask shape {tuple(mask.shape)} does not match the image shape {img.shape}")
    if geometry is not None and img.geometry.mismatch(geometry) is not None:
        raise DatasetError(f"{where}: mask geometry does not match the image: {img.geometry.mismatch(geometry)}")
    rdir = _rdir(store, case_id)
    try:
        rdir.mkdir(parents=True, exist_ok=True)
        with store._rater_lock(case_id, rater, lock_timeout):
            current = None
            if (rdir / f"{rater}.json").is_file():
                current = read_json(store.contained(rdir / f"{rater}.json"), "repeat sidecar")
                if current.get("mask_file") is not None and _mask_name(current, rater) is None:
                    _refuse(store, rdir / f"{rater}.json", current)  # its mask_file is never deleted
                    current = {"revision": current.get("revision")}
            revision = loaded_revision(None, current)
            if expected_revision is not None and int(expected_revision) != revision:
                raise SaveConflict(
                    f"{where}: not saved: another session saved this repeat meanwhile "
                    f"(revision {revision}; you started from {expected_revision})",
                    None,
                    revision,
                )
            if created is None and current:
                created = current.get("created")
            sidecar = annotation_sidecar(
                rater, case_id, img.sha256, dict(provenance), created=created, active_seconds=active_seconds
            )
            sidecar.update(
                {
                    "mask_sha256": image_checksum(mask),
                    "mask_file": f"{rater}.r{revision + 1}.nii.gz",
                    "revision": revision + 1,
                    "repeat_of": f"{rater}.nii.gz",
                    "note": "intra-rater repeat, drawn blind; the first mask is never changed",
                }
            )
            write_image(rdir / sidecar["mask_file"], mask, img.geometry, label=True, fsync=True)
            write_json(rdir / f"{rater}.json", sidecar)  # commit point
            old = _mask_name(current, rater) if current else None
            if old is not None and old != sidecar["mask_file"]:
                (rdir / old).unlink(missing_ok=True)  # a plain name in rdir: unlink never follows it
    except (OSError, MedicalIOError) as e:
        if isinstance(e, DatasetError):
            raise
        raise SaveError(f"{where}: not saved: {e}") from None
    return sidecar
