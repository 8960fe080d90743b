"""What one deterministic output can reach on LIDC val, per bucket, when the raters' masks are known.

Each rule builds one mask from the raters (empty, union, at least 2 / 3 / 4 raters) and is scored
as a deterministic model is (the same mask as every sample, Hungarian dice_match against every
valid rater), on the first 600 val slices, raters area-ranked.

usage: python docs/experiments/oracle_buckets.py [DATA] [MAX_SLICES]
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from src_training import metrics as M
from src_training.data import SliceDataset, load_split

data = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/lidc-slices"
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 600
items = SliceDataset(load_split(data, "val"), [0, 255], rank_raters=True, max_cases=limit)
rules = {
    "empty": lambda m: np.zeros_like(m[0]),
    "union (>=1)": lambda m: m.max(0),
    ">=2 raters": lambda m: m.sum(0) >= 2,
    ">=3 raters": lambda m: m.sum(0) >= 3,
    "all 4": lambda m: m.sum(0) >= 4,
}
res: dict[str, dict[int, list[float]]] = {k: {} for k in rules}
for i in range(len(items)):
    img, masks, valid = items.raw(i)
    n = int(((masks.reshape(masks.shape[0], -1).max(1) > 0) & valid).sum())
    for k, f in rules.items():
        p = np.asarray(f(masks), np.float32)[None].repeat(masks.shape[0], 0)
        res[k].setdefault(n, []).append(M.dice_match(masks, p, valid))
for k, d in res.items():
    allv = [v for vals in d.values() for v in vals]
    buckets = " ".join(f"{b}:{np.nanmean(d[b]):.3f}(n={len(d[b])})" for b in sorted(d))
    print(f"{k:12s} all {np.nanmean(allv):.3f} | {buckets}")
