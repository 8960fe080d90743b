"""Stage-I latent diagnosis: does each rater's posterior code decode to that rater, on the training
crops and on held-out crops, and does the posterior encoder itself see which rater's mask it got?

usage: OUT=DIR OMP_NUM_THREADS=1 python docs/experiments/dpersona_stage1_probe.py NAME '{"stage1 overrides"}'
(NAME_s1.pt from dpersona_phantom.py in OUT)
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
torch.set_num_threads(1)
OUT = os.environ.get("OUT", "/tmp/dpersona-runs")  # where checkpoints and results go
from src_training.evaluate import persona_rater_dice
from src_training.models.base import deep_merge
from src_training.models.registry import build_model
from tests.test_personas_phantom import RATERS, _lesion_crops

TINY = {
    "num_raters": 4,
    "rater_names": RATERS,
    "backbone": {"widths": [8, 16, 32], "features": 8},
    "method": "dpersona",
}
name, s1o = sys.argv[1], json.loads(sys.argv[2])
m = build_model(deep_merge(TINY, s1o))
m.load_state_dict(torch.load(f"{OUT}/{name}_s1.pt", weights_only=True))
m.eval()
target = m.config["posterior_target"]
for label, (x, y) in (("train", _lesion_crops(range(48), seed=11)), ("test", _lesion_crops(range(48), seed=12))):
    n = len(x)
    valid = torch.ones(n, 4)
    with torch.no_grad():
        ctx = m._encode(x)
        mu_p, s_p = ctx["prior"]
        enc, rows, zs = [], [], []
        for k in range(4):
            post = [x, y[:, k : k + 1], y] if target else [x, y]
            post.append(valid[:, :, None, None].expand_as(y))
            mu_q, s_q = m._gaussian_fp32(m.posterior, torch.cat(post, 1))
            enc.append(mu_q)
            if target == "mask+index":
                mu_q = mu_q + m.rater_code[k]
            zs.append(mu_q)
            p = torch.sigmoid(m.fcomb.decode(ctx["proj"], mu_q[:, None], ctx["size"]))[:, 0].numpy()
            rows.append(
                np.nanmean(
                    [persona_rater_dice(y[i].numpy(), np.ones(4, bool), p[i][None].repeat(4, 0))[0] for i in range(n)],
                    0,
                )
            )
        Z = torch.stack(zs, 1)
        pair = torch.cdist(Z, Z).sum((1, 2)) / 12
    print(f"{name} {label}: posterior mean of rater k decoded (row k) x rater Dice:\n{np.round(np.array(rows), 3)}")
    print(
        f"  encoder output distance to the tight-mask one (before any rater code): "
        f"{np.round([float((e - enc[0]).norm(dim=1).mean()) for e in enc], 3).tolist()}; "
        f"raters' posterior means, mean pairwise distance / |sigma_p|: {float((pair / s_p.norm(dim=1)).mean()):.3f}; "
        f"prior sigma {float(s_p.mean()):.3f}, posterior sigma {float(s_q.mean()):.3f}",
        flush=True,
    )
