"""``multirater bench`` smoke test: tiny settings, output structure only (a test never times things)."""

from __future__ import annotations

import json

from napari_multirater.cli import main as cli_main
from src_training.tools import bench
from src_training.tools.testing import make_tiny_checkpoint


def test_bench_quick_writes_json_and_markdown(tmp_path, capsys):
    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt", method="dpersona")
    out = tmp_path / "bench"
    # one thread: tiny tensors, and robust when the CPU is shared (several threads thrash then)
    rc = cli_main(
        [
            "bench",
            "--quick",
            "--skip-3d",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--checkpoint",
            str(ckpt),
            "--train-configs",
            "unet,dpersona_stage2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert res["schema"] == bench.SCHEMA
    assert res["settings"]["quick"] is True and res["settings"]["devices"] == ["cpu"]
    for key in ("cpu_model", "logical_cores", "torch", "torch_threads", "device_names"):
        assert key in res["machine"]
    assert res["model"]["method"] == "dpersona" and "checkpoint" in res["model"]["source"]

    runs = [f"cpu {p.name}" for _, p in bench.device_precisions(bench.resolve_devices("cpu"))]
    assert list(res["devices"]) == runs and runs[0] == "cpu fp32"  # fp32 and the auto path, side by side
    for key in runs:
        cpu = res["devices"][key]
        smp = cpu["sampling"]
        assert [r["n"] for r in smp["rows"]] == list(res["settings"]["sample_ns"])
        for r in smp["rows"]:
            for variant in ("vectorized", "naive"):
                assert set(r[variant]) >= {"median", "p10", "p90", "n"}
            assert r["speedup"] > 0
        # both paths decode the same draws (bf16 rounds the per-pixel features differently in each)
        assert smp["check_n10_max_abs_diff"] < (1e-4 if key == "cpu fp32" else 0.1)
        assert {"decode_one", "personalize", "engine_uncertainty_n16"} <= set(cpu["interactive"])
        assert "volume" not in cpu
        assert [r["config"] for r in cpu["training"]["rows"]] == ["unet", "dpersona_stage2"]
    assert any("--skip-3d" in s for s in res["skipped"])
    assert [m["after"] for m in res["memory"]] == ["start (model and test volume built)"] + [
        f"{k}: {s}" for k in runs for s in ("1 sampling", "2 interactive", "3 training")
    ]
    assert all(m["peak_rss_mb"] > 0 for m in res["memory"])
    assert {t["target"] for t in res["targets"]} == {
        "sampling N=100 costs <= 3x N=1",
        "marginal cost per sample <= 0.06 ms ((N=100 - N=1) / 99)",
        "vectorized >= 8x faster than naive at N=100",
        "one latent re-decode < 10 ms",
    }
    assert all(t["result"] == "PASS" or t["result"].startswith("MISS by") for t in res["targets"])

    md = (out / "bench.md").read_text(encoding="utf-8")
    for heading in (
        "## Targets",
        "## Precision side by side",
        "### 1. Sampling latency",
        "### 2. Interactive operations",
        "### 3. Training step",
        "## 4. Peak resident memory",
        "| N | vectorized `sample` |",
    ):
        assert heading in md
    assert md.strip() in capsys.readouterr().out


def test_bench_volume_helpers():
    vol = bench.ct_like_volume((3, 64, 64))
    assert vol.shape == (3, 64, 64) and vol.dtype.name == "float32"
    assert vol.min() < -900 and vol.max() > 400  # air and bone
    assert bench.centred_box((64, 512, 512), (32, 128, 128)) == (16, 192, 192, 48, 320, 320)
    assert bench.centred_box((4, 20, 20), (8, 32, 32)) == (0, 0, 0, 4, 20, 20)
    assert bench._miss(3.0, 2.0, True, "x").startswith("MISS by 1x") and bench._miss(1.0, 2.0, True) == "PASS"
    assert bench._miss(4.0, 5.0, False, "x") == "MISS by 1x (20% short)"
