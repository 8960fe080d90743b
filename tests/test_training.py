"""Training module end to end: every method learns on real LIDC slices, the CLI contract, exact
resume after an interrupt, torchrun with 2 CPU processes (gloo), evaluate JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src_training.data import SliceDataset, load_split, patient_split
from src_training.models.registry import METHODS, build_model

TINY = {"backbone": {"widths": [8, 16, 32], "features": 8}}
MULTIRATER = [sys.executable, "-m", "napari_multirater.cli"]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """The LIDC CI fixture (64 real slices) or, without ../shared/data, a phantom dataset."""
    from napari_multirater.datasets.shared import shared_data_dir

    d = shared_data_dir()
    if d is not None and (d / "lidc-slices" / "ci-fixture.npz").exists():
        return d / "lidc-slices" / "ci-fixture.npz"
    from napari_multirater.datasets.synth import generate_phantom_dataset

    return generate_phantom_dataset(tmp_path_factory.mktemp("ph") / "ds", 24)


def _tiny_config(method: str, k: int) -> dict:
    cfg = {"method": method, "num_raters": k, "rater_names": [f"r{i}" for i in range(k)], **TINY}
    if method in ("dpersona", "prob_unet"):
        cfg["prior"] = {"widths": [8, 16, 32]}
    return cfg


@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_on_real_slices(method, train_data):
    torch.manual_seed(0)
    items = SliceDataset(load_split(train_data, "train"), rank_raters=True)
    # a fixed batch of slices that several raters marked
    marked = [i for i in range(len(items)) if (items.raw(i)[1].reshape(4, -1).sum(1) > 0).sum() >= 2][:8]
    batch = {k: torch.stack([items[i][k] for i in marked]) for k in ("image", "masks", "mask_valid")}
    h, w = batch["image"].shape[-2:]
    crop = (slice(None), slice(None), slice(h // 2 - 32, h // 2 + 32), slice(w // 2 - 32, w // 2 + 32))
    batch["image"], batch["masks"] = batch["image"][crop], batch["masks"][crop]  # the nodule is centred
    model = build_model(_tiny_config(method, 4))
    opt = torch.optim.Adam(model.param_groups(3e-3))
    losses = []
    model.train()
    for step in range(30):
        out = model.loss(batch, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.93 * np.mean(losses[:5]), losses


def _run(args, **kw):
    return subprocess.run(MULTIRATER + args, capture_output=True, text=True, timeout=600, **kw)


def _train_args(data, out, method="prob_unet", steps=6, extra=()):
    return [
        "train",
        "--method",
        method,
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        "4",
        "--val-max-images",
        "6",
        "--val-samples",
        "4",
        "--seed",
        "1",
        "--config",
        str(_write_tiny_config(out.parent, method)),
        *extra,
    ]


def _write_tiny_config(folder: Path, method: str) -> Path:
    p = folder / f"tiny_{method}.json"
    cfg = {k: v for k, v in _tiny_config(method, 4).items() if k not in ("num_raters", "rater_names")}
    cfg["train"] = {"log_every": 1}
    p.write_text(json.dumps(cfg))
    return p


@pytest.mark.slow
def test_train_cli_contract_evaluate_json_and_export(train_data, tmp_path):
    out = tmp_path / "run"
    r = _run(_train_args(train_data, out, extra=("--val-every", "2")))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("last.pt", "best.pt", "log.csv", "val.csv", "config.json"):
        assert (out / name).exists(), name
    val_steps = [int(line.split(",")[0]) for line in (out / "val.csv").read_text().splitlines()[1:]]
    assert {2, 4, 6} <= set(val_steps), val_steps  # --val-every validates mid-epoch, not only at epoch ends
    from src_training.checkpoint import load_checkpoint

    model, card = load_checkpoint(out / "best.pt")
    assert card["training_budget"]["steps"] >= 1 and card["method"] == "prob_unet"
    assert card["intensity"]["window"] and card["training_data"]["split"].startswith("by patient")
    fov = card["input"]["field_of_view"]  # what one training image showed (the docks compare inputs to it)
    assert len(fov["size_px"]) == 2 and min(fov["size_px"]) > 0 and fov["centred"]
    r = _run(
        [
            "evaluate",
            "--checkpoint",
            str(out / "best.pt"),
            "--data",
            str(train_data),
            "--split",
            "val",
            "--samples",
            "4",
            "--json",
            str(tmp_path / "ev.json"),
            "--max-images",
            "6",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.loads((tmp_path / "ev.json").read_text())
    for key in (
        "ged",
        "ged_dpersona",
        "dice_soft",
        "dice_max",
        "dice_max_reverse",
        "dice_match",
        "dice_each_identity",
        "dice_each_matched",
        "per_bucket",
        "n_images",
        "n_samples",
        "conventions",
    ):
        assert key in ev, key
    assert len(ev["dice_each_identity"]) == 4 and ev["n_samples"] == 4
    assert "| ged |" in r.stdout and "d(empty, empty) = 0" in r.stdout

    # export: a lean fp16 copy whose card carries the evaluation, and which predicts like the original
    shipped = tmp_path / "models" / "tiny_prob_unet.pt"
    r = _run(
        [
            "export",
            "--checkpoint",
            str(out / "best.pt"),
            "--out",
            str(shipped),
            "--fp16",
            "--eval-json",
            str(tmp_path / "ev.json"),
            "--note",
            "test export",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert shipped.stat().st_size < (out / "best.pt").stat().st_size
    lean, lean_card = load_checkpoint(shipped)
    assert lean_card["evaluation"]["ged"] == ev["ged"] and "conventions" in lean_card["evaluation"]
    assert "multirater evaluate --checkpoint tiny_prob_unet" in lean_card["evaluation"]["command"]
    assert "test export" in lean_card["notes"] and lean_card["exported_from"] == "best.pt"
    full = model.state_dict()
    for key, value in lean.state_dict().items():  # fp16 storage, fp32 back
        assert value.dtype == full[key].dtype, key
        torch.testing.assert_close(value, full[key], atol=2e-3, rtol=2e-3)
    bad_eval = ["--eval-json", str(tmp_path), "--overwrite"]  # --overwrite: shipped exists (an earlier export)
    r = _run(["export", "--checkpoint", str(out / "best.pt"), "--out", str(shipped), *bad_eval])
    assert r.returncode == 2 and "cannot read" in r.stderr


@pytest.mark.slow
def test_bad_train_inputs_give_clear_errors(tmp_path):
    r = _run(["train", "--method", "prob_unet", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "not found" in r.stderr
    r = _run(["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--data", str(tmp_path)])
    assert r.returncode == 2 and "checkpoint not found" in r.stderr


def _log_rows(run: Path) -> dict:
    lines = (run / "log.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h != "samples_per_s"]
    rows = {}
    for line in lines[1:]:
        cells = line.split(",")
        assert cells[0] not in rows, f"step {cells[0]} logged twice"
        rows[cells[0]] = [cells[i] for i in keep]
    return rows


@pytest.mark.slow
def test_interrupt_then_resume_matches_uninterrupted_run(train_data, tmp_path):
    """With augmentation on: the resumed run reproduces the uninterrupted one exactly."""
    steps = 10
    ref = tmp_path / "ref"
    assert _run(_train_args(train_data, ref, steps=steps)).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen(
        MULTIRATER + _train_args(train_data, run, steps=steps),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if line.startswith("step 4/"):
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate(timeout=300)
    assert proc.returncode == 130
    from src_training.checkpoint import load_checkpoint_dict

    stopped_at = load_checkpoint_dict(run / "last.pt")["step"]
    assert 4 <= stopped_at < steps
    r = _run(_train_args(train_data, run, steps=steps, extra=["--resume"]))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {run / 'last.pt'} at step {stopped_at}" in r.stdout
    a, b = load_checkpoint_dict(ref / "last.pt"), load_checkpoint_dict(run / "last.pt")
    assert a["step"] == b["step"] == steps
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, msg=key)
    ref_rows, run_rows = _log_rows(ref), _log_rows(run)
    assert sorted(run_rows, key=int) == [str(i) for i in range(1, steps + 1)]
    assert run_rows == ref_rows  # same losses at every step, before and after the interruption


@pytest.mark.slow
def test_torchrun_two_cpu_processes_gloo(tmp_path):
    """2 processes, gloo; 23 training items (odd, 23 = 8k - 1) so a naive strided split would give
    the ranks different batch counts per epoch and hang at the epoch boundary."""
    from napari_multirater.datasets.synth import generate_phantom_dataset

    data = generate_phantom_dataset(tmp_path / "ph", 29)  # 23 train + 6 val cases
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "napari_multirater.cli",
        *_train_args(data, out, steps=8),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    from src_training.checkpoint import load_checkpoint, load_checkpoint_dict

    _, card = load_checkpoint(out / "last.pt")
    assert card["training_budget"]["processes"] == 2 and card["training_budget"]["steps"] == 8
    assert card["training_budget"]["epochs"] >= 2  # crossed epoch boundaries without a hang
    assert len(load_checkpoint_dict(out / "last.pt")["rng"]) == 2  # each rank's random state kept


@pytest.mark.slow
def test_dpersona_stage2_from_stage1_cli(train_data, tmp_path):
    s1 = tmp_path / "s1"
    assert _run(_train_args(train_data, s1, method="dpersona", steps=3)).returncode == 0
    s2 = tmp_path / "s2"
    r = _run(_train_args(train_data, s2, method="dpersona", steps=3, extra=["--stage1", str(s1 / "best.pt")]))
    assert r.returncode == 0, r.stderr[-3000:]
    from src_training.checkpoint import load_checkpoint

    model, card = load_checkpoint(s2 / "best.pt")
    assert card["stage"] == 2 and model.capabilities.personalized
    val = (s2 / "val.csv").read_text().splitlines()[0].split(",")  # collapse diagnostics are logged
    assert {
        "dice_each_identity_mean",
        "dice_each_identity_1",
        "experts_dice_match",
        "diag_q_norm_1",
        "diag_attn_entropy_4",
        "diag_z_spread",
    } <= set(val)
    assert {"q_norm_1", "attn_entropy_4", "z_spread"} <= set((s2 / "log.csv").read_text().splitlines()[0].split(","))
    r = _run(
        [
            "evaluate",
            "--checkpoint",
            str(s2 / "best.pt"),
            "--data",
            str(train_data),
            "--split",
            "val",
            "--samples",
            "3",
            "--max-images",
            "4",
            "--json",
            str(tmp_path / "s2.json"),
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "s2.json").read_text())
    assert set(res["experts"]) >= {"ged", "dice_match"} and res["n_samples"] == 3  # both row sets, labelled
    assert "stage II: the K expert outputs" in r.stdout and "stage I: prior samples" in r.stdout
    r = _run(
        _train_args(
            train_data,
            tmp_path / "s2b",
            method="dpersona",
            steps=3,
            extra=["--stage1", str(s1 / "best.pt"), "--select-metric", "dice_match"],
        )
    )
    assert r.returncode == 2 and "dice_each_identity_mean" in r.stderr  # a collapse must not be selectable
    r = _run(
        _train_args(
            train_data,
            tmp_path / "bad",
            method="dpersona",
            steps=3,
            extra=["--stage1", str(tmp_path / "s1" / "config.json")],
        )
    )
    assert r.returncode == 2 and "error:" in r.stderr


def test_evaluate_aligns_rater_order_by_name(phantom_dataset):
    from napari_multirater.datasets import open_dataset
    from src_training.evaluate import align_raters

    ds = open_dataset(phantom_dataset)
    original = ds[0].masks
    reverse = list(reversed(ds.rater_names))
    align_raters(ds, reverse, ranked=False)
    np.testing.assert_array_equal(ds[0].masks, original[::-1])
    with pytest.raises(ValueError, match="not the model's raters"):
        align_raters(ds, ["a", "b", "c", "d"], ranked=False)
    with pytest.raises(ValueError, match="the data has 4 raters, the model 3"):
        align_raters(ds, ["a", "b", "c"], ranked=True)


def test_patient_split_is_disjoint_and_deterministic(train_data):
    full = load_split(train_data, None)
    pids = full.patient_ids()
    tr, va = patient_split(pids)
    assert not {pids[i] for i in tr} & {pids[i] for i in va}
    assert patient_split(pids) == (tr, va)
