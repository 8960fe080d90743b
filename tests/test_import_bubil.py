"""`multirater import bu-bil`: named experts keep their identity, a second tool becomes repeats.

A small synthetic stand-in of the BU-BIL layout (the real data stays outside the repository):
objects are drawn black (0) on white, as BU-BIL draws them.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_multirater.annotation.repeats import load_repeat
from napari_multirater.annotation.store import AnnotationStore
from napari_multirater.cli import main
from napari_multirater.datasets.case_folder import CaseFolderDataset


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _object(shape, y0, y1, x0, x1, rgb=False):
    """White background, the object black: BU-BIL's convention."""
    a = np.full(shape, 255, np.uint8)
    a[y0:y1, x0:x1] = 0
    return np.stack([a] * 3, -1) if rgb else a


def _bubil(root, subset=None):
    ann = root / "ExpertsAnnotations" / (subset or "")
    for name in ("B01", "B02"):
        _png(root / "RawImages" / f"{name}.png", np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8))
        for k, (grow, tools) in enumerate([(0, ("Amira", "ImageJ")), (2, ("Amira", "ImageJ"))], start=1):
            for t, shift in zip(tools, (0, 1)):
                _png(
                    ann / f"Person{k}_{t}" / f"seg_{name}.png",
                    _object((20, 24), 5, 10 + grow + shift, 5, 12, rgb=t == "ImageJ"),
                )
    return root


def test_import_keeps_named_experts_with_their_masks_and_the_second_tool_as_repeats(tmp_path, capsys):
    src = _bubil(tmp_path / "BU-BIL_Dataset1")
    assert main(["import", "bu-bil", str(src), "--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "2 images with experts Person1, Person2" in out and "4 repeats from ImageJ" in out
    ds = CaseFolderDataset(tmp_path / "ds")
    assert ds.rater_names == ["Person1", "Person2"]
    case = ds.load_case("B01")
    # the black object is the annotation; Person2 draws 2 rows larger, in every image
    assert case.masks[0].sum() == 5 * 7 and case.masks[1].sum() == 7 * 7
    store = AnnotationStore(tmp_path / "ds")
    rep, side = load_repeat(store, "B02", "Person2")
    assert rep.sum() == 8 * 7 and side["provenance"]["tool"] == "ImageJ"
    assert not list((tmp_path / "ds").rglob(".*.lock"))  # nothing left from the repeats' save locks


def test_subsets_must_be_chosen_and_a_wrong_folder_is_one_line(tmp_path, capsys):
    src = _bubil(tmp_path / "BU-BIL_Dataset2", subset="2A")
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["import", "bu-bil", str(src), "--out", str(tmp_path / "ds")]))
    assert e.value.code == 2 and "choose one with --subset" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
    assert main(["import", "bu-bil", str(src), "--subset", "2A", "--out", str(tmp_path / "ds")]) == 0
    assert main(["import", "bu-bil", str(tmp_path / "ds"), "--out", str(tmp_path / "x")]) == 2
    assert "no RawImages/ folder" in capsys.readouterr().err


def test_a_mask_of_another_size_stops_the_import_and_writes_nothing(tmp_path, capsys):
    src = _bubil(tmp_path / "BU-BIL_Dataset1")
    _png(src / "ExpertsAnnotations" / "Person1_Amira" / "seg_B02.png", _object((10, 10), 1, 3, 1, 3))
    assert main(["import", "bu-bil", str(src), "--out", str(tmp_path / "ds")]) == 2
    assert "does not match its image" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.partial-*"))


def test_a_mask_linked_from_outside_the_dataset_folder_is_never_read(tmp_path, capsys):
    src = _bubil(tmp_path / "BU-BIL_Dataset1")
    secret = tmp_path / "elsewhere" / "secret.png"
    _png(secret, _object((20, 24), 0, 20, 0, 24))
    target = src / "ExpertsAnnotations" / "Person1_Amira" / "seg_B02.png"
    target.unlink()
    target.symlink_to(secret)
    assert main(["import", "bu-bil", str(src), "--out", str(tmp_path / "ds")]) == 2
    assert "leads outside" in capsys.readouterr().err and not (tmp_path / "ds").exists()
