"""Agreement metrics, STAPLE, rater-style report (hand-computed cases + phantom style recovery)."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from napari_multirater.analysis import (
    agreement_map,
    case_style,
    dataset_style,
    majority_vote,
    pairwise_heatmap_figure,
    pairwise_overlap,
    staple,
    style_markdown,
    write_style_report,
)
from napari_multirater.analysis.overlap import surface_distances
from napari_multirater.datasets.case import MultiRaterCase
from napari_multirater.io.geometry import Geometry


def square(shape=(30, 30), y=(8, 18), x=(8, 18)):
    m = np.zeros(shape, np.uint8)
    m[y[0] : y[1], x[0] : x[1]] = 1
    return m


def brute_surface(a, b, spacing):
    """Independent reference (HD, HD95, ASSD) in mm: surfaces by scipy erosion (face connectivity,
    outside the image = background), nearest surface points by a k-d tree on physical coordinates."""

    def points(m):
        m = np.asarray(m, bool)
        edge = m & ~ndi.binary_erosion(m, ndi.generate_binary_structure(m.ndim, 1), border_value=0)
        return np.argwhere(edge) * np.asarray(spacing)

    pa, pb = points(a), points(b)
    d_ab, d_ba = cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return max(d_ab.max(), d_ba.max()), hd95, np.concatenate([d_ab, d_ba]).mean()


# --- overlap --------------------------------------------------------------------------------------
def test_offset_squares_anisotropic():
    a = square()
    b = square(x=(10, 20))  # shifted 2 px along x
    c = square(y=(10, 20))  # shifted 2 px along y
    spacing = (1.0, 0.5)  # (y, x) mm
    res = pairwise_overlap(np.stack([a, b, c]), None, spacing, ["a", "b", "c"])
    assert res["dice"][0, 1] == pytest.approx(2 * 80 / 200)  # 10x8 overlap of two 10x10
    assert res["iou"][0, 1] == pytest.approx(80 / 120)
    assert res["hausdorff_mm"][0, 1] == pytest.approx(1.0)  # 2 px * 0.5 mm along x
    assert res["hausdorff_mm"][0, 2] == pytest.approx(2.0)  # 2 px * 1.0 mm along y
    hd, hd95, assd = brute_surface(a, b, spacing)
    assert res["assd_mm"][0, 1] == pytest.approx(assd) and res["hd95_mm"][0, 1] == pytest.approx(hd95)
    assert hd == pytest.approx(1.0)
    assert np.allclose(np.diag(res["dice"]), 1) and np.allclose(np.diag(res["hausdorff_mm"]), 0)
    assert np.allclose(res["dice"], res["dice"].T, equal_nan=True)
    # Dice/IoU agree with ITK's LabelOverlapMeasuresImageFilter
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b))
    assert res["dice"][0, 1] == pytest.approx(f.GetDiceCoefficient())
    assert res["iou"][0, 1] == pytest.approx(f.GetJaccardCoefficient())


def test_surface_distances_hand_computed():
    """3x3 square A inside the 3x4 rectangle B (one more column), spacing (y 1, x 0.5) mm.
    A's 8 surface voxels: 7 on B's surface, (1,2) 0.5 mm from (1,3). B's 10: 7 on A's surface,
    column 3's three 0.5 mm from column 2. ASSD = (0.5 + 1.5) / 18; HD = 0.5; HD95 = max of the
    directed 95th percentiles (linear): A->B 0.65 x 0.5 (7 zeros, one 0.5), B->A 0.5."""
    a, b = np.zeros((5, 7), np.uint8), np.zeros((5, 7), np.uint8)
    a[1:4, 1:4] = 1
    b[1:4, 1:5] = 1
    d = surface_distances(a, b, (1.0, 0.5))
    assert d.assd_mm == pytest.approx(2.0 / 18) and d.hausdorff_mm == pytest.approx(0.5)
    assert d.hd95_mm == pytest.approx(0.5)
    assert surface_distances(b, a, (1.0, 0.5)) == d  # symmetric
    assert np.percentile([0] * 7 + [0.5], 95) == pytest.approx(0.325)  # the A->B percentile stated above


def test_surface_distances_match_an_independent_reference():
    """Random 3D blobs, anisotropic spacing, touching the image border: HD, HD95 and ASSD equal a
    k-d tree point-set computation (and, measured once, MONAI 1.6.1's compute_hausdorff_distance /
    compute_average_surface_distance(symmetric=True) to 1e-7)."""
    rng = np.random.default_rng(3)
    spacing = (2.0, 0.8, 0.6)
    for _ in range(3):
        a, b = (ndi.gaussian_filter(rng.random((8, 14, 14)), 2) > 0.5 for _ in range(2))
        d = surface_distances(a, b, spacing)
        np.testing.assert_allclose([d.hausdorff_mm, d.hd95_mm, d.assd_mm], brute_surface(a, b, spacing), rtol=1e-12)
    a = np.zeros((12, 20, 20), np.uint8)
    a[3:9, 5:15, 5:15] = 1
    b = np.zeros_like(a)
    b[3:9, 5:15, 5:17] = 1  # grows 2 px along x only
    assert surface_distances(a, b, spacing).hausdorff_mm == pytest.approx(1.2)


def test_empty_and_missing_conventions():
    a, z = square(), np.zeros((30, 30), np.uint8)
    res = pairwise_overlap(np.stack([a, z, z, a]), [True, True, True, False], (1.0, 1.0), ["a", "e1", "e2", "m"])
    assert res["missing"] == ["m"] and res["empty"] == ["e1", "e2"]
    assert res["dice"][0, 1] == 0 and res["iou"][0, 1] == 0
    assert np.isnan(res["hausdorff_mm"][0, 1]) and np.isnan(res["assd_mm"][0, 1]) and np.isnan(res["hd95_mm"][0, 1])
    assert res["dice"][1, 2] == 1 and res["iou"][1, 2] == 1
    assert res["hausdorff_mm"][1, 2] == 0 and res["assd_mm"][1, 2] == 0 and res["hd95_mm"][1, 2] == 0
    assert np.isnan(res["dice"][3]).all() and np.isnan(res["dice"][:, 3]).all()


def test_agreement_and_majority():
    a, b, c = square(), square(x=(10, 20)), square(x=(12, 22))
    m = np.stack([a, b, c, c])
    cnt = agreement_map(m, [True, True, True, False])
    assert cnt.dtype == np.uint8 and cnt.max() == 3 and cnt[10, 8] == 1 and cnt[10, 13] == 3
    mv = majority_vote(m, [True, True, True, False])  # >1.5 of 3 -> at least 2
    assert mv[10, 10] == 1 and mv[10, 19] == 1 and mv[10, 8] == 0 and mv[10, 21] == 0
    tie = majority_vote(np.stack([a, b]), None)  # 1 of 2 is a tie -> background
    assert tie[10, 9] == 0 and tie[10, 12] == 1
    assert not majority_vote(m, [False] * 4).any()


# --- STAPLE ---------------------------------------------------------------------------------------
def test_staple_two_agree_one_differs():
    a = square(shape=(40, 40))
    odd = square(shape=(40, 40), x=(8, 13))  # covers half of the square only
    res = staple(np.stack([a, a, odd]), None)
    assert np.array_equal(res.consensus, a)
    assert res.sensitivity[0] == pytest.approx(1.0, abs=1e-6) and res.sensitivity[1] == pytest.approx(1.0, abs=1e-6)
    assert res.sensitivity[2] == pytest.approx(0.5, abs=0.02)  # half of the consensus
    assert res.specificity[2] == pytest.approx(1.0, abs=1e-6)  # marked nothing outside it
    assert res.probability.dtype == np.float32 and res.probability[12, 12] > 0.99


def _sitk_staple(masks):
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1)
    f.SetMaximumIterations(200)
    p = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(np.ascontiguousarray(m, np.uint8)) for m in masks]))
    return np.nan_to_num(p), f.GetSensitivity(), f.GetSpecificity(), f.GetElapsedIterations()


def test_staple_equals_simpleitk_on_the_whole_image():
    """Random 2-4 rater masks (2D and 3D): the same probabilities (to float32), sensitivities,
    specificities, iterations and consensus as SimpleITK's STAPLEImageFilter on the whole image."""
    rng = np.random.default_rng(5)
    for shape in [(24, 30), (24, 30), (6, 12, 14), (6, 12, 14)]:
        base = ndi.gaussian_filter(rng.random(shape), 2)
        k = int(rng.integers(2, 5))
        masks = np.stack(
            [base + 0.1 * ndi.gaussian_filter(rng.random(shape), 1) > np.quantile(base, 0.85) for _ in range(k)]
        )
        p, sens, spec, iters = _sitk_staple(masks)
        res = staple(masks)
        np.testing.assert_allclose(res.probability, p, atol=1e-6)
        np.testing.assert_allclose(res.sensitivity, sens, atol=1e-9)
        np.testing.assert_allclose(res.specificity, spec, atol=1e-9)
        assert res.iterations == iters and np.array_equal(res.consensus, p >= 0.5)


