"""Crafted checkpoints (issue 27, section 3): wrong types, absurd sizes, NaN weights and file-name
rater names are refused at load time with one line, before a model is built; non-finite outputs warn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_multirater import cli
from napari_multirater.inference.engine import InferenceEngine, ModelLoadError
from src_training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from src_training.models import build_model
from tests.test_models import tiny_config

torch.set_num_threads(1)
CARD = {"method": "unet", "intensity": {"window": [-1000.0, 400.0]}}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The raw dict of a tiny valid checkpoint (D-Persona: it has heads.n_infer and personas)."""
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "good.pt", build_model(tiny_config("dpersona")), CARD)
    return torch.load(path, weights_only=True)


def crafted(tmp_path, good, change) -> str:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
    data["config"] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good["config"].items()}
    change(data)
    path = tmp_path / "crafted.pt"
    torch.save(data, path)
    return str(path)


def test_model_card_of_the_wrong_type_is_one_line(tmp_path, good, capsys):
    """Was: a list as model_card gave a TypeError traceback from predict / the Model dock."""
    path = crafted(tmp_path, good, lambda d: d.update(model_card=["not", "a", "card"]))
    img = tmp_path / "x.npy"
    rc = cli.main(["predict", "--checkpoint", path, "--image", str(img), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "model_card must be a dict" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "key, value, word",
    [
        ("input", "abc", "input must be a dict"),
        ("notes", [1, 2], "notes"),
        ("val_samples", 10**9, "val_samples"),
    ],
)
def test_model_card_fields_are_type_checked(tmp_path, good, key, value, word):
    path = crafted(tmp_path, good, lambda d: d["model_card"].update({key: value}))
    with pytest.raises(CheckpointError, match=word):
        load_checkpoint(path)


def test_absurd_config_sizes_are_refused_before_building(tmp_path, good):
    """Was: heads.n_infer = 1e9 loaded fine and exhausted memory at the first prediction."""
    path = crafted(tmp_path, good, lambda d: d["config"]["heads"].update(n_infer=10**9))
    with pytest.raises(CheckpointError, match=r"heads.n_infer = 1000000000 is out of range"):
        load_checkpoint(path)


def test_huge_widths_are_refused_before_allocating(tmp_path, good):
    path = crafted(tmp_path, good, lambda d: d["config"]["backbone"].update(widths=[4096] * 8, convs_per_block=4))
    with pytest.raises(CheckpointError, match="parameters"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "change",
    [lambda c: c.update(heads="abc"), lambda c: c["backbone"].update(widths=[[8], [16]])],
    ids=["heads-text", "nested-widths"],
)
def test_wrong_config_types_are_one_line(tmp_path, good, change):
    """Was: a TypeError traceback from inside the model's constructor."""
    with pytest.raises(CheckpointError, match="model"):
        load_checkpoint(crafted(tmp_path, good, lambda d: change(d["config"])))


def test_non_finite_weights_are_refused(tmp_path, good):
    """Was: NaN weights loaded and gave an all-zero "confident no lesion" with no warning."""

    def poison(d):
        d["state_dict"] = dict(d["state_dict"])
        name = next(k for k, v in d["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
        w = d["state_dict"][name].clone()
        w.view(-1)[0] = float("nan")
        d["state_dict"][name] = w

    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(crafted(tmp_path, good, poison))


def test_non_finite_outputs_warn(tmp_path, good):
    path = crafted(tmp_path, good, lambda d: None)
    engine = InferenceEngine.load(path, device="cpu", precision="fp32")
    with torch.no_grad():
        for p in engine.model.parameters():
            p.fill_(float("nan"))
    engine.sample(np.zeros((32, 32), np.float32), n=2)
    assert any("non-finite" in w for w in engine.warnings)


@pytest.mark.parametrize("name", ["a/../../X", "../evil", "/abs", "a b"])
def test_rater_names_that_are_not_identifiers_are_refused_at_load(tmp_path, good, name):
    """Was: rater_names ['a/../../X', ...] made predict --personas write persona_<name> outside --out."""

    def rename(d):
        names = list(d["config"]["rater_names"])
        names[0] = name
        d["config"]["rater_names"] = names

    with pytest.raises(ModelLoadError, match="rater"):
        InferenceEngine.load(crafted(tmp_path, good, rename), device="cpu")


def test_per_rater_lists_follow_the_rater_limit_not_the_width_limit():
    """A model of 9 raters with a fitted presence head (one train frequency per rater) and any
    seed for its persona bank is a valid config; 300 rater names are not."""
    from src_training.models.config_check import check_model_config

    names = [f"r{k}" for k in range(9)]
    cfg = tiny_config("pionono", num_raters=9, rater_names=names)
    cfg["presence"] = {"enabled": True, "hidden": 4, "train_frequency": [0.5] * 9}
    cfg["heads"] = {**cfg["heads"], "bank_seed": 12345}
    check_model_config(cfg)
    many = [f"r{k}" for k in range(300)]
    with pytest.raises(ValueError, match="rater_names has 300 entries"):
        check_model_config(tiny_config("pionono", num_raters=256, rater_names=many))
