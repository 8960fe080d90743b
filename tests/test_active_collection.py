"""Active collection (issue 15): the queue ranks under-rated cases first, then by disagreement
(model scores cached by image checksum, else the raters'), repeats are mixed in after the
project's gap and stored next to the first mask (never over it), and the rater report shows each
rater's self-agreement next to their agreement with the others."""

from __future__ import annotations

import numpy as np
import pytest

from napari_multirater import cli
from napari_multirater.annotation.queue import (
    build_queue,
    collection_settings,
    enough_raters,
    iter_model_disagreement,
    repeat_candidates,
    set_collection_settings,
)
from napari_multirater.annotation.repeats import has_repeat, load_repeat, save_repeat
from napari_multirater.annotation.store import SaveConflict
from napari_multirater.datasets.case import DatasetError
from napari_multirater.progress import run_to_completion
from tests.conftest import make_annotation_project

DRAWN = {"kind": "drawn"}


def _disk(shape, r, c=(64, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - c[0]) ** 2 + (xx - c[1]) ** 2) <= r * r).astype(np.uint8)


@pytest.fixture
def store(tmp_path):
    """8 cases: lung0-2 have 3 raters, lung3 two raters who disagree a lot, lung4 two who agree."""
    s = make_annotation_project(tmp_path / "proj", 8)
    shape = s.load_image("lung0")[0].shape
    for cid in ("lung0", "lung1", "lung2"):
        for r in ("ann", "ben", "cat"):
            s.save_mask(cid, r, _disk(shape, 10), provenance=DRAWN)
    s.save_mask("lung3", "ann", _disk(shape, 5), provenance=DRAWN)
    s.save_mask("lung3", "ben", _disk(shape, 20), provenance=DRAWN)
    s.save_mask("lung4", "ann", _disk(shape, 10), provenance=DRAWN)
    s.save_mask("lung4", "ben", _disk(shape, 11), provenance=DRAWN)
    return s


def test_settings_default_validated_and_stored_in_the_project(store):
    assert collection_settings(store) == {
        "target_raters": 3,
        "repeat_fraction": 0.1,
        "repeat_gap": 5,
        "announce_repeats": True,
    }
    set_collection_settings(store, target_raters=2)
    assert store.manifest["collection"]["target_raters"] == 2
    with pytest.raises(DatasetError, match="repeat_fraction"):
        set_collection_settings(store, repeat_fraction=1.5)
    with pytest.raises(DatasetError, match="target_raters"):
        set_collection_settings(store, target_raters=0)
    with pytest.raises(DatasetError, match="announce_repeats"):
        set_collection_settings(store, announce_repeats="no")
    assert collection_settings(store)["target_raters"] == 2


def test_enough_raters_counts_against_the_target(store):
    assert enough_raters(store) == (3, 8)
    set_collection_settings(store, target_raters=2)
    assert enough_raters(store) == (5, 8)


def test_queue_under_rated_first_then_rater_disagreement(store):
    q = build_queue(store, "dan")
    ids = [e.case_id for e in q]
    assert len(ids) == 8 and [e.rank for e in q] == list(range(1, 9))
    # lung3..7 have fewer than 3 raters; among them the raters of lung3 disagree most, lung4 agree
    assert ids[:2] == ["lung3", "lung4"] and set(ids[:5]) == {f"lung{i}" for i in range(3, 8)}
    assert set(ids[5:]) == {"lung0", "lung1", "lung2"}
    assert q[0].score_source == "raters" and q[0].score > q[1].score
    assert all(not hasattr(e, "mask") for e in q)  # the queue carries no mask: blind stays blind
    assert "lung0" not in [e.case_id for e in build_queue(store, "ann") if not e.repeat]


def test_queue_uses_model_scores_when_given(store):
    scores = {f"lung{i}": 0.1 * i for i in range(8)}
    ids = [e.case_id for e in build_queue(store, "dan", scores)]
    assert ids[:5] == ["lung7", "lung6", "lung5", "lung4", "lung3"]  # under-rated first, by model score