def test_staple_and_style_do_not_depend_on_a_crop():
    """The consensus of masks in a crop (told the image's voxel count) is that of the whole image;
    the style report of the viewer's cropped cases equals the uncropped one."""
    from napari_multirater.analysis.dataset_report import _light_case

    rng = np.random.default_rng(2)
    base = ndi.gaussian_filter(rng.random((16, 16)), 2)
    small = np.stack([base + 0.05 * rng.random((16, 16)) > np.quantile(base, 0.7) for _ in range(3)])
    big = np.zeros((3, 60, 70), bool)
    big[:, 20:36, 30:46] = small
    whole = staple(big)
    crop = staple(small, image_voxels=60 * 70)
    np.testing.assert_array_equal(crop.probability, whole.probability[20:36, 30:46])
    np.testing.assert_allclose(crop.sensitivity, whole.sensitivity)
    assert not np.array_equal(staple(small).probability, crop.probability)  # the image size is the prior's
    with pytest.raises(ValueError, match="smaller than the masks"):
        staple(small, image_voxels=10)
    case = _case(list(big.astype(np.uint8)))
    full, light = case_style(case), case_style(_light_case(case, 5.0))
    for a, b in zip(full, light):
        assert a.keys() == b.keys() and all(
            np.isclose(a[k], b[k], equal_nan=True) for k in a if k not in ("case_id", "rater")
        )


