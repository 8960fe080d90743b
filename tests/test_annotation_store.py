"""Annotation store, session and rater identity (pure: no Qt, no napari).

Includes crash tests (a saving process SIGKILLed at random times and at every step of a save)
and concurrency tests (several processes saving into one project at once), with both the flock
locks and the portable O_EXCL lock files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_multirater.annotation import (
    AnnotationSession,
    AnnotationStore,
    ChecksumMismatch,
    FileLock,
    LockTimeout,
    RaterIdentity,
    case_id_from_path,
    config_path,
)
from napari_multirater.datasets.case import DatasetError
from napari_multirater.datasets.case_folder import CaseFolderDataset, image_checksum
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import read_label_image, write_image

ROOT = Path(__file__).resolve().parents[1]
GEO_2D = Geometry((0.7, 0.8), (-12.5, 30.0), (1.0, 0.0, 0.0, 1.0))
GEO_3D = Geometry((0.7, 0.7, 1.5), (10.0, -5.0, 2.0), (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))

PATTERN_SRC = """
def pattern(i, key, shape):
    import zlib
    import numpy as np
    rng = np.random.default_rng([int(i), zlib.crc32(key.encode())])
    return (rng.random(shape) < 0.3).astype(np.uint8)
"""
_ns: dict = {}
exec(PATTERN_SRC, _ns)
pattern = _ns["pattern"]

CHILD_SRC = PATTERN_SRC + textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from napari_multirater.annotation.store import AnnotationStore

    mode, root = sys.argv[1], sys.argv[2]
    store = AnnotationStore(root, lock_timeout=120)

    def save(case, rater, i):
        shape = store._image_info(case).shape
        mask = pattern(i, rater + "/" + case, shape)
        store.save_mask(case, rater, mask, provenance={"kind": "drawn", "iteration": i},
                        active_seconds=float(i), image_sha256=store.image_checksum(case))
        return mask

    if mode == "loop":  # rater start stop case...
        rater, start, stop, cases = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
        for i in range(start, stop):
            for case in cases:
                mask = save(case, rater, i)
                back, side = store.load_mask(case, rater)
                if back is None or not np.array_equal(back, mask) or side["provenance"]["iteration"] != i:
                    print("MISMATCH", case, rater, i, flush=True)
                    sys.exit(3)
            print(i, flush=True)
    elif mode == "many_raters":  # prefix n case
        prefix, n, case = sys.argv[3], int(sys.argv[4]), sys.argv[5]
        for i in range(n):
            save(case, f"{prefix}_{i}", 1)
        print("done", flush=True)
    elif mode == "crash_at":  # case rater k: kill ourselves at the k-th os.replace of save 2
        case, rater, k = sys.argv[3], sys.argv[4], int(sys.argv[5])
        save(case, rater, 1)
        real, calls = os.replace, [0]
        def replace(a, b):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(a, b)
        os.replace = replace
        save(case, rater, 2)
        print("completed", calls[0], flush=True)
""")


# --- helpers ------------------------------------------------------------------------------------
def _image(shape, seed=0):
    return np.random.default_rng(seed).normal(0, 100, shape).astype(np.int16)


def make_project(tmp_path, n_cases=3, shape=(40, 48), geometry=GEO_2D, name="proj") -> AnnotationStore:
    store = AnnotationStore.create_project(tmp_path / name, name)
    for k in range(n_cases):
        store.add_case(_image(shape, k), geometry, f"case{k}")
    return store


def child_env(lock_mode: str = "") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["NAPARI_MULTIRATER_LOCK_MODE"] = lock_mode
    return env


def spawn(tmp_path, *args, lock_mode: str = "") -> subprocess.Popen:
    script = tmp_path / "child.py"
    if not script.exists():
        script.write_text(CHILD_SRC)
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(lock_mode),
    )


def visible_rater_files(store: AnnotationStore, case: str) -> list[str]:
    return sorted(p.name for p in (store.case_dir(case) / "raters").iterdir() if not p.name.startswith("."))


def assert_consistent(store: AnnotationStore, case: str, rater: str, iteration: int) -> None:
    """The live mask is the one of ``iteration`` and the sidecar describes exactly that mask."""
    mask, side = store.load_mask(case, rater)
    assert side["provenance"]["iteration"] == iteration
    assert np.array_equal(mask, pattern(iteration, f"{rater}/{case}", mask.shape))
    assert side["mask_sha256"] == image_checksum(mask)
    assert side["image_sha256"] == store.image_checksum(case)


