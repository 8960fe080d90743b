"""Rater x rater Dice on LIDC val (area-ranked raters), in the convention of ``persona_rater_dice``:
row i = rater i's mask used as if it were persona i, column j = rater j. It is the reference for a
D-Persona persona x rater matrix on LIDC: how close neighbouring area ranks are to each other.

usage: OMP_NUM_THREADS=1 python docs/experiments/lidc_rater_matrix.py [DATA]  (default ../shared/data/lidc-slices)
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from src_training.data import SliceDataset, load_split
from src_training.evaluate import persona_rater_dice

items = SliceDataset(
    load_split(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/lidc-slices", "val"), None, rank_raters=True
)
mats = []
for i in range(len(items)):
    _, masks, valid = items.raw(i)
    mats.append(persona_rater_dice(masks, valid, masks.astype(np.float32)))
m = np.nanmean(np.stack(mats), 0)
print(f"{len(mats)} val slices")
print(np.round(m, 3))
