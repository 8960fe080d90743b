"""Bad input to every ``multirater`` subcommand: exit code 2, one line naming the input, never a
traceback, and no half-written output. Runs ``cli.main(argv)`` in-process (same exit code and
stderr as the console script); a few real subprocess runs are marked ``slow``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_multirater import cli
from napari_multirater.io.geometry import Geometry
from napari_multirater.io.medical import write_image

ROOT = Path(__file__).resolve().parents[1]
CKPT = "phantom_pionono"  # a bundled model (1 MB)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/multirater-pwned",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Small files every case may point at (made once)."""
    d = tmp_path_factory.mktemp("cli_inputs")
    from napari_multirater.datasets.synth import generate_phantom_dataset

    ds = generate_phantom_dataset(d / "ds", 6, n_raters=2, val_fraction=0.34)
    g3 = Geometry((0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    img = np.random.default_rng(0).normal(-500, 200, (4, 64, 64)).astype(np.float32)
    write_image(d / "ct.nii.gz", img, g3)
    nan = img.copy()
    nan[1, 5, 5] = np.nan
    write_image(d / "nan.nii.gz", nan, g3)
    inf = img.copy()
    inf[2, 7, 7] = np.inf
    write_image(d / "inf.nrrd", inf, g3)
    data = (d / "ct.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(data[: len(data) // 3])
    (d / "notes.txt").write_text("not an image")
    (d / "garbage.pt").write_bytes(os.urandom(4000))
    from napari_multirater.modelfiles.registry import find_model

    good = Path(find_model(CKPT)).read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    import torch

    torch.save({"format_version": 1, "x": _Evil()}, d / "evil.pt")
    (d / "bad.json").write_text("{not json")
    (d / "a_file").write_text("x")
    return {
        "ds": str(ds),
        "img": str(d / "ct.nii.gz"),
        "nan": str(d / "nan.nii.gz"),
        "inf": str(d / "inf.nrrd"),
        "trunc": str(d / "truncated.nii.gz"),
        "txt": str(d / "notes.txt"),
        "garbage": str(d / "garbage.pt"),
        "truncpt": str(d / "truncated.pt"),
        "evil": str(d / "evil.pt"),
        "badjson": str(d / "bad.json"),
        "file": str(d / "a_file"),
        "ckpt": CKPT,
        "ckptfile": str(find_model(CKPT)),
    }


T = "train --method unet --data {ds} --out {out} "
E = "evaluate --checkpoint {ckpt} --data {ds} "
P = "predict --checkpoint {ckpt} --image {img} --out {out} "
R = "raters --data {ds} --out {out} "
S = "synth --out {out} "

# (argv template, expected exit code, text that must be in stderr)
CASES = [
    ("", 2, "COMMAND"),
    ("bogus", 2, "bogus"),
    # train
    (T + "--batch-size 0", 2, "--batch-size"),
    (T + "--batch-size -1", 2, "--batch-size"),
    (T + "--max-steps -5", 2, "--max-steps"),
    (T + "--max-steps 0", 2, "--max-steps"),
    (T + "--epochs 0", 2, "--epochs"),
    (T + "--lr -1", 2, "--lr"),
    (T + "--lr nan", 2, "--lr"),
    (T + "--lr fast", 2, "--lr"),
    (T + "--seed -1", 2, "--seed"),
    (T + "--val-samples 0", 2, "--val-samples"),
    (T + "--val-max-images -1", 2, "--val-max-images"),
    (T + "--save-every 0", 2, "--save-every"),
    (T + "--val-every 0", 2, "--val-every"),
    ("train --method nope --data {ds} --out {out}", 2, "--method"),
    ("train --method unet --data /nonexistent/ds --out {out}", 2, "/nonexistent/ds"),
    (T + "--config /nonexistent/c.json", 2, "/nonexistent/c.json"),
    (T + "--config {badjson}", 2, "bad.json"),
    (T + "--select-metric bogus", 2, "bogus"),
    (T + "--batch-size 1000 --max-steps 1", 2, "--batch-size"),
    # evaluate
    (E + "--samples -3", 2, "--samples"),
    (E + "--samples 0", 2, "--samples"),
    (E + "--max-images 0", 2, "--max-images"),
    (E + "--seed -2", 2, "--seed"),
    (E + "--split bogus", 2, "bogus"),
    ("evaluate --checkpoint /nonexistent/m.pt --data {ds}", 2, "/nonexistent/m.pt"),
    ("evaluate --checkpoint {garbage} --data {ds}", 2, "garbage.pt"),
    ("evaluate --checkpoint {truncpt} --data {ds}", 2, "bytes"),
    ("evaluate --checkpoint {evil} --data {ds}", 2, "evil.pt"),
    ("evaluate --checkpoint {ckpt} --data /nonexistent/ds", 2, "/nonexistent/ds"),
    # predict
    (P + "--samples -3", 2, "--samples"),
    (P + "--roi a,b,c,d,e,f", 2, "--roi"),
    (P + "--roi 1,2,3", 2, "--roi"),
    (P + "--roi 0,0,10,10", 2, "--roi"),
    (P + "--roi 0,0,0,0,0,0", 2, "roi"),
    (P + "--roi 10,0,0,20,64,64", 2, "--roi"),
    (P + "--roi-point 1,2", 2, "--roi-point"),
    (P + "--roi-point a,b,c", 2, "--roi-point"),
    (P + "--roi-point 0,0,0 --roi-size-mm 0", 2, "--roi-size-mm"),
    (P + "--roi-point 0,0,0 --roi-size-mm -5", 2, "--roi-size-mm"),
    (P + "--slice -1", 2, "--slice"),
    (P + "--slice 999", 2, "slice"),
    (P + "--batch-slices 0", 2, "--batch-slices"),
    (P + "--target-spacing-mm 0", 2, "--target-spacing-mm"),
    (P + "--target-spacing-mm inf", 2, "--target-spacing-mm"),
    (P + "--seed -1", 2, "--seed"),
    ("predict --checkpoint {ckpt} --image /nonexistent/x.nii.gz --out {out}", 2, "/nonexistent/x.nii.gz"),
    ("predict --checkpoint {ckpt} --image {nan} --out {out}", 2, "NaN"),
    ("predict --checkpoint {ckpt} --image {inf} --out {out}", 2, "inf"),
    ("predict --checkpoint {ckpt} --image {trunc} --out {out}", 2, "truncated"),
    ("predict --checkpoint {ckpt} --image {txt} --out {out}", 2, "notes.txt"),
    ("predict --checkpoint no_such_model --image {img} --out {out}", 2, "no_such_model"),
    ("predict --checkpoint {ckpt} --image {img} --out {file}/sub --samples 1", 2, "a_file"),
    # bench
    ("bench --repeats 0", 2, "--repeats"),
    ("bench --threads 0", 2, "--threads"),
    ("bench --volume-samples -1", 2, "--volume-samples"),
    ("bench --image-size 3", 2, "--image-size"),
    # raters
    (R + "--max-cases 0", 2, "--max-cases"),
    ("raters --data /nonexistent/ds --out {out}", 2, "/nonexistent/ds"),
    ("raters --data {ds} --out {file}/sub --max-cases 2", 2, "a_file"),
    # synth
    (S + "--cases 0", 2, "--cases"),
    (S + "--cases -1", 2, "--cases"),
    (S + "--raters 0", 2, "--raters"),
    (S + "--val-fraction 1.5", 2, "--val-fraction"),
    (S + "--val-fraction nan", 2, "--val-fraction"),
    (S + "--seed -1", 2, "--seed"),
    ("synth --out {file}/sub --cases 2", 2, "a_file"),
    # export / results
    ("export --checkpoint /nonexistent/m.pt --out {out}/m.pt", 2, "/nonexistent/m.pt"),
    ("export --checkpoint {ckptfile} --out {out}/m.pt --eval-json /nonexistent/e.json", 2, "/nonexistent/e.json"),
    ("export --checkpoint {evil} --out {out}/m.pt", 2, "evil.pt"),
    ("export --checkpoint {ckptfile} --out {out}/m.pt --config /nonexistent/o.json", 2, "/nonexistent/o.json"),
    ("export --checkpoint {ckptfile} --out {out}/m.pt --config {badjson}", 2, "bad.json"),
    (E + "--subset nope", 2, "--subset"),
    ("fit-presence --checkpoint /nonexistent/m.pt --data {ds} --out {out}/p.pt", 2, "/nonexistent/m.pt"),
    ("fit-presence --checkpoint {ckptfile} --data {ds} --out {out}/p.pt --steps 0", 2, "--steps"),
    ("results /nonexistent/e.json", 2, "/nonexistent/e.json"),
    ("results {badjson}", 2, "bad.json"),
]


def _argv(template: str, inputs: dict, out: Path) -> list[str]:
    return template.format(out=out, **inputs).split()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("template,code,needle", CASES, ids=[c[0][:60] or "(no args)" for c in CASES])
def test_bad_input_matrix(template, code, needle, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(template, inputs, out)
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    captured = capsys.readouterr()
    err = captured.err
    assert rc == code, (argv, rc, err[-2000:])
    assert "Traceback" not in err + captured.out
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1, err  # one line says what is wrong
    assert needle.lower() in err.lower(), (needle, err)
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    # no output, and never a half-written (temporary) file anywhere near it
    assert not _files(out), _files(out)
    assert not [p for p in tmp_path.rglob("*.tmp*")]
    assert not Path("/tmp/multirater-pwned").exists()


def test_predict_samples_zero_is_the_documented_success(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(_argv(P + "--samples 0 --no-uncertainty", inputs, out))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (out / "prediction.json").is_file() and "Traceback" not in err
    assert not list(out.glob("sample_*"))


def test_parser_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--method", "unet", "--data", "x", "--out", "y", "--batch-size", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --batch-size: must be an integer >= 1, got '0'" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--method", "unet", "--data", "x", "--out", "y", "--max-steps", "-5"], "--max-steps"),
        (["evaluate", "--checkpoint", CKPT, "--data", "x", "--samples", "-3"], "--samples"),
        (["predict", "--checkpoint", CKPT, "--image", "/nonexistent.nii.gz", "--out", "o", "--roi", "a,b"], "--roi"),
    ],
)
def test_console_script_bad_input_subprocess(args, needle, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(
        [sys.executable, "-m", "napari_multirater.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())
