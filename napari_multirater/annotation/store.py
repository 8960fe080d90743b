"""Annotation store: collect rater masks into a case-folder project (pure Python, no Qt/napari).

The project *is* a case-folder dataset (:mod:`napari_multirater.datasets.case_folder`), so what is
collected can be trained on directly (``multirater train``)::

    <project>/dataset.json                       manifest; ``raters`` grows as raters save
    <project>/.dataset.lock                      project lock (manifest edits, new cases)
    <project>/cases/<case>/image.nii.gz          the image
    <project>/cases/<case>/case.json             case info incl. ``image_sha256`` (sha256 of voxels)
    <project>/cases/<case>/raters/<rater>.nii.gz that rater's binary mask (image geometry)
    <project>/cases/<case>/raters/<rater>.json   sidecar: rater, created/saved, active_seconds,
                                                 image_sha256, mask_sha256, provenance
    <project>/cases/<case>/raters/.<rater>.lock  per-(case, rater) lock
    <project>/cases/<case>/raters/.pending/<rater>/   staging area of a save in progress
    <project>/cases/<case>/raters/.broken/<rater>-<time>.*   an unreadable mask + sidecar, moved aside
    <project>/cases/<case>/raters/.conflicts/<rater>-<time>.*   a save refused because another
                                                 session saved a newer revision meanwhile
    <project>/cases/<case>/raters/.quarantine/<name>-<time>   a staged save record or symbolic link
                                                 that named a path outside the project, moved aside
    <config folder>/unsaved/<project>/<case>/<rater>.unsaved-<time>.*   emergency copy (save failed)

Saving is crash safe and concurrency safe:

* every save of (case, rater) runs under that pair's lock (:class:`~.lock.FileLock`: ``flock``,
  released by the kernel when a process dies, or an ``O_EXCL`` lock file elsewhere);
* the mask and the sidecar are first written completely into the staging folder (each file
  itself via a temporary name, fsync and an atomic rename; the mask is on disk before the
  sidecar is written); writing the staged sidecar is the commit point; then both are renamed
  over the live files;
* before every load or save under the lock, a staged save left by a killed process is finished
  when it was committed (staged sidecar present) and discarded otherwise, so the live mask and
  sidecar always belong to one completed save, and a crash loses at most the save in progress;
* a rater id is added to ``dataset.json`` under the project lock after re-reading the manifest,
  so raters added concurrently by other processes are merged, never lost;
* every sidecar carries a ``revision`` (1, 2, ...); a save that names the revision it started from
  (``expected_revision``) is refused with :class:`SaveConflict` when another session (second
  window, second machine on a shared folder, same rater id) saved a newer one meanwhile: the
  offered mask goes to ``raters/.conflicts/`` and nothing is overwritten;
* any OS-level failure (disk full, read-only, permission, file size limit) raises
  :class:`SaveError` naming the file and the reason; the previous mask and sidecar are intact;
* reading takes no lock (a read-only project can be read): the files are read, then re-checked
  unchanged with no save in progress; otherwise the read is repeated under the lock.

The project is untrusted (:mod:`napari_multirater.io.contained`): every folder and file used must
lie inside the project (a symbolic link leading out is refused with :class:`DatasetError`); a
staged save record naming any file but ``<rater><suffix>``, or a symbolic link where the store
keeps its own folders (``.pending``, ``.broken``, ``.conflicts``...), is moved to
``raters/.quarantine/`` with an :class:`~napari_multirater.io.contained.UntrustedPathWarning`,
never followed; recovery renames and deletes without following symbolic links.

A mask is only accepted for the image it was drawn on: the caller passes the checksum of the
image it loaded, which must equal the checksum of the image on disk and the one recorded in
``case.json``; shape and geometry must match too.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..datasets.case import DatasetError
from ..datasets.case_folder import (
    IMAGE_STEM,
    MANIFEST,
    annotation_sidecar,
    check_identifier,
    contained,
    create_dataset,
    find_file,
    image_checksum,
    list_case_ids,
    new_manifest,
    now_iso,
    read_json,
    unconfirmed_prefill,
    validate_manifest,
    write_json,
)
from ..io.contained import UnsafePath, quarantine, remove_tree, replace
from ..io.geometry import Geometry
from ..io.medical import (
    SINGLE_FILE_SUFFIXES,
    SUPPORTED_SUFFIXES,
    MedicalIOError,
    fsync_dir,
    read_image,
    read_label_image,
    write_image,
)
from .lock import DEFAULT_TIMEOUT, FileLock

__all__ = [
    "AnnotationStore",
    "ChecksumMismatch",
    "SaveConflict",
    "SaveError",
    "loaded_revision",
    "RaterIdentity",
    "case_id_from_path",
    "config_path",
]

PROJECT_LOCK = ".dataset.lock"
PENDING_DIR = ".pending"
BROKEN_DIR = ".broken"
CONFLICT_DIR = ".conflicts"
QUARANTINE_DIR = ".quarantine"
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
DEFAULT_MASK_SUFFIX = ".nii.gz"
CONFIG_ENV = "NAPARI_MULTIRATER_CONFIG"


class ChecksumMismatch(DatasetError):
    """A mask was offered for an image other than the one on disk (or the image changed)."""


class SaveError(DatasetError):
    """Writing an annotation failed (disk full, read-only, permission...); nothing was replaced."""


class SaveConflict(DatasetError):
    """Another session saved this rater's mask of the case after this session loaded it; the
    mask offered was kept in ``copy_path`` (a conflict copy), the newer one is untouched."""

    def __init__(self, message: str, copy_path: Path | None = None, revision: int | None = None):
        super().__init__(message)
        self.copy_path = copy_path
        self.revision = revision


def loaded_revision(mask, sidecar: dict | None) -> int:
    """The revision of a rater's annotation as loaded: 0 = nothing saved yet; sidecars without a
    ``revision`` (older versions, imported masks) count as 1."""
    if isinstance(sidecar, dict) and isinstance(sidecar.get("revision"), int):
        return int(sidecar["revision"])
    return 0 if mask is None and sidecar is None else 1


def case_id_from_path(path) -> str:
    """A valid case id from an image file (or DICOM folder) name: suffix removed, other
    characters than letters, digits and ``_.-`` replaced by ``_``."""
    name = Path(path).name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:120]
    return name or "case"


def _mask_suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SINGLE_FILE_SUFFIXES:
        if name.endswith(s):
            return s
    return DEFAULT_MASK_SUFFIX


def _staged_target(record, rater: str) -> str:
    """The live mask name a staged save record commits to: only ``<rater><suffix>`` (what the
    store writes) is accepted; any other value (a path, ``..``, another rater) raises UnsafePath."""
    if not isinstance(record, dict):
        raise UnsafePath("staged save record is not a JSON object")
    target = record.get("mask_file", f"{rater}{DEFAULT_MASK_SUFFIX}")
    if not isinstance(target, str) or target not in {f"{rater}{s}" for s in SINGLE_FILE_SUFFIXES}:
        raise UnsafePath(f"mask_file {target!r} is not {rater}<suffix>")
    return target


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%dT%H%M%S")


def _free_name(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or with ``-2``, ``-3``... when that exists."""
    p, n = folder / f"{stem}{suffix}", 1
    while p.exists():
        n += 1
        p = folder / f"{stem}-{n}{suffix}"
    return p


