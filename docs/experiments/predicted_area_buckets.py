"""Mean predicted area per slice against the raters' areas, by how many raters marked the slice
(LIDC val, area-ranked raters, one output per slice: for deterministic models such as U-Net and
UMA-Net). Shows whether a model is conservative (near the raters' intersection) or not.

usage: OMP_NUM_THREADS=1 python docs/experiments/predicted_area_buckets.py CKPT [CKPT ...]
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from src_training import metrics as M
from src_training.checkpoint import load_checkpoint
from src_training.data import SliceDataset, load_split

torch.set_num_threads(1)
items = SliceDataset(load_split("../shared/data/lidc-slices", "val"), None, rank_raters=True)
for ckpt in sys.argv[1:]:
    model, _ = load_checkpoint(ckpt)
    model.eval()
    rows: dict[int, list] = {b: [] for b in range(1, 5)}
    with torch.no_grad():
        for i in range(len(items)):
            image, masks, valid = items.raw(i)
            areas = masks.reshape(len(masks), -1).sum(1)
            n_marked = M.n_marked(masks, valid)
            if n_marked == 0:
                continue
            x = torch.from_numpy(np.asarray(image, np.float32))[None, None]
            pred = torch.sigmoid(model.sample(x, 1))[0, 0].numpy() > 0.5
            rows[n_marked].append((pred.sum(), areas[areas > 0].mean(), masks.all(0).sum(), masks.any(0).sum()))
    for b in range(1, 5):
        a = np.array(rows[b], float)
        print(
            f"{ckpt}  {b} rater(s), n={len(a)}: predicted {a[:, 0].mean():.1f} px, marking rater mean {a[:, 1].mean():.1f},"
            f" intersection {a[:, 2].mean():.1f}, union {a[:, 3].mean():.1f}"
        )