def test_staple_degenerate_and_missing():
    a, z = square(), np.zeros((30, 30), np.uint8)
    res = staple(np.stack([a, a, square(x=(10, 20))]), [True, True, False])
    assert np.array_equal(res.consensus, a) and np.isnan(res.sensitivity[2]) and not res.used[2]
    empty = staple(np.stack([z, z, a]), [True, True, False])
    assert not empty.consensus.any() and np.isnan(empty.sensitivity).all() and "empty" in empty.note
    single = staple(np.stack([a, z]), [True, False])
    assert np.array_equal(single.consensus, a) and "single" in single.note


# --- style ----------------------------------------------------------------------------------------
def _case(masks, valid=None, spacing_xy=(0.5, 1.0)):
    k = len(masks)
    return MultiRaterCase(
        "c0",
        np.zeros(masks[0].shape, np.int16),
        np.stack(masks).astype(np.uint8),
        np.ones(k, bool) if valid is None else np.asarray(valid),
        [f"r{i}" for i in range(k)],
        Geometry(spacing_xy, (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)),
    )


def test_case_style_hand_computed():
    ref = square(shape=(40, 40), y=(10, 20), x=(10, 20))
    big = square(shape=(40, 40), y=(9, 21), x=(9, 21))  # one voxel outside everywhere
    rows = case_style(_case([ref, ref, ref, big, ref], valid=[1, 1, 1, 1, 0]))
    r3 = rows[3]
    assert r3["volume_bias"] == pytest.approx(144 / 100 - 1)
    assert r3["sensitivity"] == 1 and r3["specificity"] < 1
    assert r3["signed_boundary_mm"] > 0.5  # outside: between 0.5 mm (x) and 1 mm (y)
    assert r3["n_reference_raters"] == 3 and r3["dice_vs_r0"] == pytest.approx(200 / 244)
    assert rows[0]["volume_bias"] == pytest.approx(0) and rows[0]["signed_boundary_mm"] == pytest.approx(0)
    assert not rows[4]["valid"] and np.isnan(rows[4]["volume_bias"]) and np.isnan(rows[0]["dice_vs_r4"])


def test_case_style_empty_rater():
    ref, z = square(), np.zeros((30, 30), np.uint8)
    rows = case_style(_case([ref, ref, z]))
    assert rows[2]["empty"] and rows[2]["volume_bias"] == -1 and rows[2]["sensitivity"] == 0
    assert np.isnan(rows[2]["assd_mm"]) and np.isnan(rows[2]["hd95_mm"])


@pytest.fixture(scope="module")
def phantom_report():
    phantom = pytest.importorskip("napari_multirater.datasets.phantom")
    return dataset_style([phantom.make_phantom_case(i, seed=0) for i in range(8)])


