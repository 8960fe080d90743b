"""Stage-I code probe on a trained checkpoint and a case-folder dataset (issue 18, round 3).

For each rater k, the posterior mean (encoder output for rater k's own mask plus the learned code of
rater k) is decoded on every slice; row k of the printed matrix is the mean Dice of that output with
each rater. A stage I that keeps the raters apart has a winning diagonal; stage II can only average
prior draws, so it cannot do better. The tiny-crop version is ``dpersona_stage1_probe.py``.

usage: OMP_NUM_THREADS=1 python docs/experiments/dpersona_code_probe.py STAGE1.pt DATA [SPLIT]
(a D-Persona stage-I checkpoint trained with ``posterior_target: "mask+index"``; SPLIT default all)
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from src_training.batching import padded_batch
from src_training.checkpoint import load_checkpoint
from src_training.data import SliceDataset, load_split
from src_training.evaluate import persona_rater_dice

torch.set_num_threads(1)
ckpt, data = sys.argv[1], sys.argv[2]
items = SliceDataset(load_split(data, sys.argv[3] if len(sys.argv) > 3 else "all"), None, rank_raters=False)
model, _ = load_checkpoint(ckpt)
k_raters = model.num_raters
rows, n = np.zeros((k_raters, k_raters)), len(items)
with torch.no_grad():
    for start in range(0, n, 20):
        raws = [items.raw(j) for j in range(start, min(n, start + 20))]
        x, crops = padded_batch(raws)
        if any(sl[0].stop - sl[0].start != x.shape[-2] for sl in crops):
            raise SystemExit("error: the probe needs slices whose size is a multiple of 16")
        y = torch.stack([torch.from_numpy(m).float() for _, m, _ in raws])
        valid = torch.ones(len(raws), k_raters)[:, :, None, None].expand_as(y)
        ctx = model._encode(x)
        for k in range(k_raters):
            mu_q, _ = model._gaussian_fp32(model.posterior, torch.cat([x, y[:, k : k + 1], y, valid], 1))
            z = (mu_q + model.rater_code[k])[:, None]
            probs = torch.sigmoid(model.fcomb.decode(ctx["proj"], z, ctx["size"]))[:, 0].numpy()
            for b, (_, masks, ok) in enumerate(raws):
                rows[k] += persona_rater_dice(masks, ok, probs[b][None].repeat(k_raters, 0))[0]
print(f"{ckpt}: posterior-mean code of rater k decoded (rows) x rater Dice, {n} slices of {data}")
print(np.round(rows / n, 3))
