"""Stage-I latent diagnosis: can the posterior encode each rater, and does the prior cover those codes?"""
import os
from pathlib import Path
import sys, json, numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
torch.set_num_threads(1)
OUT = os.environ.get("OUT", "/tmp/dpersona-runs")  # where checkpoints and results go
os.makedirs(OUT, exist_ok=True)
from tests.test_personas_phantom import _lesion_crops, RATERS
from src_training.models.registry import build_model
from src_training.models.base import deep_merge
from src_training.evaluate import persona_rater_dice
TINY = {"num_raters": 4, "rater_names": RATERS, "backbone": {"widths": [8, 16, 32], "features": 8}, "method": "dpersona"}
name, s1o = sys.argv[1], json.loads(sys.argv[2])
m = build_model(deep_merge(TINY, s1o)); m.load_state_dict(torch.load(f"{OUT}/{name}_s1.pt", weights_only=True)); m.eval()
x, y = _lesion_crops(range(48), seed=12)
valid = torch.ones(48, 4)
with torch.no_grad():
    ctx = m._encode(x); mu_p, s_p = ctx["prior"]
    zs, recs = [], []
    for k in range(4):
        post = [x, y[:, k:k+1], y] if m.config["posterior_target"] else [x, y]
        post.append(valid[:, :, None, None].expand_as(y))

        mu_q, s_q = m._gaussian_fp32(m.posterior, torch.cat(post, 1))
        if m.config["posterior_target"] == "mask+index": mu_q = mu_q + m.rater_code[k]
        zs.append(mu_q); recs.append(torch.sigmoid(m.fcomb.decode(ctx["proj"], mu_q[:, None], ctx["size"]))[:, 0])
    P = torch.stack(recs, 1).numpy()
    mat = np.nanmean([persona_rater_dice(y[i].numpy(), np.ones(4, bool), P[i]) for i in range(48)], 0)
    Z = torch.stack(zs, 1)  # (B, K, L)
    zn = ((Z - mu_p[:, None]) / s_p[:, None])  # posterior means in prior-sigma units
    pair = torch.cdist(Z, Z).sum((1, 2)) / 12
print(name, "posterior-mean reconstruction (row = posterior fed rater k's mask) x rater Dice:\n", np.round(mat, 3))
print("posterior means in prior sigma units |z-mu_p|/sigma_p per rater:", np.round(zn.norm(dim=-1).mean(0).numpy(), 2),
      "mean pairwise dist between raters' posterior means / |sigma_p|:", round(float((pair / s_p.norm(dim=1)).mean()), 3),
      "prior sigma mean:", round(float(s_p.mean()), 3), "posterior sigma mean:", round(float(s_q.mean()), 3))