# --- save / load ----------------------------------------------------------------------------------
@pytest.mark.parametrize("geometry,shape", [(GEO_2D, (40, 48)), (GEO_3D, (6, 20, 24))], ids=["2d", "3d"])
def test_save_and_reload_identical_mask_and_geometry(tmp_path, geometry, shape):
    store = make_project(tmp_path, 1, shape, geometry)
    case = "case0"
    image, geo, info = store.load_image(case)
    assert geo.matches(geometry) and image.shape == shape
    mask = pattern(1, "alice/case0", shape)
    side = store.save_mask(
        case,
        "alice",
        mask,
        provenance={"kind": "drawn"},
        active_seconds=12.34,
        image_sha256=info["image_sha256"],
        geometry=geo,
    )
    assert side["rater"] == "alice" and side["case_id"] == case and side["active_seconds"] == 12.3
    assert side["image_sha256"] == image_checksum(image) and side["provenance"] == {"kind": "drawn"}

    back, side2 = AnnotationStore(store.root).load_mask(case, "alice")
    assert back.dtype == np.uint8 and np.array_equal(back, mask)
    assert side2 == side
    on_disk, disk_geo, _ = read_label_image(store.case_dir(case) / "raters" / "alice.nii.gz")
    assert disk_geo.matches(geometry) and np.array_equal(on_disk, mask)
    # the project is a training dataset: the rater is listed and the case loads
    ds = CaseFolderDataset(store.root)
    assert ds.rater_names == ["alice"]
    loaded = ds.load_case(case)
    assert loaded.valid.tolist() == [True] and np.array_equal(loaded.masks[0], mask)
    assert loaded.geometry.matches(geometry)
    assert visible_rater_files(store, case) == ["alice.json", "alice.nii.gz"]


def test_created_kept_saved_updated_and_bool_masks(tmp_path):
    store = make_project(tmp_path, 1)
    m = np.zeros((40, 48), bool)
    m[3:9, 4:10] = True
    s1 = store.save_mask("case0", "bob", m, provenance={"kind": "drawn"}, created="2020-01-01T00:00:00+00:00")
    s2 = store.save_mask("case0", "bob", m, provenance={"kind": "drawn"}, active_seconds=5)
    assert s1["created"] == s2["created"] == "2020-01-01T00:00:00+00:00"
    assert store.load_mask("case0", "bob")[0].sum() == 36
    assert store.load_mask("case0", "carol") == (None, None)


def test_checksum_shape_geometry_and_value_checks_refuse_to_save(tmp_path):
    store = make_project(tmp_path, 2)
    _, geo, info = store.load_image("case0")
    mask = np.zeros((40, 48), np.uint8)
    sha1 = store.image_checksum("case1")
    with pytest.raises(ChecksumMismatch, match="different image"):
        store.save_mask("case0", "alice", mask, provenance={"kind": "drawn"}, image_sha256=sha1)
    with pytest.raises(DatasetError, match="shape"):
        store.save_mask("case0", "alice", np.zeros((40, 47), np.uint8), provenance={"kind": "drawn"})
    other = Geometry((0.7, 0.9), GEO_2D.origin, GEO_2D.direction)
    with pytest.raises(DatasetError, match="geometry does not match.*spacing"):
        store.save_mask("case0", "alice", mask, provenance={"kind": "drawn"}, geometry=other)
    with pytest.raises(DatasetError, match="binary"):
        store.save_mask("case0", "alice", mask + 2, provenance={"kind": "drawn"})
    with pytest.raises(DatasetError, match="provenance"):
        store.save_mask("case0", "alice", mask, provenance={})
    with pytest.raises(DatasetError, match="invalid rater id"):
        store.save_mask("case0", "../evil", mask, provenance={"kind": "drawn"})
    assert visible_rater_files(store, "case0") == [] and store.raters() == []
    # the image file is replaced behind the store's back: its checksum no longer matches case.json
    time.sleep(0.01)
    write_image(store.image_path("case0"), _image((40, 48), 99), geo)
    with pytest.raises(ChecksumMismatch, match="changed since the case was added"):
        store.save_mask("case0", "alice", mask, provenance={"kind": "drawn"}, image_sha256=info["image_sha256"])
    assert visible_rater_files(store, "case0") == []


