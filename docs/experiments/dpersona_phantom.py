"""D-Persona phantom ablation: stage I -> stage II (val-selected) -> persona x rater Dice on a held-out test set.

usage: OUT=DIR OMP_NUM_THREADS=1 python docs/experiments/dpersona_phantom.py NAME '{"stage1 overrides"}' '{"stage2 head overrides"}' [s1_steps s2_steps lr2 s1_from]
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
OUT = os.environ.get("OUT", "/tmp/dpersona-runs")  # where checkpoints and results go
os.makedirs(OUT, exist_ok=True)
torch.set_num_threads(1)
from src_training.models.base import deep_merge
from src_training.models.dpersona import dpersona_stage2_from_stage1
from src_training.models.registry import build_model
from tests.test_personas_phantom import RATERS, _lesion_crops, _persona_matrix

name = sys.argv[1]
s1o = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
s2o = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
S1 = int(sys.argv[4]) if len(sys.argv) > 4 else 400
S2 = int(sys.argv[5]) if len(sys.argv) > 5 else 300
LR2 = float(sys.argv[6]) if len(sys.argv) > 6 else 3e-3
S1FROM = sys.argv[7] if len(sys.argv) > 7 else ""
LR1 = 3e-3
TINY = {
    "num_raters": 4,
    "rater_names": RATERS,
    "backbone": {"widths": [8, 16, 32], "features": 8},
    "method": "dpersona",
}
torch.manual_seed(0)
train = _lesion_crops(range(96), seed=11)
val = _lesion_crops(range(1000, 1024), seed=11)
test = _lesion_crops(range(48), seed=12)  # another phantom series: never seen, never selected on
out = {"name": name, "s1": s1o, "s2": s2o, "S1": S1, "S2": S2, "lr2": LR2}
t0 = time.time()


def run(model, steps, lr, data, hook=None, every=50):
    x, y = data
    opt = torch.optim.Adam(model.param_groups(lr))
    rng = np.random.default_rng(0)
    model.train()
    for step in range(steps):
        idx = rng.choice(len(x), 12, replace=False)
        o = model.loss({"image": x[idx], "masks": y[idx], "mask_valid": torch.ones(12, 4, dtype=torch.bool)}, step)
        opt.zero_grad()
        o["loss"].backward()
        opt.step()
        if hook and ((step + 1) % every == 0 or step + 1 == steps):
            hook(step + 1)
            model.train()
    return model.eval()


cfg1 = deep_merge(TINY, s1o)
if S1FROM:
    sd = torch.load(S1FROM, weights_only=True)
    m1 = build_model(cfg1)
    m1.load_state_dict(sd)
else:
    torch.manual_seed(0)
    m1 = run(build_model(cfg1), S1, LR1, train)
    torch.save(m1.state_dict(), f"{OUT}/{name}_s1.pt")
m1.eval()
# stage-I oracle: best of 100 prior samples per test image, per rater (what the bank can reach)
with torch.no_grad():
    xs, ys = test
    smp = torch.sigmoid(m1.sample(xs, 100, generator=torch.Generator().manual_seed(0))).numpy() > 0.5
    yt = ys.numpy() > 0.5
    inter = (smp[:, None] & yt[:, :, None]).sum((-1, -2))
    tot = smp[:, None].sum((-1, -2)) + yt[:, :, None].sum((-1, -2))
    d = np.where(tot > 0, 2 * inter / np.maximum(tot, 1), 1.0)  # (B, K raters, S)
    out["oracle_best_sample_per_rater"] = np.round(d.max(-1).mean(0), 3).tolist()
print(name, "stage I done", round(time.time() - t0), "s; oracle", out["oracle_best_sample_per_rater"], flush=True)

torch.manual_seed(1)
m2 = dpersona_stage2_from_stage1(m1.state_dict(), m1.config, {"heads": s2o})
best = {"score": -1}
hist = []


def hook(step):
    mat = _persona_matrix(m2.eval(), val)
    diag = m2.diagnostics(val[0][:12], generator=torch.Generator().manual_seed(0))
    score = float(np.mean(np.diag(mat)))
    hist.append({"step": step, "val_identity": round(score, 4), **{k: round(v, 3) for k, v in diag.items()}})
    print(hist[-1], flush=True)
    if score > best["score"]:
        best.update(score=score, step=step, state={k: v.clone() for k, v in m2.state_dict().items()})


run(m2, S2, LR2, train, hook)
m2.load_state_dict(best["state"])
mat = _persona_matrix(m2.eval(), test)
diag = np.diag(mat)
margin = [float(mat[k, k] - np.delete(mat[k], k).max()) for k in range(4)]
out.update(
    best_step=best["step"],
    val_identity=round(best["score"], 4),
    test_matrix=np.round(mat, 3).tolist(),
    test_diag=np.round(diag, 3).tolist(),
    rows_won=int(sum(m > 0 for m in margin)),
    min_margin=round(min(margin), 3),
    margins=np.round(margin, 3).tolist(),
    history=hist,
    test_diagnostics={
        k: round(v, 3) for k, v in m2.diagnostics(test[0][:24], generator=torch.Generator().manual_seed(0)).items()
    },
    seconds=round(time.time() - t0),
)
print(json.dumps({k: v for k, v in out.items() if k != "history"}), flush=True)
json.dump(out, open(f"{OUT}/{name}.json", "w"), indent=1)