def test_phantom_style_recovery(phantom_report):
    s = phantom_report.summary
    assert phantom_report.rater_names == ["tight", "generous", "smooth", "misses_faint"]
    vb = {n: s[n]["volume_bias_mean"] for n in s}
    sb = {n: s[n]["signed_boundary_mm_mean"] for n in s}
    assert vb["generous"] > 0.2 and vb["tight"] < -0.1 and vb["misses_faint"] < -0.1
    assert sb["generous"] > 0.5 and sb["tight"] < -0.3 and sb["misses_faint"] < 0
    assert vb["generous"] == max(vb.values()) and sb["generous"] == max(sb.values())
    sens = {n: s[n]["sensitivity_mean"] for n in s}
    assert max(sens["tight"], sens["misses_faint"]) < min(sens["generous"], sens["smooth"]) - 0.15
    assert s["generous"]["specificity_mean"] == min(s[n]["specificity_mean"] for n in s)
    # missing the faint part is a local error: the largest Hausdorff distance
    hd = {n: s[n]["hausdorff_mm_mean"] for n in s}
    assert hd["misses_faint"] == max(hd.values())
    # "smooth" (convex hull) is closest to the others; "tight" vs "generous" the farthest pair
    pw = phantom_report.pairwise_dice
    assert np.allclose(np.diag(pw), 1) and pw[0, 1] == np.min(pw)
    assert all(s[n]["n_cases"] == 8 and s[n]["n_missing"] == 0 for n in s)


def test_report_files(phantom_report, tmp_path):
    paths = write_style_report(phantom_report, tmp_path / "rep")
    for key in (
        "raters_csv",
        "raters_per_case_csv",
        "raters_md",
        "pairwise_dice_png",
        "volume_bias_png",
        "boundary_distance_png",
    ):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    rows = list(csv.DictReader(open(paths["raters_csv"])))
    assert [r["rater"] for r in rows] == phantom_report.rater_names
    assert len(list(csv.DictReader(open(paths["raters_per_case_csv"])))) == 8 * 4
    md = style_markdown(phantom_report)
    assert md.startswith("| Rater") and "leave-one-out" in md and "**Per lesion.**" in md
    assert md.split("\n\n")[0].count("\n| ") == 4  # one style row per rater
    lesions = list(csv.DictReader(open(paths["lesions_csv"])))
    assert len(lesions) == len(phantom_report.lesion_rows) == 32  # 8 cases x 1 lesion x 4 raters
    assert {r["rater"] for r in lesions} == set(phantom_report.rater_names)
    assert {"case_id", "lesion", "found_by", "volume_bias", "dice_others", "assd_mm", "hd95_mm"} <= set(lesions[0])
    assert paths["pairwise_dice_png"].read_bytes()[:4] == b"\x89PNG"
    fig = pairwise_heatmap_figure(np.array([[1.0, np.nan], [0.5, 1.0]]), ["a", "b"], "t", ".2f")
    assert len(fig.axes) == 2


