"""Capacity bound: a tiny deterministic U-Net per rater (same widths/budget/crops) -> test Dice with its own rater."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
torch.set_num_threads(1)
OUT = os.environ.get("OUT", "/tmp/dpersona-runs")  # where checkpoints and results go
os.makedirs(OUT, exist_ok=True)
from src_training.evaluate import persona_rater_dice
from src_training.models.registry import build_model
from tests.test_personas_phantom import RATERS, _lesion_crops

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
train = _lesion_crops(range(96), seed=11)
test = _lesion_crops(range(48), seed=12)
rows = []
for k, r in enumerate(RATERS):
    torch.manual_seed(0)
    m = build_model(
        {"method": "unet", "num_raters": 1, "rater_names": [r], "backbone": {"widths": [8, 16, 32], "features": 8}}
    )
    opt = torch.optim.Adam(m.param_groups(3e-3))
    rng = np.random.default_rng(0)
    m.train()
    x, y = train
    for s in range(steps):
        idx = rng.choice(len(x), 12, replace=False)
        o = m.loss({"image": x[idx], "masks": y[idx, k : k + 1], "mask_valid": torch.ones(12, 1, dtype=torch.bool)}, s)
        opt.zero_grad()
        o["loss"].backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        p = torch.sigmoid(m.personalize(test[0])).numpy()[:, :1]
    row = np.nanmean(
        [persona_rater_dice(test[1][i].numpy(), np.ones(4, bool), np.repeat(p[i], 1, 0)) for i in range(48)], 0
    )[0]
    rows.append(np.round(row, 3).tolist())
    print(r, rows[-1], flush=True)
json.dump(rows, open(f"{OUT}/capacity_{steps}.json", "w"))