def test_import_images_case_ids_and_errors(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_image(src / "CT scan 01.nii.gz", _image((10, 12)), GEO_2D)
    write_image(src / "ct2.nrrd", _image((5, 10, 12)), GEO_3D)
    (src / "broken.nii.gz").write_bytes(b"not an image")
    store = AnnotationStore.create_project(tmp_path / "p", "p")
    errors: list[str] = []
    ids = store.import_images(sorted(src.iterdir()), errors=errors)
    assert ids == ["CT_scan_01", "ct2"]
    assert len(errors) == 1 and "broken.nii.gz" in errors[0]
    again = store.import_images([src / "ct2.nrrd"])
    assert again == ["ct2_2"]
    with pytest.raises(DatasetError, match="broken.nii.gz"):
        store.import_images([src / "broken.nii.gz"])
    assert store.case_ids() == ["CT_scan_01", "ct2", "ct2_2"]
    info = store.case_info("ct2")
    assert info["source"].endswith("ct2.nrrd") and info["image_sha256"] == store.image_checksum("ct2")
    assert store.load_image("ct2")[1].matches(GEO_3D)
    assert case_id_from_path("/x/a b(1).nii") == "a_b_1"
    with pytest.raises(DatasetError, match="already exists"):
        AnnotationStore.create_project(tmp_path / "p", "again")


def test_progress_and_navigation(tmp_path):
    store = make_project(tmp_path, 4)
    ids = store.case_ids()
    assert store.progress("alice") == (0, 4)
    for cid in (ids[0], ids[2]):
        store.save_mask(cid, "alice", np.zeros((40, 48), np.uint8), provenance={"kind": "drawn"})
    assert store.progress("alice") == (2, 4) and store.progress("bob") == (0, 4)
    assert store.next_case(None, "alice") == ids[1]
    assert store.next_case(ids[1], "alice") == ids[3]
    assert store.next_case(ids[3], "alice") == ids[1]  # wraps around
    assert store.next_case(ids[2], "alice", unannotated_only=False) == ids[3]
    assert store.next_case(ids[3], "alice", unannotated_only=False) is None
    assert store.previous_case(ids[1]) == ids[0] and store.previous_case(ids[0]) is None
    assert store.previous_case(ids[3], "alice", unannotated_only=True) == ids[1]
    assert store.annotated_raters(ids[0]) == ["alice"]
    for cid in (ids[1], ids[3]):
        store.save_mask(cid, "alice", np.zeros((40, 48), np.uint8), provenance={"kind": "drawn"})
    assert store.next_case(ids[0], "alice") is None


# --- corrupt files ----------------------------------------------------------------------------------
def test_corrupt_sidecar_or_mask_fails_only_that_case(tmp_path):
    store = make_project(tmp_path, 4)
    for cid in store.case_ids():
        store.save_mask(cid, "alice", pattern(1, cid, (40, 48)), provenance={"kind": "drawn"})
    rdir = lambda c: store.case_dir(c) / "raters"  # noqa: E731
    (rdir("case0") / "alice.json").write_text("{not json")
    mask_file = rdir("case1") / "alice.nii.gz"
    mask_file.write_bytes(mask_file.read_bytes()[:60])
    write_image(rdir("case2") / "alice.nii.gz", np.full((40, 48), 2, np.uint8), GEO_2D, label=True)

    with pytest.raises(DatasetError, match=r"case0.*alice\.json.*not valid JSON"):
        store.load_mask("case0", "alice")
    with pytest.raises(DatasetError, match=r"alice\.nii\.gz"):
        store.load_mask("case1", "alice")
    with pytest.raises(DatasetError, match="binary"):
        store.load_mask("case2", "alice")
    good, side = store.load_mask("case3", "alice")
    assert np.array_equal(good, pattern(1, "case3", (40, 48))) and side["rater"] == "alice"
    problems = store.check()
    assert len(problems) == 3 and not any("case3" in p for p in problems)
    assert store.progress("alice") == (4, 4)
    # saving again repairs a broken annotation
    store.save_mask("case0", "alice", pattern(2, "case0", (40, 48)), provenance={"kind": "drawn"})
    assert np.array_equal(store.load_mask("case0", "alice")[0], pattern(2, "case0", (40, 48)))


def test_annotation_recorded_for_another_image_is_refused_on_load(tmp_path):
    store = make_project(tmp_path, 1)
    store.save_mask("case0", "alice", np.zeros((40, 48), np.uint8), provenance={"kind": "drawn"})
    side_path = store.case_dir("case0") / "raters" / "alice.json"
    side = json.loads(side_path.read_text())
    side["image_sha256"] = "0" * 64
    side_path.write_text(json.dumps(side))
    with pytest.raises(ChecksumMismatch, match="different image"):
        store.load_mask("case0", "alice")


def test_quarantine_moves_a_broken_mask_and_sidecar_aside(tmp_path):
    store = make_project(tmp_path, 1)
    store.save_mask("case0", "alice", pattern(1, "c", (40, 48)), provenance={"kind": "drawn"})
    rdir = store.case_dir("case0") / "raters"
    (rdir / "alice.nii.gz").write_bytes(b"broken")
    moved = store.quarantine("case0", "alice")
    assert sorted(p.suffix for p in moved) == [".gz", ".json"]
    assert all(p.parent == rdir / ".broken" and p.name.startswith("alice-") for p in moved)
    assert next(p for p in moved if p.name.endswith(".nii.gz")).read_bytes() == b"broken"
    assert store.load_mask("case0", "alice") == (None, None) and store.annotated_raters("case0") == []
    store.save_mask("case0", "alice", pattern(2, "c", (40, 48)), provenance={"kind": "drawn"})
    (rdir / "alice.json").write_text("{")
    again = store.quarantine("case0", "alice")  # same second: never overwrites the first copies
    assert len(set(moved + again)) == 4 and all(p.exists() for p in moved + again)


def test_emergency_copy_keeps_a_mask_that_could_not_be_saved(tmp_path):
    store = make_project(tmp_path, 1)
    mask = pattern(3, "e", (40, 48))
    path = store.save_emergency_copy("case0", "alice", mask, GEO_2D, {"provenance": {"kind": "drawn"}})
    assert path.parent == config_path().parent / "unsaved" / "proj" / "case0"  # outside the project
    assert path.name.startswith("alice.unsaved-") and path.name.endswith(".nii.gz")
    np.testing.assert_array_equal(read_label_image(path)[0], mask)
    record = json.loads(path.with_name(path.name[: -len(".nii.gz")] + ".json").read_text())
    assert record["mask_sha256"] == image_checksum(mask) and record["provenance"] == {"kind": "drawn"}
    assert store.load_mask("case0", "alice") == (None, None)  # not mistaken for a staged save
    second = store.save_emergency_copy("case0", "alice", mask, GEO_2D, {})
    assert second != path and path.exists()


# --- durability and lock timeouts -------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced files")
def test_staged_mask_is_on_disk_before_the_sidecar_commits(tmp_path, monkeypatch):
    store = make_project(tmp_path, 1)
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.save_mask("case0", "alice", pattern(1, "f", (40, 48)), provenance={"kind": "drawn"})
    pend = str(store.case_dir("case0") / "raters" / ".pending" / "alice")
    side = next(i for i, p in enumerate(synced) if Path(p).name.startswith(".sidecar.json."))
    mask = [i for i, p in enumerate(synced) if Path(p).name == "mask.nii.gz"]
    assert mask and mask[0] < side  # the mask's data
    assert pend in synced[:side]  # and its folder entry, before the commit point
    assert str(store.case_dir("case0") / "raters") in synced[side:]  # the renames into place


def test_short_lock_timeout_for_autosave(tmp_path):
    store = make_project(tmp_path, 1)
    store.save_mask("case0", "alice", pattern(1, "t", (40, 48)), provenance={"kind": "drawn"})
    with store._rater_lock("case0", "alice"):
        with pytest.raises(LockTimeout, match=r"more than 0\.05 s"):
            store.save_mask(
                "case0", "alice", pattern(2, "t", (40, 48)), provenance={"kind": "drawn"}, lock_timeout=0.05
            )
    with store._project_lock():  # a known rater needs no project lock
        store.save_mask("case0", "alice", pattern(3, "t", (40, 48)), provenance={"kind": "drawn"}, lock_timeout=0.05)
    np.testing.assert_array_equal(store.load_mask("case0", "alice")[0], pattern(3, "t", (40, 48)))


# --- session --------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_session_active_time_idle_cap_and_autosave_policy():
    clock = FakeClock()
    s = AnnotationSession("alice", autosave_interval=30, idle_cap=60, clock=clock)
    s.start_case("c1", image_sha256="abc", sidecar={"active_seconds": 100.0, "created": "T0"})
    assert not s.dirty and not s.autosave_due() and s.total_active_seconds == 100.0
    clock.t += 5
    s.record_edit()
    assert s.dirty and s.active_seconds == 5
    clock.t += 10
    s.record_edit()
    assert s.active_seconds == 15 and not s.autosave_due()  # 15 s since case start
    clock.t += 600  # a long break counts as at most 60 s
    assert s.autosave_due()
    s.record_edit()
    assert s.active_seconds == 75
    kw = s.save_kwargs()
    assert kw["active_seconds"] == 175 and kw["created"] == "T0" and kw["image_sha256"] == "abc"
    s.mark_saved({"created": "T0", "saved": "T1", "active_seconds": 175.0})
    assert not s.dirty and not s.autosave_due() and s.total_active_seconds == 175
    clock.t += 29
    s.record_edit()
    assert not s.autosave_due() and s.autosave_due(now=clock.t + 1)
    s.autosave_interval = 0  # autosave off
    assert not s.autosave_due(now=clock.t + 10_000)


def test_session_checks_for_silent_edits_every_interval():
    clock = FakeClock()
    s = AnnotationSession("alice", autosave_interval=30, clock=clock)
    s.start_case("c1")
    clock.t += 29
    assert not s.check_due() and not s.autosave_due()
    clock.t += 1
    assert s.check_due() and not s.autosave_due()  # no edit event (e.g. undo), still checked
    s.dirty = True
    s.mark_unchanged()
    assert not s.dirty and not s.check_due()
    s.autosave_interval = 0
    clock.t += 100
    assert not s.check_due()


def test_session_provenance_prefilled_then_edited():
    s = AnnotationSession("alice", clock=FakeClock())
    s.start_case("c1")
    assert s.provenance == {"kind": "drawn"}
    s.mark_prefilled({"model": "dpersona", "output": "persona tight", "layer": "mr persona: tight"})
    assert s.dirty and s.provenance["kind"] == "prefilled" and s.provenance["edited"] is False
    assert s.provenance["model"] == "dpersona" and s.provenance["output"] == "persona tight"
    s.record_edit()
    assert s.provenance["edited"] is True
    s2 = AnnotationSession("alice", clock=FakeClock())
    s2.start_case("c1", sidecar={"provenance": {"kind": "prefilled", "model": "m", "edited": False}})
    s2.record_edit()
    assert s2.provenance == {"kind": "prefilled", "model": "m", "edited": True}


# --- rater identity -----------------------------------------------------------------------------------
def test_rater_identity_persisted_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", str(tmp_path / "cfg"))
    assert config_path() == tmp_path / "cfg" / "rater.json"
    assert RaterIdentity.load().rater_id == ""
    RaterIdentity(rater_id="dr_smith", last_project="/data/p", autosave_seconds=15).save()
    back = RaterIdentity.load()
    assert (back.rater_id, back.last_project, back.autosave_seconds) == ("dr_smith", "/data/p", 15.0)
    assert sorted(os.listdir(tmp_path / "cfg")) == ["rater.json"]  # no temp files left
    with pytest.raises(DatasetError):
        RaterIdentity(rater_id="bad id!").save()
    assert RaterIdentity.load().rater_id == "dr_smith"
    (tmp_path / "cfg" / "rater.json").write_text("{broken")
    assert RaterIdentity.load() == RaterIdentity()
    monkeypatch.setenv("NAPARI_MULTIRATER_CONFIG", str(tmp_path / "me.json"))
    assert config_path() == tmp_path / "me.json"


# --- locks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_flock", [True, False], ids=["flock", "excl"])
def test_file_lock_excludes_threads_and_times_out(tmp_path, use_flock):
    path = tmp_path / "x.lock"
    counter = tmp_path / "n.txt"
    counter.write_text("0")

    def work():
        for _ in range(40):
            with FileLock(path, use_flock=use_flock, poll=0.001):
                n = int(counter.read_text())
                counter.write_text(str(n + 1))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text() == "120"
    with FileLock(path, use_flock=use_flock):
        with pytest.raises(LockTimeout, match="kept the lock"):
            FileLock(path, timeout=0.1, use_flock=use_flock).acquire()


@pytest.mark.slow
def test_portable_lock_breaks_lock_of_dead_process(tmp_path):
    import socket

    lock = FileLock(tmp_path / "x.lock", timeout=2, use_flock=False)
    assert lock.path.name == "x.lock.excl"  # never confused with a permanent flock file
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    lock.path.write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "time": time.time()}))
    attempts = []
    create = lock._try_exclusive_create
    lock._try_exclusive_create = lambda: attempts.append(1) or create()
    with lock:  # a fresh file (not stale by age): only the dead pid lets it be broken
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists() and len(attempts) == 2  # broken at the first try, not waited out