def test_cli_raters(tmp_path, capsys):
    pytest.importorskip("napari_multirater.datasets.synth")
    from napari_multirater.analysis import cli_raters
    from napari_multirater.datasets.synth import generate_phantom_dataset

    root = generate_phantom_dataset(tmp_path / "ds", 3)
    parser = argparse.ArgumentParser()
    cli_raters.add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        ["raters", "--data", str(root), "--out", str(tmp_path / "out"), "--max-cases", "2", "--consensus", "majority"]
    )
    assert args.func(args) == 0
    assert "| generous |" in capsys.readouterr().out and (tmp_path / "out" / "raters.csv").exists()
    bad = parser.parse_args(["raters", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    assert cli_raters.run(bad) == 2
    assert "error" in capsys.readouterr().err


def test_lesions_matched_across_raters_hand_computed():
    """Three raters, spacing (z 2, y 1, x 0.5) mm. Nodule A: r0 and r1 overlap, r2 outlines it
    without overlap but with its centroid 2 mm away; r1 splits its outline into two touching-free
    parts that both overlap r0 (one finding); r2 also outlines nodule B, 30 mm away, alone."""
    from napari_multirater.analysis.lesions import compare_lesions

    m = np.zeros((3, 6, 60, 40), bool)
    m[0, 2:4, 10:14, 10:18] = True  # 2 x 4 x 8 = 64 voxels
    m[1, 2:4, 10:14, 10:13] = True  # 24 voxels
    m[1, 2:4, 10:14, 15:18] = True  # 24 more (column 13-14 gap: a separate component)
    m[2, 2:4, 14:16, 10:18] = True  # just below A: no overlap, centroid (y 13.5 vs 11.5) 2 mm away
    m[2, 2:4, 44:48, 20:24] = True  # nodule B, far away
    res = compare_lesions(m, None, ["r0", "r1", "r2"], (2.0, 1.0, 0.5))
    assert [f["n_found"] for f in res.findings] == [3, 1] and res.detection == {"3/3": 1, "2/3": 0, "1/3": 1}
    rows = {(r["lesion"], r["rater"]): r for r in res.rows}
    a0, a1, a2 = rows[("L1", "r0")], rows[("L1", "r1")], rows[("L1", "r2")]
    assert a0["volume_mm3"] == 64 and a1["volume_mm3"] == 48 and a2["volume_mm3"] == 32  # voxel 1 mm3
    assert a0["volume_bias"] == pytest.approx(64 / 40 - 1) and a2["volume_bias"] == pytest.approx(32 / 56 - 1)
    assert a0["dice_others"] == pytest.approx((2 * 48 / 112 + 0) / 2) and a2["dice_others"] == 0
    assert a2["assd_mm"] > 0 and a2["hd95_mm"] >= a2["assd_mm"]
    b = [rows[("L2", n)] for n in ("r0", "r1", "r2")]
    assert [r["found"] for r in b] == [False, False, True] and np.isnan(b[2]["dice_others"])
    assert b[2]["found_by"] == "1/3" and b[2]["centroid_zyx"] == "(2, 46, 22)"  # (2.5, 45.5, 21.5) rounded half-even
    far = compare_lesions(m, [True, True, True], ["r0", "r1", "r2"], (2.0, 1.0, 0.5), match_distance_mm=1.0)
    assert far.detection == {"3/3": 0, "2/3": 1, "1/3": 2}  # r2's outline of A is now its own finding


def test_case_style_3d_phantom():
    phantom = pytest.importorskip("napari_multirater.datasets.phantom")
    rows = {r["rater"]: r for r in case_style(phantom.make_phantom_case(1, ndim=3), consensus="majority")}
    assert rows["generous"]["volume_bias"] > 0 > rows["tight"]["volume_bias"]
    assert rows["generous"]["signed_boundary_mm"] > 0 > rows["tight"]["signed_boundary_mm"]


def test_style_report_is_a_progress_generator_counting_skipped_cases(tmp_path):
    """The dataset report's loop yields one Progress per case (skipped ones too) and stops when closed."""
    from napari_multirater.analysis.cli_raters import iter_style_report, style_report
    from napari_multirater.datasets import open_dataset
    from napari_multirater.datasets.synth import generate_phantom_dataset
    from napari_multirater.progress import run_to_completion

    data = generate_phantom_dataset(tmp_path / "ds", 4)
    broken = sorted(p.name for p in (data / "cases").iterdir())[1]
    (data / "cases" / broken / "image.nii.gz").write_bytes(b"broken")
    items = []
    report, problems = run_to_completion(iter_style_report(open_dataset(data)), items.append)
    assert [p.done for p in items] == [1, 2, 3, 4] and {p.total for p in items} == {4}
    assert f"skipped {broken}" in [p.message for p in items] and report.n_cases == 3
    assert len(problems) == 1 and broken in problems[0] and problems[0] in report.notes
    calls = []  # the callback form (multirater raters) sees the same steps
    style_report(open_dataset(data), progress=lambda *a: calls.append(a))
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    gen = iter_style_report(open_dataset(data))  # Cancel: closing after the first case stops the loop
    assert next(gen).done == 1
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


def test_dataset_report_generator_writes_outside_the_dataset(tmp_path):
    from napari_multirater.analysis.dataset_report import dataset_report, default_report_dir
    from napari_multirater.datasets.synth import generate_phantom_dataset
    from napari_multirater.progress import run_to_completion

    data = generate_phantom_dataset(tmp_path / "ds", 2)
    items = []
    report, paths, problems = run_to_completion(dataset_report(data, tmp_path / "out"), items.append)
    assert report.n_cases == 2 and problems == [] and paths["raters_md"].parent == tmp_path / "out"
    assert items[-1].message == "writing report" and items[-1].done == items[-1].total == 3
    out = default_report_dir(data)
    assert data.resolve() not in out.parents and out != data.resolve()


def test_compare_masks_without_a_viewer():
    from napari_multirater.analysis.compare import compare_masks
    from napari_multirater.progress import run_to_completion

    masks = np.stack([square(), square(y=(9, 19)), square(x=(10, 20))])
    items = []
    res = run_to_completion(compare_masks(masks, ["a", "b", "c"], (1.0, 1.0), consensus="majority"), items.append)
    assert [p.done for p in items] == list(range(1, 9)) and items[-1].total == 8  # 3 pairs + 5 steps
    assert items[-1].message == "lesions" and res.lesions.detection == {"3/3": 1, "2/3": 0, "1/3": 0}
    np.testing.assert_array_equal(res.majority, majority_vote(masks))
    np.testing.assert_array_equal(res.agreement, masks.sum(0))
    assert res.names == ["a", "b", "c"] and len(res.style_rows) == 3 and res.consensus_method == "majority"