def _binary_mask(mask, where: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == bool:
        return m.astype(np.uint8)
    if m.dtype.kind not in "iuf":
        raise DatasetError(f"{where}: mask of type {m.dtype} cannot be saved (expected 0/1 integers)")
    if m.size and (m.min() < 0 or m.max() > 1 or (m.dtype.kind == "f" and not np.all((m == 0) | (m == 1)))):
        values = np.unique(m)[:8].tolist()
        raise DatasetError(f"{where}: mask must be binary (0 = background, 1 = lesion), found values {values}")
    return m.astype(np.uint8)


@dataclass
class _ImageInfo:
    stat_key: tuple
    sha256: str
    shape: tuple
    geometry: Geometry
    path: Path


class AnnotationStore:
    """Read and write rater annotations of a case-folder project (see the module docstring)."""

    def __init__(self, project_dir, lock_timeout: float = DEFAULT_TIMEOUT):
        self.root = Path(project_dir)
        self.lock_timeout = float(lock_timeout)
        m = read_json(self.root / MANIFEST, "project manifest")
        validate_manifest(m, str(self.root / MANIFEST))
        self._images: dict[str, _ImageInfo] = {}

    # --- project -------------------------------------------------------------------------------
    @classmethod
    def create_project(
        cls,
        project_dir,
        name: str,
        raters: Sequence[str] = (),
        *,
        modality: str = "CT",
        labels: dict | None = None,
        intensity_window: Sequence[float] | None = None,
        description: str = "",
        lock_timeout: float = DEFAULT_TIMEOUT,
    ) -> AnnotationStore:
        """Create an empty project (refuses to overwrite an existing ``dataset.json``)."""
        manifest = new_manifest(
            name,
            list(raters),
            modality=modality,
            labels=labels,
            intensity_window=intensity_window,
            description=description,
        )
        create_dataset(project_dir, manifest)
        return cls(project_dir, lock_timeout=lock_timeout)

    @property
    def manifest(self) -> dict:
        """The manifest as currently on disk (re-read: other processes may add raters)."""
        m = read_json(self.root / MANIFEST, "project manifest")
        validate_manifest(m, str(self.root / MANIFEST))
        return m

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.root.name))

    def raters(self) -> list[str]:
        return list(self.manifest["raters"])

    def _timeout(self, timeout: float | None) -> float:
        return self.lock_timeout if timeout is None else float(timeout)

    def _project_lock(self, timeout: float | None = None) -> FileLock:
        return FileLock(self.root / PROJECT_LOCK, timeout=self._timeout(timeout))

    def _rater_lock(self, case_id: str, rater: str, timeout: float | None = None) -> FileLock:
        return FileLock(self.raters_dir(case_id) / f".{rater}.lock", timeout=self._timeout(timeout))

    def add_rater(self, rater: str, lock_timeout: float | None = None) -> bool:
        """Add ``rater`` to the manifest (merged with concurrent additions); True if it was new."""
        check_identifier(rater, "rater id")
        if rater in self.raters():  # raters are never removed: no lock needed to see it is there
            return False
        with self._project_lock(lock_timeout):
            m = read_json(self.root / MANIFEST, "project manifest")
            if rater in m.get("raters", []):
                return False
            m["raters"] = [*m.get("raters", []), rater]
            validate_manifest(m, str(self.root / MANIFEST))
            write_json(self.root / MANIFEST, m)
            return True

    # --- cases ---------------------------------------------------------------------------------
    def case_ids(self) -> list[str]:
        return list_case_ids(self.root)

    def case_dir(self, case_id: str) -> Path:
        return self.contained(self.root / "cases" / check_identifier(case_id, "case id"))

    def raters_dir(self, case_id: str) -> Path:
        """``cases/<case>/raters`` (inside the project, else :class:`DatasetError`)."""
        return self.contained(self.case_dir(case_id) / "raters")

    def contained(self, path: Path) -> Path:
        """``path`` when its real path lies inside the project, else :class:`DatasetError`."""
        return contained(self.root, path)

    def own_dir(self, parent: Path, name: str) -> Path:
        """``parent/name``, a folder the store manages (``.pending``, ``.broken``...): a symbolic
        link there (the store never makes one) is quarantined first, so it is never followed."""
        path = parent / name
        if path.is_symlink():
            self._quarantine_entry(path, "a symbolic link where the project keeps its own folder")
        return path

    def _quarantine_entry(self, entry: Path, reason: str) -> Path:
        """Move ``entry`` to its case's ``raters/.quarantine/`` (never following it), with a warning."""
        rdir = next((p for p in entry.parents if p.name == "raters"), entry.parent)
        try:
            return quarantine(self.root, entry, rdir / QUARANTINE_DIR, reason)
        except (UnsafePath, OSError) as e:
            raise DatasetError(f"{entry}: {reason}, and it cannot be moved aside ({e}); remove it") from None

    def _existing_case_dir(self, case_id: str) -> Path:
        d = self.case_dir(case_id)
        if not d.is_dir():
            raise DatasetError(f"case {case_id!r} not found in project {self.root}")
        return d

    def case_info(self, case_id: str) -> dict:
        p = self.contained(self._existing_case_dir(case_id) / "case.json")
        return read_json(p, "case info") if p.exists() else {}

    def add_case(
        self,
        image: np.ndarray,
        geometry: Geometry,
        case_id: str | None = None,
        *,
        source: str | None = None,
        patient_id: str | None = None,
        suffix: str = ".nii.gz",
        info: dict | None = None,
    ) -> str:
        """Add one image as a new case; returns its id (made unique with ``_2``, ``_3``...)."""
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise DatasetError(f"only 2D or 3D images can be annotated, got shape {image.shape}")
        base = case_id_from_path(case_id or "case")
        with self._project_lock():
            existing = set(self.case_ids())
            cid, n = base, 1
            while cid in existing or os.path.lexists(self.root / "cases" / cid):
                n += 1
                cid = f"{base}_{n}"
            cdir = self.case_dir(cid)
            (cdir / "raters").mkdir(parents=True)
            try:
                write_image(cdir / f"{IMAGE_STEM}{suffix}", image, geometry)
            except MedicalIOError as e:
                shutil.rmtree(cdir, ignore_errors=True)
                raise DatasetError(str(e)) from None
            record = dict(info or {})
            record.update(
                {
                    "case_id": cid,
                    "patient_id": patient_id or record.get("patient_id") or cid,
                    "image_sha256": image_checksum(image),
                    "added": now_iso(),
                }
            )
            if source:
                record["source"] = str(source)
            write_json(cdir / "case.json", record)
        return cid

    def import_images(self, paths: Iterable, errors: list[str] | None = None) -> list[str]:
        """Add one case per image file / DICOM folder (case id from the file name).

        A file that cannot be read raises :class:`DatasetError`, unless ``errors`` (a list) is
        given: then its message is appended and the other files are still imported.
        """
        ids = []
        for path in paths:
            try:
                image, geometry, info = read_image(path)
            except MedicalIOError as e:
                if errors is None:
                    raise DatasetError(str(e)) from None
                errors.append(str(e))
                continue
            extra = {k: info[k] for k in ("series_uid", "series_description", "modality") if info.get(k)}
            ids.append(self.add_case(image, geometry, case_id_from_path(path), source=str(path), info=extra))
        return ids

    # --- images --------------------------------------------------------------------------------
    def image_path(self, case_id: str) -> Path:
        cdir = self._existing_case_dir(case_id)
        p = find_file(cdir, IMAGE_STEM)
        if p is None:
            raise DatasetError(f"case {case_id}: no image file in {cdir} (expected image.nii.gz or similar)")
        return self.contained(p)

    def _image_info(
        self, case_id: str, array: np.ndarray | None = None, geometry: Geometry | None = None
    ) -> _ImageInfo:
        """Checksum/shape/geometry of the image on disk, re-read whenever the file changed."""
        p = self.image_path(case_id)
        st = p.stat()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._images.get(case_id)
        if cached is not None and cached.stat_key == key and cached.path == p:
            return cached
        if array is None:
            try:
                array, geometry, _ = read_image(p)
            except MedicalIOError as e:
                raise DatasetError(str(e)) from None
        info = _ImageInfo(key, image_checksum(array), tuple(array.shape), geometry, p)
        self._images[case_id] = info
        return info

    def load_image(self, case_id: str) -> tuple[np.ndarray, Geometry, dict]:
        """``(array, geometry, info)``; info adds ``image_sha256`` (of the voxels just read)."""
        p = self.image_path(case_id)
        try:
            array, geometry, info = read_image(p)
        except MedicalIOError as e:
            raise DatasetError(str(e)) from None
        self._images.pop(case_id, None)
        img = self._image_info(case_id, array, geometry)
        info = {**info, "image_sha256": img.sha256, "case_id": case_id}
        return array, geometry, info

    def image_checksum(self, case_id: str) -> str:
        return self._image_info(case_id).sha256

    # --- masks ---------------------------------------------------------------------------------
    def _pending(self, case_id: str, rater: str) -> Path:
        check_identifier(rater, "rater id")
        return self.own_dir(self.own_dir(self.raters_dir(case_id), PENDING_DIR), rater)

    def _remove_pending(self, pend: Path) -> None:
        try:
            remove_tree(self.root, pend)
        except UnsafePath as e:
            raise DatasetError(str(e)) from None
        except OSError:
            pass  # as before: a leftover staging folder is discarded on the next save

    def _recover(self, case_id: str, rater: str) -> str | None:
        """Finish (committed) or discard (uncommitted) a save interrupted by a crash. Call under
        the rater lock. Returns "finished", "discarded", "quarantined" (a record naming any file
        but ``<rater><suffix>``, or holding symbolic links: moved aside, never followed) or None."""
        pend = self._pending(case_id, rater)
        if not pend.exists():
            return None
        rdir = self.raters_dir(case_id)
        side = pend / "sidecar.json"
        outcome = "discarded"
        if side.is_file() or side.is_symlink():
            try:
                if side.is_symlink():
                    raise UnsafePath(f"{side} is a symbolic link")
                record = json.loads(side.read_text(encoding="utf-8"))
                target = _staged_target(record, rater)
                staged = pend / f"mask{_mask_suffix(Path(target))}"
                if staged.is_file() or staged.is_symlink():
                    replace(self.root, staged, rdir / target)
                replace(self.root, side, rdir / f"{rater}.json")
                fsync_dir(rdir)
                outcome = "finished"
            except UnsafePath as e:
                self._quarantine_entry(pend, f"staged save record refused ({e})")
                return "quarantined"
            except (ValueError, OSError):
                outcome = "discarded"
        self._remove_pending(pend)
        return outcome

    def mask_path(self, case_id: str, rater: str) -> Path | None:
        check_identifier(rater, "rater id")
        self._existing_case_dir(case_id)
        p = find_file(self.raters_dir(case_id), rater)
        return None if p is None else self.contained(p)

    def is_draft(self, case_id: str, rater: str) -> bool:
        """Whether ``rater``'s saved mask of the case is an untouched model pre-fill (see
        :func:`unconfirmed_prefill`); read without a lock, an unreadable sidecar is no draft."""
        try:
            check_identifier(rater, "rater id")
            side = json.loads((self.raters_dir(case_id) / f"{rater}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, DatasetError):
            return False
        return unconfirmed_prefill(side)

    def has_mask(self, case_id: str, rater: str, drafts: bool = False) -> bool:
        """Whether ``rater`` annotated the case; an unconfirmed pre-fill counts only with ``drafts``."""
        try:
            found = self.mask_path(case_id, rater) is not None
        except DatasetError:
            return False
        return found and (drafts or not self.is_draft(case_id, rater))

    def drafts(self, rater: str | None = None) -> list[tuple[str, str]]:
        """``(case, rater)`` of every saved unconfirmed pre-fill (of ``rater`` only, if given)."""
        out = []
        for cid in self.case_ids():
            for r in self.annotated_raters(cid, drafts=True):
                if (rater is None or r == rater) and self.is_draft(cid, r):
                    out.append((cid, r))
        return out

    def annotated_raters(self, case_id: str, drafts: bool = False) -> list[str]:
        """Raters with a mask file for the case (manifest order, then others alphabetically);
        unconfirmed pre-fills only with ``drafts``."""
        rdir = self.raters_dir(case_id)
        if not rdir.is_dir():
            return []
        found = set()
        for p in rdir.iterdir():
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".json"):
                stem = p.name
                for s in SUPPORTED_SUFFIXES:
                    if stem.lower().endswith(s):
                        found.add(stem[: -len(s)])
                        break
        if not drafts:
            found = {r for r in found if not self.is_draft(case_id, r)}
        order = [r for r in self.raters() if r in found]
        return order + sorted(found - set(order))

    def _read_live(self, case_id: str, rater: str) -> tuple:
        """``(mask | None, sidecar | None, mask path | None, image info | None)`` as on disk now."""
        spath = self.contained(self.raters_dir(case_id) / f"{rater}.json")
        mpath = self.mask_path(case_id, rater)
        sidecar = read_json(spath, "annotation sidecar") if spath.exists() else None
        if mpath is None:
            return None, sidecar, None, None
        img = self._image_info(case_id)
        try:
            mask, _, _ = read_label_image(mpath, reference=img.geometry, shape=img.shape)
        except MedicalIOError as e:
            raise DatasetError(f"case {case_id}, rater {rater}: {e}") from None
        return mask, sidecar, mpath, img

    def _read_unlocked(self, case_id: str, rater: str, pend: Path) -> tuple | None:
        """:meth:`_read_live` without a lock (no lock file: read-only projects can be read); None
        when a save may have run meanwhile (a file replaced, or a save staged): read again locked."""
        rdir = self.raters_dir(case_id)
        watched = [rdir / f"{rater}.json", find_file(rdir, rater) or rdir / f"{rater}{DEFAULT_MASK_SUFFIX}"]

        def state() -> list:
            out = []
            for p in watched:
                try:
                    st = os.stat(p)
                    out.append((st.st_ino, st.st_mtime_ns, st.st_size))
                except OSError:
                    out.append(None)
            return out

        before = state()
        try:
            got = self._read_live(case_id, rater)
        except DatasetError:
            if pend.exists() or state() != before:
                return None
            raise
        return None if pend.exists() or state() != before else got

    def load_mask(self, case_id: str, rater: str) -> tuple[np.ndarray | None, dict | None]:
        """``(mask uint8 {0,1} | None, sidecar | None)``; None, None when the rater has not saved.

        A corrupt mask or sidecar, a mask whose shape/geometry differs from the image, or an
        annotation recorded for another image raises :class:`DatasetError` naming the file.
        """
        check_identifier(rater, "rater id")
        self._existing_case_dir(case_id)
        rdir = self.raters_dir(case_id)
        spath = rdir / f"{rater}.json"
        pend = self._pending(case_id, rater)
        if not pend.exists() and find_file(rdir, rater) is None and not spath.exists():
            return None, None  # never saved
        got = None if pend.exists() else self._read_unlocked(case_id, rater, pend)
        if got is None:  # a save in progress or interrupted: read under the lock, finishing it first
            try:
                with self._rater_lock(case_id, rater):
                    self._recover(case_id, rater)
                    got = self._read_live(case_id, rater)
            except OSError as e:
                if e.errno not in _READ_ONLY_ERRNOS:
                    raise
                got = self._read_live(case_id, rater)  # read-only project: nobody can be saving into it
        mask, sidecar, mpath, img = got
        if mask is None:
            return None, sidecar
        values = np.unique(mask)
        if not set(values.tolist()) <= {0, 1}:
            raise DatasetError(f"{mpath}: mask must be binary (0/1), found values {values[:8].tolist()}")
        if sidecar is not None and sidecar.get("image_sha256") not in (None, img.sha256):
            raise ChecksumMismatch(
                f"{spath}: this annotation was made on a different image (image checksum "
                f"{str(sidecar.get('image_sha256'))[:12]}... vs {img.sha256[:12]}... on disk)"
            )
        return mask.astype(np.uint8, copy=False), sidecar

    def save_mask(
        self,
        case_id: str,
        rater: str,
        mask,
        *,
        provenance: dict,
        active_seconds: float = 0.0,
        created: str | None = None,
        image_sha256: str | None = None,
        geometry: Geometry | None = None,
        lock_timeout: float | None = None,
        expected_revision: int | None = None,
    ) -> dict:
        """Save ``rater``'s binary mask of ``case_id``; returns the written sidecar.

        ``image_sha256`` is the checksum of the image the mask was drawn on (from
        :meth:`load_image`); ``geometry`` the mask's geometry. Refused with
        :class:`ChecksumMismatch` / :class:`DatasetError` when they, or the shape, do not match
        the case's image. ``created`` defaults to the existing sidecar's creation time.
        ``lock_timeout`` overrides the store's (e.g. short for autosave): :class:`LockTimeout`.
        ``expected_revision``: the revision this mask was started from (:func:`loaded_revision`);
        a newer one on disk raises :class:`SaveConflict` (mask kept in ``raters/.conflicts``).
        Disk full, read-only folder, permissions...: :class:`SaveError`, previous files intact.
        """
        try:
            return self._save_mask(
                case_id,
                rater,
                mask,
                provenance=provenance,
                active_seconds=active_seconds,
                created=created,
                image_sha256=image_sha256,
                geometry=geometry,
                lock_timeout=lock_timeout,
                expected_revision=expected_revision,
            )
        except (OSError, MedicalIOError) as e:
            if isinstance(e, DatasetError):
                raise
            raise SaveError(f"case {case_id}, rater {rater}: not saved: {e}") from None

    def _save_mask(
        self,
        case_id,
        rater,
        mask,
        *,
        provenance,
        active_seconds,
        created,
        image_sha256,
        geometry,
        lock_timeout,
        expected_revision,
    ) -> dict:
        check_identifier(rater, "rater id")
        if not isinstance(provenance, dict) or "kind" not in provenance:
            raise DatasetError("provenance must be a dict with a 'kind' (e.g. {'kind': 'drawn'})")
        where = f"case {case_id}, rater {rater}"
        self._existing_case_dir(case_id)
        rdir = self.raters_dir(case_id)
        mask = _binary_mask(mask, where)
        img = self._image_info(case_id)
        recorded = self.case_info(case_id).get("image_sha256")
        if recorded and recorded != img.sha256:
            raise ChecksumMismatch(
                f"{where}: the image file {img.path} changed since the case was added (checksum "
                f"{img.sha256[:12]}... vs {recorded[:12]}... in case.json); not saving"
            )
        if image_sha256 is not None and image_sha256 != img.sha256:
            raise ChecksumMismatch(
                f"{where}: the mask was drawn on a different image (checksum {image_sha256[:12]}... "
                f"vs {img.sha256[:12]}... on disk); not saving"
            )
        if tuple(mask.shape) != img.shape:
            raise DatasetError(f"{where}: mask shape {tuple(mask.shape)} does not match the image shape {img.shape}")
        if geometry is not None:
            diff = img.geometry.mismatch(geometry)
            if diff is not None:
                raise DatasetError(f"{where}: mask geometry does not match the image: {diff} (mask vs image)")
        self.add_rater(rater, lock_timeout)
        rdir.mkdir(parents=True, exist_ok=True)
        with self._rater_lock(case_id, rater, lock_timeout):
            self._recover(case_id, rater)
            existing = find_file(rdir, rater)
            suffix = _mask_suffix(existing) if existing is not None else DEFAULT_MASK_SUFFIX
            current = None
            if (rdir / f"{rater}.json").exists():
                try:
                    current = read_json(rdir / f"{rater}.json", "annotation sidecar")
                except DatasetError:
                    current = {}
            revision = loaded_revision(existing, current)
            if expected_revision is not None and int(expected_revision) != revision:
                copy = self._conflict_copy(rdir, rater, mask, img.geometry, provenance, revision)
                raise SaveConflict(
                    f"{where}: not saved: another session saved this annotation meanwhile (revision "
                    f"{revision}, {(current or {}).get('saved', 'time unknown')}; you started from revision "
                    f"{expected_revision}); your version was kept as {copy}",
                    copy,
                    revision,
                )
            if created is None and current:
                created = current.get("created")
            sidecar = annotation_sidecar(
                rater, case_id, img.sha256, dict(provenance), created=created, active_seconds=active_seconds
            )
            sidecar["mask_sha256"] = image_checksum(mask)
            sidecar["mask_file"] = f"{rater}{suffix}"
            sidecar["revision"] = revision + 1
            pend = self._pending(case_id, rater)
            self._remove_pending(pend)
            pend.mkdir(parents=True)
            try:  # the mask is on disk (fsync) before the sidecar commits to it
                write_image(pend / f"mask{suffix}", mask, img.geometry, label=True, fsync=True)
                write_json(pend / "sidecar.json", sidecar)  # commit point
            except (OSError, MedicalIOError) as e:
                self._remove_pending(pend)
                raise SaveError(f"{where}: not saved: {e}") from None
            fsync_dir(pend)
            self._recover(case_id, rater)  # rename both into place
        return sidecar

    def _conflict_copy(self, rdir: Path, rater: str, mask, geometry: Geometry, provenance: dict, revision: int) -> Path:
        """Keep a refused (conflicting) save as ``raters/.conflicts/<rater>-<time>.nii.gz`` + ``.json``
        (once per mask: a retry of the same mask, e.g. by autosave, returns the existing copy)."""
        dest = self.own_dir(rdir, CONFLICT_DIR)
        dest.mkdir(exist_ok=True)
        sha = image_checksum(mask)
        for side in sorted(dest.glob(f"{rater}-*.json")):
            try:
                same = json.loads(side.read_text(encoding="utf-8")).get("mask_sha256") == sha
            except (OSError, ValueError):
                continue
            copy = side.with_name(side.name[: -len(".json")] + DEFAULT_MASK_SUFFIX)
            if same and copy.is_file():
                return copy
        path = _free_name(dest, f"{rater}-{_stamp()}", DEFAULT_MASK_SUFFIX)
        write_image(path, mask, geometry, label=True)
        write_json(
            path.with_name(path.name[: -len(DEFAULT_MASK_SUFFIX)] + ".json"),
            {
                "rater": rater,
                "saved": now_iso(),
                "provenance": dict(provenance),
                "mask_sha256": sha,
                "newer_revision_on_disk": revision,
                "note": "conflict copy: another session saved a newer version of this annotation first",
            },
        )
        return path

    def quarantine(self, case_id: str, rater: str) -> list[Path]:
        """Move ``rater``'s (unreadable) mask and sidecar to ``raters/.broken/<rater>-<time>.*``
        so a fresh start can never overwrite them; returns the new paths."""
        check_identifier(rater, "rater id")
        self._existing_case_dir(case_id)
        rdir = self.raters_dir(case_id)
        with self._rater_lock(case_id, rater):
            self._recover(case_id, rater)
            files = {}
            mpath = self.mask_path(case_id, rater)
            if mpath is not None:
                files[mpath] = _mask_suffix(mpath)
            if (rdir / f"{rater}.json").exists():
                files[rdir / f"{rater}.json"] = ".json"
            if not files:
                return []
            dest = self.own_dir(rdir, BROKEN_DIR)
            dest.mkdir(exist_ok=True)
            stem, n = f"{rater}-{_stamp()}", 1
            while any((dest / f"{stem}{ext}").exists() for ext in files.values()):
                n += 1
                stem = f"{rater}-{_stamp()}-{n}"
            moved = []
            for f, ext in files.items():
                os.replace(f, dest / f"{stem}{ext}")
                moved.append(dest / f"{stem}{ext}")
            fsync_dir(dest)
            fsync_dir(rdir)
        return moved

    def emergency_folders(self, case_id: str) -> list[Path]:
        """Where emergency copies go, in order: the user config folder
        (``<config>/unsaved/<project>/<case>``, independent of a full or read-only project),
        then ``raters/.pending`` in the project."""
        project = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.root.resolve().name) or "project"
        folders = [config_path().parent / "unsaved" / project / check_identifier(case_id, "case id")]
        try:  # never through a symbolic link out of the project; the config folder still works then
            folders.append(self.own_dir(self.raters_dir(case_id), PENDING_DIR))
        except DatasetError:
            pass
        return folders

    def save_emergency_copy(self, case_id: str, rater: str, mask, geometry: Geometry, record: dict) -> Path:
        """Write a mask that could not be saved normally as ``<rater>.unsaved-<time>.nii.gz``
        (+ ``.json`` with ``record``) into the first writable of :meth:`emergency_folders`,
        without locks or checks. Raises :class:`DatasetError` when no copy could be written."""
        check_identifier(rater, "rater id")
        mask = (np.asarray(mask) != 0).astype(np.uint8)
        record = {
            **record,
            "rater": rater,
            "case_id": case_id,
            "saved": now_iso(),
            "mask_sha256": image_checksum(mask),
            "project": str(self.root.resolve()),
            "geometry": geometry.to_dict(),
            "note": "emergency copy: the normal save failed",
        }
        errors = []
        for folder in self.emergency_folders(case_id):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path = _free_name(folder, f"{rater}.unsaved-{_stamp()}", DEFAULT_MASK_SUFFIX)
                write_image(path, mask, geometry, label=True, fsync=True)
                write_json(path.with_name(path.name[: -len(DEFAULT_MASK_SUFFIX)] + ".json"), record)
                return path
            except (OSError, MedicalIOError) as e:
                errors.append(f"{folder}: {e}")
        raise DatasetError("could not write an emergency copy: " + "; ".join(errors))

    # --- progress and navigation ---------------------------------------------------------------
    def progress(self, rater: str) -> tuple[int, int]:
        """``(cases with a mask by rater, number of cases)``."""
        ids = self.case_ids()
        return sum(self.has_mask(c, rater) for c in ids), len(ids)

    def next_case(self, current: str | None, rater: str | None = None, unannotated_only: bool = True) -> str | None:
        """The case after ``current``; with ``unannotated_only`` the next one (wrapping around,
        ``current`` excluded) that ``rater`` has not annotated. None when there is none."""
        ids = self.case_ids()
        if not ids:
            return None
        start = ids.index(current) + 1 if current in ids else 0
        if not unannotated_only:
            return ids[start] if start < len(ids) else None
        if not rater:
            raise DatasetError("a rater id is needed to find the cases you have not annotated")
        for cid in ids[start:] + ids[:start]:
            if cid != current and not self.has_mask(cid, rater):
                return cid
        return None

    def previous_case(
        self, current: str | None, rater: str | None = None, unannotated_only: bool = False
    ) -> str | None:
        """The case before ``current`` (see :meth:`next_case`)."""
        ids = self.case_ids()
        if not ids:
            return None
        start = ids.index(current) if current in ids else len(ids)
        if not unannotated_only:
            return ids[start - 1] if start > 0 else None
        if not rater:
            raise DatasetError("a rater id is needed to find the cases you have not annotated")
        order = ids[:start][::-1] + ids[start:][::-1]
        for cid in order:
            if cid != current and not self.has_mask(cid, rater):
                return cid
        return None

    def check(self) -> list[str]:
        """Load every image and every mask; one message per problem (nothing raised)."""
        problems = []
        for cid in self.case_ids():
            try:
                self._image_info(cid)
                for rater in self.annotated_raters(cid, drafts=True):
                    self.load_mask(cid, rater)
            except DatasetError as e:
                problems.append(str(e))
        return problems