# --- crashes ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("lock_mode", ["", "excl"], ids=["flock", "excl"])
def test_killed_process_loses_at_most_the_save_in_progress(tmp_path, lock_mode):
    """A rater process is SIGKILLed at random moments while saving continuously (as autosave
    does): the last completed save, or the one in progress if it had committed, is intact."""
    store = make_project(tmp_path, 1, shape=(24, 96, 96), geometry=GEO_3D)
    rng = random.Random(1)
    start = 1
    for _round in range(4):
        proc = spawn(tmp_path, "loop", store.root, "alice", start, start + 10_000, "case0", lock_mode=lock_mode)
        completed = []
        while len(completed) < 2:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            completed.append(int(line))
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        completed += [int(x) for x in out.split()]
        last = completed[-1]
        mask, side = store.load_mask("case0", "alice")
        got = side["provenance"]["iteration"]
        assert got in (last, last + 1), (got, last)
        assert_consistent(store, "case0", "alice", got)
        assert visible_rater_files(store, "case0") == ["alice.json", "alice.nii.gz"]
        assert not any((store.case_dir("case0") / "raters" / ".pending").glob("*/*"))
        assert np.array_equal(CaseFolderDataset(store.root).load_case("case0").masks[0], mask)
        start = got + 1


@pytest.mark.slow
@pytest.mark.parametrize("k,expected", [(1, 1), (2, 1), (3, 2), (4, 2)])
def test_crash_at_every_step_of_a_save(tmp_path, k, expected):
    """Kill the process right before the k-th file rename of a save: staged mask (1), commit
    record (2), live mask (3), live sidecar (4). Before the commit the previous save survives,
    after it the interrupted save is completed by the next reader."""
    store = make_project(tmp_path, 1)
    store.add_rater("alice")  # so that the manifest is not rewritten during the save
    proc = spawn(tmp_path, "crash_at", store.root, "case0", "alice", k)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (out, err)
    assert_consistent(store, "case0", "alice", expected)
    assert visible_rater_files(store, "case0") == ["alice.json", "alice.nii.gz"]
    assert not any((store.case_dir("case0") / "raters" / ".pending").glob("*"))


