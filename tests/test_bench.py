"""``multirater bench`` smoke test: tiny settings, output structure only (a test never times things)."""

from __future__ import annotations

import json

from napari_multirater.cli import main as cli_main
from src_training.tools import bench, bench_report
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
            "--skip-contention",
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
        "marginal cost per sample <= 0.2 ms ((N=100 - N=1) / 99)",
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


def _stub_reference(root):
    """A stand-in with the reference code's layout and call signatures (not its code)."""
    (root / "code" / "lib").mkdir(parents=True)
    (root / "code" / "pionono_models").mkdir()
    (root / "code" / "pionono_models" / "segmentation_backbone.py").write_text("def Unet(**kw):\n    return kw\n")
    (root / "code" / "lib" / "DPersona.py").write_text(
        "import torch\n"
        "device = torch.device('cpu')\n"
        "class DPersona(torch.nn.Module):\n"
        "    def __init__(self, input_channels=1, num_classes=1, latent_dim=6, no_convs_fcomb=4, num_experts=4,\n"
        "                 reg_factor=1.0, original_backbone=False):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(input_channels, num_classes, 1)\n"
        "    def val_step(self, images, sample_num=50):\n"
        "        return torch.cat([self.conv(images)] * sample_num, 1)\n"
    )


def test_side_by_side_imports_the_reference_from_the_given_path(tmp_path, monkeypatch):
    import sys

    from src_training.tools import bench_reference as br

    for m in [m for m in sys.modules if m.split(".")[0] in br._TOP_LEVEL]:
        monkeypatch.delitem(sys.modules, m)
    s = bench.Settings.quick_settings()
    s.repeats, s.image_size, s.sample_ns = 1, 32, (1, 10)
    engine = bench.build_engine(None, "dpersona")
    missing = br.bench_reference(engine, tmp_path / "nowhere", s, ("fp32",))
    assert "no lib/DPersona.py" in missing["skipped"]
    _stub_reference(tmp_path / "D-Persona")
    res = br.bench_reference(engine, tmp_path, s, ("fp32",))
    assert res["reference_code"].endswith("code") and [r["n"] for r in res["rows"]] == [1, 10]
    assert set(res["rows"][0]["speedup"]) == {"ours fp32"} and res["rows"][0]["reference"]["n"] == 3
    md = "\n".join(bench_report.reference_section({"reference": res}))
    assert "| N | ours fp32 (ms) | reference (ms) | speed-up ours fp32 |" in md
    for m in [m for m in sys.modules if m.split(".")[0] in br._TOP_LEVEL]:
        monkeypatch.delitem(sys.modules, m)


def test_contention_report_and_target():
    t = lambda ms: {"median": ms, "p10": ms, "p90": ms, "n": 3}  # noqa: E731
    con = {
        "competitor": {"threads": 2, "work": "matmuls"},
        "loadavg_start": 3.5,
        "loadavg_end": 3.6,
        "auto": {"threads": 1, "precision": "bf16", "calibration_s": 0.4, "reason": "r", "probe_ms": {"a": 1.0}},
        "rows": [
            {"n": 1, "times": {"1 thread(s) fp32": t(40.0), "auto": t(44.0)}, "best_fixed": "1 thread(s) fp32"},
            {"n": 100, "times": {"1 thread(s) fp32": t(100.0), "auto": t(170.0)}, "best_fixed": "1 thread(s) fp32"},
        ],
    }
    for r in con["rows"]:
        r["auto_over_best"] = r["times"]["auto"]["median"] / r["times"]["1 thread(s) fp32"]["median"]
    (target,) = bench_report.evaluate_targets({"devices": {}, "contention": con})
    assert target["measured"].startswith("1.70x (N=100") and target["result"].startswith("MISS by 0.2x")
    md = "\n".join(bench_report.contention_section({"contention": con}))
    assert "chose **1 thread(s), bf16**" in md and "| **auto / best fixed** | 1.10x" in md
