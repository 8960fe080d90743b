"""Property tests (hypothesis) of path containment: identifiers, joins of names read from files,
staged-save records and image-header data files. Whatever the input, nothing outside the root is
named, read, written or deleted. Small, seeded (derandomized), no example database."""

from __future__ import annotations

import json
import os
import string
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_multirater.annotation import AnnotationStore
from napari_multirater.datasets.case import DatasetError
from napari_multirater.datasets.case_folder import check_identifier
from napari_multirater.io.contained import UnsafePath, inside, is_inside
from napari_multirater.io.data_files import check_data_files, data_file_names
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import write_image

FAST = settings(max_examples=50, deadline=None, derandomize=True, database=None)
# the characters that matter for paths (an explicit alphabet: no unicode tables to build, fast)
ALPHABET = string.ascii_letters + string.digits + "_.-/\\\n\r\t\x00 :~%$*é\u2028"
PIECES = ["a", "b", "in_link", "out_link", "up_link", "..", ".", "", "/", "x\\y", "C:", "\x00", "~", "alice\n"]
names = st.one_of(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map("/".join),
    st.text(ALPHABET, max_size=40),
)


@pytest.fixture
def tree(tmp_path):
    """``root`` with folders a/b, links in_link -> a, out_link -> outside, a/up_link -> .. /..;
    an ``outside`` folder beside it."""
    root, out = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    out.mkdir()
    (out / "secret").write_text("s")
    os.symlink(root / "a", root / "in_link")
    os.symlink(out, root / "out_link")
    os.symlink("../..", root / "a" / "up_link")
    return root, out


SAFE_IDS = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(string.ascii_letters + "0_.-", max_size=127),
)
TRICKY = ["\n", "\r\n", "/", "/..", "\\", "\x00", " ", ":", "\u2028"]


@FAST
@given(st.one_of(st.text(ALPHABET, max_size=140), st.builds(str.__add__, SAFE_IDS, st.sampled_from(TRICKY))))
def test_identifiers_are_single_safe_file_names(value):
    try:
        check_identifier(value, "id")
    except DatasetError:
        return
    assert 1 <= len(value) <= 128 and value[0].isascii() and value[0].isalnum()
    assert not set(value) & set("/\\\n\r\x00 :\u2028") and value not in (".", "..")
    assert Path("root", value).parent == Path("root")


@FAST
@given(SAFE_IDS)
def test_every_safe_identifier_is_accepted(value):
    assert check_identifier(value, "id") == value


def test_joins_of_untrusted_names_never_leave_the_root(tree):
    root, _ = tree

    @FAST
    @given(names)
    def check(name):
        try:
            p = inside(root, name, "name")
        except UnsafePath:
            return
        assert is_inside(root, p) and os.path.realpath(p).startswith(os.path.realpath(root) + os.sep)

    check()
    assert inside(root, "in_link/b") == root / "in_link" / "b"  # a link staying inside is fine
    for bad in ("out_link/secret", "a/up_link/outside/secret", "/etc/passwd", "../outside", "a\\..\\.."):
        with pytest.raises(UnsafePath):
            inside(root, bad)


def test_header_data_files_never_leave_the_header_folder(tree):
    root, _ = tree

    @FAST
    @given(names, st.sampled_from(["ElementDataFile = {}", "ElementDataFile = LIST\n{}", "data file: {}"]))
    def check(name, line):
        header = root / ("h.nhdr" if line.startswith("data") else "h.mhd")
        header.write_text(
            "NDims = 2\n" + line.format(name.replace("\n", " ")) + "\n", encoding="latin-1", errors="replace"
        )
        try:
            check_data_files(header)
        except UnsafePath:
            return
        assert all(is_inside(root, root / n) for n in data_file_names(header))

    check()


def test_staged_records_never_touch_anything_outside_the_project(tmp_path):
    """Any staged-save record: the save is finished (only when it names ``alice<suffix>``) or the
    record is quarantined; files outside the project and other raters' files are untouched."""
    geo = Geometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    store = AnnotationStore.create_project(tmp_path / "proj", "p")
    store.add_case(np.zeros((6, 6), np.int16), geo, "c1")
    store.save_mask("c1", "bob", np.eye(6, dtype=np.uint8), provenance={"kind": "drawn"})
    staged = tmp_path / "staged.nii.gz"
    write_image(staged, np.ones((6, 6), np.uint8), geo, label=True)
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim.nii.gz").write_bytes(b"precious")
    rdir = store.case_dir("c1") / "raters"
    bob = (rdir / "bob.nii.gz").read_bytes()
    values = st.one_of(
        st.sampled_from(
            [
                str(out / "victim.nii.gz"),
                "../../../outside/victim.nii.gz",
                "alice.nii.gz",
                "bob.nii.gz",
                "alice.nii.gz/..",
            ]
        ),
        names,
        st.none(),
        st.integers(),
        st.lists(st.text(ALPHABET, max_size=3), max_size=2),
    )

    @FAST
    @given(values, st.booleans())
    def check(mask_file, as_dict):
        pend = rdir / ".pending" / "alice"
        pend.mkdir(parents=True, exist_ok=True)
        (pend / "mask.nii.gz").write_bytes(staged.read_bytes())
        (pend / "sidecar.json").write_text(json.dumps({"mask_file": mask_file} if as_dict else [mask_file]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                store.load_mask("c1", "alice")
            except DatasetError:
                pass  # e.g. a finished record whose sidecar lacks fields: refused, named
        assert not pend.exists()
        assert sorted(p.name for p in out.iterdir()) == ["victim.nii.gz"]
        assert (out / "victim.nii.gz").read_bytes() == b"precious"
        assert (rdir / "bob.nii.gz").read_bytes() == bob
        assert {p.name for p in rdir.iterdir()} <= {
            "bob.nii.gz",
            "bob.json",
            "alice.nii.gz",
            "alice.json",
            ".pending",
            ".quarantine",
            ".bob.lock",
            ".alice.lock",
        }

    check()