# --- concurrency ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("lock_mode", ["", "excl"], ids=["flock", "excl"])
def test_concurrent_processes_never_lose_or_corrupt_work(tmp_path, lock_mode):
    store = make_project(tmp_path, 4)
    n = 20
    jobs = [
        # different raters, same cases
        ("loop", store.root, "alice", 1, n + 1, "case0", "case1"),
        ("loop", store.root, "bob", 1, n + 1, "case0", "case1"),
        # same rater, different cases
        ("loop", store.root, "carol", 1, n + 1, "case2"),
        ("loop", store.root, "carol", 1, n + 1, "case3"),
        # many new raters at once: every one must end up in dataset.json
        ("many_raters", store.root, "ra", 12, "case2"),
        ("many_raters", store.root, "rb", 12, "case3"),
    ]
    procs = [spawn(tmp_path, *job, lock_mode=lock_mode) for job in jobs]
    for job, proc in zip(jobs, procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (job, out, err)
    for case in ("case0", "case1"):
        for rater in ("alice", "bob"):
            assert_consistent(store, case, rater, n)
    for case in ("case2", "case3"):
        assert_consistent(store, case, "carol", n)
    for i in range(12):
        assert_consistent(store, "case2", f"ra_{i}", 1)
        assert_consistent(store, "case3", f"rb_{i}", 1)
    expected = {"alice", "bob", "carol"} | {f"ra_{i}" for i in range(12)} | {f"rb_{i}" for i in range(12)}
    raters = store.raters()
    assert set(raters) == expected and len(raters) == len(expected)
    ds = CaseFolderDataset(store.root)
    assert ds.check() == []
    assert ds.load_case("case0").valid.sum() == 2
    for case in store.case_ids():
        assert not any((store.case_dir(case) / "raters" / ".pending").glob("*/*"))
        assert all(name.endswith((".json", ".nii.gz")) for name in visible_rater_files(store, case))