def test_model_disagreement_is_cached_by_image_checksum(store):
    from napari_multirater.inference.engine import InferenceEngine

    engine = InferenceEngine.load("phantom_pionono", device="cpu", precision="fp32")
    first = run_to_completion(iter_model_disagreement(engine, store, ["lung0", "lung1"]))
    assert set(first) == {"lung0", "lung1"} and all(v >= 0 for v in first.values())
    cache = store.root / ".multirater" / "disagreement_cache.json"
    assert cache.is_file()
    calls = []
    import napari_multirater.annotation.queue as q

    orig = q.image_disagreement
    q.image_disagreement = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        again = run_to_completion(iter_model_disagreement(engine, store, ["lung0", "lung1"]))
    finally:
        q.image_disagreement = orig
    assert again == first and not calls  # served from the cache


def test_repeats_are_mixed_in_after_the_gap_and_stored_next_to_the_first_mask(store):
    set_collection_settings(store, repeat_fraction=0.5, repeat_gap=1)
    # ann has 5 cases; ceil(0.5 * 5) = 3 repeats, eligible once 1 other case was saved after them
    reps = repeat_candidates(store, "ann")
    assert len(reps) == 3 and len(set(reps)) == 3
    set_collection_settings(store, repeat_fraction=0.2)  # a smaller share keeps the earlier choice
    assert repeat_candidates(store, "ann") == reps[:1]
    set_collection_settings(store, repeat_fraction=0.5)
    q = build_queue(store, "ann")
    kinds = [e.repeat for e in q]
    assert kinds[:4] == [True, False, True, False]  # due now (5 cases saved, none repeated), then every 1
    cid = reps[0]
    first, side = store.load_mask(cid, "ann")
    shape = first.shape
    rep = save_repeat(store, cid, "ann", _disk(shape, 9), provenance=DRAWN, expected_revision=0)
    assert rep["revision"] == 1 and has_repeat(store, cid, "ann")
    again, side2 = store.load_mask(cid, "ann")
    assert np.array_equal(again, first) and side2 == side  # the first mask is untouched
    mask, rside = load_repeat(store, cid, "ann")
    assert mask.sum() == _disk(shape, 9).sum() and rside["repeat_of"] == "ann.nii.gz"
    assert "ann.repeat" not in "".join(store.annotated_raters(cid)) and "repeats" not in store.raters()
    with pytest.raises(SaveConflict):
        save_repeat(store, cid, "ann", _disk(shape, 8), provenance=DRAWN, expected_revision=0)
    save_repeat(store, cid, "ann", _disk(shape, 8), provenance=DRAWN, expected_revision=1)
    assert len(list((store.case_dir(cid) / "raters" / "repeats").glob("ann.r*.nii.gz"))) == 1
    assert cid not in repeat_candidates(store, "ann")
    with pytest.raises(DatasetError, match="no first annotation"):
        save_repeat(store, "lung7", "ann", _disk(shape, 8), provenance=DRAWN)


def test_rater_report_shows_self_agreement_next_to_others(store, tmp_path, capsys):
    from napari_multirater.analysis.self_agreement import hd95, self_agreement

    shape = store.load_mask("lung0", "ann")[0].shape
    save_repeat(store, "lung0", "ann", _disk(shape, 10), provenance=DRAWN)  # identical repeat
    save_repeat(store, "lung1", "ann", _disk(shape, 12), provenance=DRAWN)  # 2 px larger
    rows = {r["rater"]: r for r in self_agreement(store)}
    a = rows["ann"]
    assert a["n_repeats"] == 2 and 0.9 < a["self_dice"] < 1.0
    assert a["self_hd95_mm"] == pytest.approx(np.mean([0.0, hd95(_disk(shape, 10), _disk(shape, 12), (0.7, 0.7))]))
    assert a["n_pairs_others"] == 8 and a["others_dice"] < 1.0
    assert rows["ben"]["n_repeats"] == 0 and np.isnan(rows["ben"]["self_dice"])
    rc = cli.main(["raters", "--data", str(store.root), "--out", str(tmp_path / "rep")])
    out = capsys.readouterr().out
    assert rc == 0 and "Self Dice" in out and (tmp_path / "rep" / "self_agreement.csv").is_file()


def test_queue_cli_lists_the_ranking(store, capsys):
    rc = cli.main(["queue", "--data", str(store.root), "--rater", "dan", "--limit", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and "3 of 8 cases have enough raters" in out
    lines = [ln for ln in out.splitlines() if ln.strip()[:2] in ("1.", "2.", "3.")]
    assert len(lines) == 3 and "lung3" in lines[0]
