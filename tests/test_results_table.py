"""`multirater results`: README tables are copied from evaluate JSONs, bad files give a clear error."""

import json

import pytest

from src_training.results_table import ResultsError, load_results, persona_matrix_table, render


def _ev(method, ged, checkpoint="run/best.pt"):
    bucket = {
        "ged": ged,
        "ged_dpersona": 0.5,
        "dice_soft": 0.6,
        "dice_match": 0.7,
        "dice_each_identity_mean": 0.4,
        "n_images": 3,
    }
    return {
        "method": method,
        "checkpoint": checkpoint,
        "ged": ged,
        "ged_dpersona": 0.25,
        "dice_soft": 0.6,
        "dice_max": 0.8,
        "dice_max_reverse": 0.65,
        "dice_match": 0.7,
        "dice_each_identity": [0.1, 0.2],
        "dice_each_identity_mean": 0.15,
        "dice_each_matched": [0.3, None],
        "dice_each_matched_mean": 0.3,
        "n_images": 5,
        "n_samples": 10,
        "per_bucket": {"1": bucket, "2": dict(bucket, n_images=2)},
        "rater_names": ["a", "b"],
        "persona_rater_dice": [[0.9, 0.2], [0.3, 0.8]],
        "data": "d",
        "split": "val",
    }


def test_results_tables_copy_the_json_numbers(tmp_path):
    p1, p2 = tmp_path / "x.json", tmp_path / "y.json"
    p1.write_text(json.dumps(_ev("dpersona", 0.12345, "runs/lidc_dpersona_stage2/best.pt")))
    p2.write_text(json.dumps(_ev("unet", 0.5)))
    out = render([p1, p2])
    assert "| dpersona stage II | 10 | 0.123 | 0.250 | 0.600 | 0.800 | 0.650 | 0.700 | 0.150 | 0.300 |" in out
    assert "| unet | a identity / matched" not in out and "| unet | 0.100 / 0.300 | 0.200 / n/a |" in out
    assert "| method | metric | 1 rater(s), n=3 | 2 rater(s), n=2 |" in out
    assert "| unet | ged | 0.500 | 0.500 |" in out
    p1.write_text(json.dumps(dict(_ev("dpersona", 0.1, "models/phantom_dpersona.pt"), stage=2)))
    assert "| dpersona stage II |" in render([p1])
    mat = persona_matrix_table(_ev("proseg", 0.1))
    assert "| a | **0.900** | 0.200 |" in mat and "| b | 0.300 | **0.800** |" in mat


def test_stage_two_results_show_prior_samples_and_expert_outputs_as_labelled_rows(tmp_path):
    ev = dict(_ev("dpersona", 0.4), stage=2)
    ev["experts"] = {
        "ged": 0.9,
        "ged_dpersona": 0.8,
        "dice_soft": 0.55,
        "dice_max": 0.75,
        "dice_max_reverse": 0.5,
        "dice_match": 0.45,
        "per_bucket": {"1": {"ged": 0.7, "dice_match": 0.35}, "2": {"ged": 0.6, "dice_match": 0.25}},
    }
    p = tmp_path / "s2.json"
    p.write_text(json.dumps(ev))
    out = render([p])
    assert (
        "| dpersona stage II (prior samples) | 10 | 0.400 | 0.250 | 0.600 | 0.800 | 0.650 | 0.700 | 0.150 | 0.300 |"
        in out
    )
    assert (
        "| dpersona stage II (K expert outputs) | 2 | 0.900 | 0.800 | 0.550 | 0.750 | 0.500 | 0.450 | 0.150 | 0.300 |"
        in out
    )
    assert "| dpersona stage II (K expert outputs) | ged | 0.700 | 0.600 |" in out
    assert "| dpersona stage II (K expert outputs) | dice_each_identity_mean | 0.400 | 0.400 |" in out
    assert out.count("0.100 / 0.300") == 1  # per-expert Dice is the personas', listed once
    assert "| dpersona stage II | 0.100 / 0.300 | 0.200 / n/a |" in out
    personas = render([p], personas=True)
    assert personas.startswith("**dpersona stage II**") and personas.count("persona \\ rater") == 1


def test_results_refuses_files_that_are_not_evaluate_output(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ged": 1.0}))
    with pytest.raises(ResultsError, match="missing dice_match, per_bucket, n_images"):
        load_results([bad])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ResultsError, match="cannot read"):
        load_results([broken])


def test_plot_curves_reads_logs_and_writes_png(tmp_path):
    from src_training.plot_curves import main, read_column

    for name, losses in (("a", [0.9, 0.7, 0.5]), ("b", [0.8, 0.6, 0.55])):
        run = tmp_path / name
        run.mkdir()
        rows = ["step,epoch,loss"] + [f"{10 * (i + 1)},0,{v}" for i, v in enumerate(losses)]
        (run / "log.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert read_column(tmp_path / "a", "loss") == ([10, 20, 30], [0.9, 0.7, 0.5])
    out = tmp_path / "curves.png"
    assert main(["--panel", f"m:fp32={tmp_path / 'a'},bf16={tmp_path / 'b'}", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--panel", "no-runs", "--out", str(out)]) == 2