# --- rater identity ---------------------------------------------------------------------------------
def config_path() -> Path:
    """``$NAPARI_MULTIRATER_CONFIG`` (a folder, or a ``.json`` file), else
    ``$XDG_CONFIG_HOME/napari-multirater/rater.json`` (``~/.config`` by default)."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        p = Path(env).expanduser()
        return p if p.suffix == ".json" else p / "rater.json"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "napari-multirater" / "rater.json"


@dataclass
class RaterIdentity:
    """Who is annotating, remembered across sessions (with a few collection preferences)."""

    rater_id: str = ""
    display_name: str = ""
    last_project: str = ""
    autosave_seconds: float = 30.0

    @classmethod
    def load(cls, path=None) -> RaterIdentity:
        """The stored identity; defaults when the file is missing or unreadable (never raises)."""
        p = Path(path) if path is not None else config_path()
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        ident = cls()
        for k, v in kwargs.items():
            default = getattr(ident, k)
            if isinstance(default, bool):
                ok = isinstance(v, bool)
            elif isinstance(default, float):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            else:
                ok = isinstance(v, str)
            if ok:
                setattr(ident, k, float(v) if isinstance(default, float) else v)
        if ident.rater_id:
            try:
                check_identifier(ident.rater_id, "rater id")
            except DatasetError:
                ident.rater_id = ""
        return ident

    def save(self, path=None) -> Path:
        """Write atomically (temp file + rename); the rater id is validated first."""
        if self.rater_id:
            check_identifier(self.rater_id, "rater id")
        p = Path(path) if path is not None else config_path()
        write_json(p, {**asdict(self), "updated": now_iso()})
        return p
