"""Untrusted projects and image headers (issue 27, path containment): a path or name read from a
file never leaves its folder; records naming outside paths are quarantined with a warning, never
followed; reading a project needs no lock file. Each test failed on 390eda9. Tiny arrays, in-process."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_multirater import cli
from napari_multirater.annotation import AnnotationStore
from napari_multirater.annotation.lock import FileLock, remove_idle_lock_files
from napari_multirater.annotation.queue import build_queue
from napari_multirater.annotation.repeats import load_repeat, save_repeat
from napari_multirater.datasets.case import DatasetError
from napari_multirater.datasets.case_folder import CaseFolderDataset, check_identifier, list_case_ids
from napari_multirater.io.contained import UntrustedPathWarning
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import MedicalIOError, read_image, write_image

GEO = Geometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
IMG = np.arange(64, dtype=np.int16).reshape(8, 8)


def _mask(k: int) -> np.ndarray:
    m = np.zeros((8, 8), np.uint8)
    m[1 : 2 + k, 1:4] = 1
    return m


def make_project(root: Path, cases=("c1", "c2")) -> AnnotationStore:
    store = AnnotationStore.create_project(root, "p")
    for cid in cases:
        store.add_case(IMG, GEO, cid)
    return store


@pytest.fixture
def project(tmp_path):
    """``(store, outside folder)``: alice annotated c1; a victim file outside the project."""
    store = make_project(tmp_path / "proj")
    store.save_mask("c1", "alice", _mask(1), provenance={"kind": "drawn"})
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim.txt").write_text("precious")
    return store, out


def _stage(store, case_id: str, rater: str, record) -> Path:
    """A staged save left in ``raters/.pending/<rater>`` (as a crashed or crafted save would)."""
    pend = store.case_dir(case_id) / "raters" / ".pending" / rater
    pend.mkdir(parents=True)
    (pend / "mask.nii.gz").write_bytes(b"attacker bytes")
    (pend / "sidecar.json").write_text(json.dumps(record))
    return pend


# --- staged-save records (raters/.pending) ------------------------------------------------------
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "other-rater"])
def test_staged_record_naming_a_file_outside_is_quarantined_not_followed(project, kind):
    store, out = project
    victim = out / "victim.txt"
    target = {"absolute": str(victim), "dotdot": "../../../../outside/victim.txt", "other-rater": "bob.nii.gz"}[kind]
    pend = _stage(store, "c1", "alice", {"mask_file": target})
    with pytest.warns(UntrustedPathWarning, match="staged save record refused"):
        mask, side = store.load_mask("c1", "alice")
    assert victim.read_text() == "precious"  # main: os.replace put the attacker's bytes there
    assert np.array_equal(mask, _mask(1)) and side["revision"] == 1  # the last good save
    assert not pend.exists() and not (store.case_dir("c1") / "raters" / "bob.nii.gz").exists()
    kept = list((store.case_dir("c1") / "raters" / ".quarantine").iterdir())
    assert len(kept) == 1 and json.loads((kept[0] / "sidecar.json").read_text())["mask_file"] == target


def test_pending_symlink_out_of_the_project_is_never_deleted_through(project):
    store, out = project
    (out / "alice").mkdir()
    (out / "alice" / "thesis.txt").write_text("years of work")
    rdir = store.case_dir("c2") / "raters"
    os.symlink(out, rdir / ".pending")
    with pytest.warns(UntrustedPathWarning, match=r"\.pending: a symbolic link"):
        store.save_mask("c2", "alice", _mask(2), provenance={"kind": "drawn"})
    assert (out / "alice" / "thesis.txt").read_text() == "years of work"  # main: rmtree'd
    assert np.array_equal(store.load_mask("c2", "alice")[0], _mask(2))
    assert (rdir / ".quarantine").is_dir() and not (rdir / ".pending").is_symlink()


def test_pending_rater_folder_symlink_out_is_never_moved_from(project):
    store, out = project
    write_image(out / "mask.nii.gz", _mask(4), GEO, label=True)  # looks like a committed staged save
    (out / "sidecar.json").write_text(json.dumps({"mask_file": "alice.nii.gz"}))
    pdir = store.case_dir("c1") / "raters" / ".pending"
    pdir.mkdir(exist_ok=True)
    os.symlink(out, pdir / "alice")
    with pytest.warns(UntrustedPathWarning):
        mask, _ = store.load_mask("c1", "alice")
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "sidecar.json", "victim.txt"]  # main: moved in
    assert np.array_equal(mask, _mask(1))


@pytest.mark.parametrize("sub", [".broken", ".conflicts"])
def test_store_folders_that_are_symlinks_out_are_quarantined_before_writing(project, sub):
    store, out = project
    os.symlink(out, store.case_dir("c1") / "raters" / sub)
    with pytest.warns(UntrustedPathWarning):
        if sub == ".broken":
            store.quarantine("c1", "alice")
        else:
            with pytest.raises(DatasetError):
                store.save_mask("c1", "alice", _mask(3), provenance={"kind": "drawn"}, expected_revision=0)
    assert sorted(p.name for p in out.iterdir()) == ["victim.txt"]  # main: files moved/written out there


def test_case_or_raters_folder_leading_outside_is_refused(project):
    store, out = project
    write_image(out / "image.nii.gz", IMG, GEO)  # a case folder elsewhere on the disk
    (out / "raters").mkdir()
    os.symlink(out, store.root / "cases" / "c3")
    with pytest.raises(DatasetError, match="leads outside"):
        store.save_mask("c3", "alice", _mask(1), provenance={"kind": "drawn"})
    with pytest.raises(DatasetError, match="leads outside"):
        store.load_image("c3")
    assert not any((out / "raters").iterdir())  # main: saved alice's mask out there
    (store.case_dir("c2") / "raters").rename(store.case_dir("c2") / "raters-old")
    os.symlink(out / "raters", store.case_dir("c2") / "raters")
    with pytest.raises(DatasetError, match="leads outside"):
        store.save_mask("c2", "alice", _mask(1), provenance={"kind": "drawn"})
    assert not any((out / "raters").iterdir())


def test_idle_lock_clean_up_never_deletes_outside_the_project(project):
    store, out = project
    (out / "raters").mkdir()
    (out / "raters" / ".x.lock").write_text("")
    os.symlink(out, store.root / "cases" / "c9")
    remove_idle_lock_files(store.root)
    assert (out / "raters" / ".x.lock").exists()


def test_dataset_never_reads_a_mask_through_a_symlink_out(project):
    store, out = project
    write_image(out / "secret.nii.gz", _mask(4), GEO, label=True)
    os.symlink(out / "secret.nii.gz", store.case_dir("c2") / "raters" / "alice.nii.gz")
    case = CaseFolderDataset(store.root, strict=False).load_case("c2")
    assert not case.valid[0] and "leads outside" in " ".join(case.meta["problems"])


# --- repeats ----------------------------------------------------------------------------------------
def test_repeat_sidecar_naming_an_outside_file_is_never_read_or_deleted(project):
    store, out = project
    victim = out / "victim.txt"
    rep = store.case_dir("c1") / "raters" / "repeats"
    rep.mkdir()
    (rep / "alice.json").write_text(json.dumps({"mask_file": str(victim), "revision": 1}))
    with pytest.warns(UntrustedPathWarning, match="alice.json"):
        assert load_repeat(store, "c1", "alice") == (None, None)
    (rep / "alice.json").write_text(json.dumps({"mask_file": str(victim), "revision": 1}))
    with pytest.warns(UntrustedPathWarning):
        side = save_repeat(store, "c1", "alice", _mask(2), provenance={"kind": "drawn"})
    assert victim.read_text() == "precious"  # main: save_repeat unlinked it
    assert side["mask_file"] == "alice.r2.nii.gz"
    assert np.array_equal(load_repeat(store, "c1", "alice")[0], _mask(2))


# --- identifiers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["alice\n", "c1\n", "a/../b", "..", "a b", "-x", ""])
def test_identifiers_are_whole_strings_of_safe_characters(value):
    with pytest.raises(DatasetError):
        check_identifier(value, "rater id")


def test_names_read_from_files_go_through_the_identifier_check(tmp_path):
    store = make_project(tmp_path / "proj", cases=("c1",))
    (store.root / "cases" / "c2\n").mkdir()
    assert list_case_ids(store.root) == ["c1"]  # main: listed "c2\n" as a case
    m = json.loads((store.root / "dataset.json").read_text())
    m["raters"] = ["alice\n"]
    (store.root / "dataset.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="rater id"):
        AnnotationStore(store.root)


# --- image headers ---------------------------------------------------------------------------------
_MHD = "ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\nElementSpacing = 1 1\n"
_NRRD = "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\n"


def _headers(d: Path, secret: Path) -> dict[str, str]:
    return {
        "abs.mhd": _MHD + f"ElementDataFile = {secret}\n",
        "dotdot.mhd": _MHD + "ElementDataFile = ../secret.raw\n",
        "attached.mha": _MHD + f"ElementDataFile = {secret}\n",
        "list.mhd": _MHD.replace("NDims = 2", "NDims = 3").replace("4 4\n", "4 4 1\n", 1)
        + f"ElementDataFile = LIST\n{secret}\n",
        "pattern.mhd": _MHD + f"ElementDataFile = {secret.parent}/secret%d.raw 1 1 1\n",
        "abs.nhdr": _NRRD + f"data file: {secret}\n",
        "dotdot.nrrd": _NRRD + "datafile: ../secret.raw\n",
        "link.mhd": _MHD + "ElementDataFile = link.raw\n",
    }


def test_header_data_file_outside_its_folder_is_refused_by_every_reader(tmp_path):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"SECRETSECRETSECR")
    (tmp_path / "secret1.raw").write_bytes(b"SECRETSECRETSECR")
    d = tmp_path / "imgs"
    d.mkdir()
    os.symlink(secret, d / "link.raw")
    for name, text in _headers(d, secret).items():
        (d / name).write_text(text)
        with pytest.raises(MedicalIOError, match="data file"):
            read_image(d / name)  # main: returned the secret's bytes as voxels
    (d / "ok.raw").write_bytes(bytes(range(16)))
    (d / "ok.mhd").write_text(_MHD + "ElementDataFile = ok.raw\n")
    assert read_image(d / "ok.mhd")[0].ravel().tolist() == list(range(16))


def test_import_folder_refuses_a_header_reading_outside(tmp_path, capsys):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"S" * 16)
    case = tmp_path / "src" / "case1"
    case.mkdir(parents=True)
    (case / "image.mhd").write_text(_MHD + f"ElementDataFile = {secret}\n")
    write_image(case / "alice.nii.gz", np.zeros((4, 4), np.uint8), GEO, label=True)
    code = cli.main(["import", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "ds")])
    assert code == 2 and "data file" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


# --- reading needs no lock file ----------------------------------------------------------------
def test_reading_a_project_creates_no_lock_file_and_works_read_only(project, monkeypatch, capsys):
    store, _ = project
    store.save_mask("c2", "alice", _mask(2), provenance={"kind": "drawn"})
    store.save_mask("c2", "bob", _mask(3), provenance={"kind": "drawn"})
    remove_idle_lock_files(store.root)

    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system", str(self.path))

    monkeypatch.setattr(FileLock, "acquire", read_only)  # a read-only project: no lock file can be made
    assert np.array_equal(store.load_mask("c1", "alice")[0], _mask(1))
    assert [e.case_id for e in build_queue(store, "carol")] == ["c2", "c1"]
    assert cli.main(["queue", "--data", str(store.root), "--rater", "carol"]) == 0  # main: exit 2, EROFS
    assert "c2" in capsys.readouterr().out
    assert not list(store.root.rglob("*.lock"))


def test_import_folder_never_reads_a_file_linked_from_outside(tmp_path):
    from napari_multirater.datasets.import_layouts import scan_folder

    case = tmp_path / "src" / "case1"
    case.mkdir(parents=True)
    write_image(case / "image.nii.gz", IMG, GEO)
    write_image(case / "alice.nii.gz", _mask(1), GEO, label=True)
    write_image(tmp_path / "elsewhere.nii.gz", _mask(2), GEO, label=True)
    os.symlink(tmp_path / "elsewhere.nii.gz", case / "bob.nii.gz")
    scan = scan_folder(tmp_path / "src")
    assert scan.raters == ["alice"]  # main: ["alice", "bob"], bob's mask read from outside
    assert any("bob.nii.gz: leads outside" in p for p in scan.problems)


def test_disagreement_cache_is_never_written_through_a_symlink_out(project, monkeypatch):
    import napari_multirater.annotation.queue as q
    from napari_multirater.progress import run_to_completion

    store, out = project
    os.symlink(out, store.root / ".multirater")
    monkeypatch.setattr(q, "model_key", lambda engine: "fake")
    monkeypatch.setattr(q, "image_disagreement", lambda *a, **k: 0.5)
    assert run_to_completion(q.iter_model_disagreement(None, store, ["c1"])) == {"c1": 0.5}
    assert sorted(p.name for p in out.iterdir()) == ["victim.txt"]  # main: wrote the cache out there


def test_cli_names_a_quarantined_record_in_one_warning_line(project, capsys):
    store, out = project
    _stage(store, "c1", "alice", {"mask_file": str(out / "victim.txt")})
    assert cli.main(["queue", "--data", str(store.root), "--rater", "bob"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and ".pending/alice" in err[0] and "moved aside" in err[0]
    assert (out / "victim.txt").read_text() == "precious"


@pytest.mark.parametrize("fd_ops", [True, False], ids=["dir_fd", "lstat-fallback"])
def test_remove_tree_replace_and_quarantine_never_follow_links(tmp_path, monkeypatch, fd_ops):
    from napari_multirater.io import contained
    from napari_multirater.io.contained import UnsafePath, quarantine, remove_tree, replace

    monkeypatch.setattr(contained, "_FD_OPS", fd_ops and contained._FD_OPS)  # False: as without dir_fd (Windows)
    monkeypatch.setattr(contained, "_RMTREE_FD", fd_ops and contained._RMTREE_FD)

    root, out = tmp_path / "root", tmp_path / "out"
    (root / "d").mkdir(parents=True)
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "f").write_text("keep")
    os.symlink(out, root / "link")
    with pytest.raises(UnsafePath):
        remove_tree(root, root / "link" / "sub")  # a link on the way
    with pytest.raises(UnsafePath):
        remove_tree(root, root / "link")  # the entry itself
    with pytest.raises(UnsafePath):
        replace(root, root / "link", root / "d" / "x")
    with pytest.raises(UnsafePath):
        replace(root, root / "link" / "sub" / "f", root / "d" / "f")
    assert remove_tree(root, root / "missing") is False
    with pytest.warns(UntrustedPathWarning, match="link"):
        moved = quarantine(root, root / "link", root / ".quarantine", "test")
    assert moved.is_symlink() and (out / "sub" / "f").read_text() == "keep"
    (root / "d" / "e").mkdir()
    replace(root, root / "d" / "e", root / "e2")
    assert remove_tree(root, root / "e2") and not (root / "e2").exists()


def test_dicom_folder_never_reads_a_slice_linked_from_outside(tmp_path, shared_data):
    """A crafted series folder whose file is a symbolic link to another patient's slice: that
    file is left out (with a warning naming it), never read as a slice of this series."""
    import shutil

    from napari_multirater.io.medical import read_image

    src = sorted((shared_data / "lidc-ct" / "LIDC-IDRI-0006" / "series").glob("*.dcm"))[:4]
    folder, elsewhere = tmp_path / "series", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    for f in src[:3]:
        shutil.copy(f, folder / f.name)
    shutil.copy(src[3], elsewhere / src[3].name)
    (folder / src[3].name).symlink_to(elsewhere / src[3].name)
    image, _, info = read_image(folder)
    assert image.shape[0] == 3 and src[3].name not in info["file_names"]
    assert "leading outside" in info["warning"] and src[3].name in info["warning"]
