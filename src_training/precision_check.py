"""Is bf16 inference safe for a checkpoint? fp32 and bf16 outputs on the same images and draws.

``python -m src_training.precision_check --checkpoint lidc_dpersona --data ../shared/data/lidc-slices
--split val --samples 10 --json out.json`` runs the model twice per batch (fp32; bf16 autocast +
channels_last) with identical random draws and reports the share of pixels whose mask at 0.5 agrees
(samples and personas) and every aggregate metric in both precisions with their difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import numpy as np
import torch

from . import metrics as M
from .batching import padded_batch
from .data import SliceDataset, load_split
from .evaluate import align_raters, predict_batch, resolve_checkpoint
from .precision import FP32, prepare_model, resolve_precision

HEADLINE = ("ged", "ged_dpersona", "dice_soft", "dice_max", "dice_max_reverse", "dice_match")


def compare(
    model,
    items: SliceDataset,
    n_samples: int,
    seed: int = 0,
    batch_size: int = 16,
    max_images: int | None = None,
    progress=None,
) -> dict:
    """Agreement of fp32 and bf16 masks at 0.5, and the metrics of both, over ``items``."""
    bf16 = resolve_precision("bf16", "cpu")
    m32 = prepare_model(model.eval(), FP32)
    m16 = prepare_model(copy.deepcopy(model).eval(), bf16)
    g32, g16 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    n = len(items) if max_images is None else min(len(items), max_images)
    res = {"fp32": [], "bf16": []}
    same = {"samples": [0, 0], "personas": [0, 0]}
    max_prob_diff = 0.0
    for start in range(0, n, batch_size):
        raws = [items.raw(i) for i in range(start, min(start + batch_size, n))]
        x, crops = padded_batch(raws)
        s32, p32 = predict_batch(m32, x, n_samples, g32, FP32)
        s16, p16 = predict_batch(m16, x, n_samples, g16, bf16)
        for b, ((_, masks, valid), sl) in enumerate(zip(raws, crops)):
            crop = lambda a: a[b][:, sl[0], sl[1]]  # noqa: E731
            for key, a, c in (("samples", crop(s32), crop(s16)), ("personas", crop(p32), crop(p16))):
                same[key][0] += int(((a > 0.5) == (c > 0.5)).sum())
                same[key][1] += a.size
                max_prob_diff = max(max_prob_diff, float(np.abs(a - c).max()))
            res["fp32"].append(M.evaluate_image(masks, crop(s32), valid, crop(p32)))
            res["bf16"].append(M.evaluate_image(masks, crop(s16), valid, crop(p16)))
        if progress:
            progress(min(start + batch_size, n), n)
    k = range(1, len(items.rater_names) + 1)
    agg = {p: M.aggregate(r, buckets=k) for p, r in res.items()}
    return {
        "n_images": n,
        "n_samples": n_samples,
        "seed": seed,
        "mask_agreement": {key: v[0] / max(v[1], 1) for key, v in same.items()},
        "max_abs_prob_diff": max_prob_diff,
        "metrics": {
            m: {
                "fp32": float(agg["fp32"][m]),
                "bf16": float(agg["bf16"][m]),
                "diff": float(agg["bf16"][m] - agg["fp32"][m]),
            }
            for m in HEADLINE
        },
        "bf16": bf16.describe(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m src_training.precision_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file or bundled model name")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--max-images", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    from .checkpoint import CheckpointError, load_checkpoint

    try:
        model, card = load_checkpoint(resolve_checkpoint(args.checkpoint))
        dataset = load_split(args.data, None if args.split == "all" else args.split)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    window = (card.get("intensity") or {}).get("window") or getattr(dataset, "intensity_window", None) or [0, 255]
    rank = bool(card.get("raters_ranked_by_area", False))
    align_raters(dataset, list(model.rater_names), rank)
    items = SliceDataset(dataset, window, rank_raters=rank, augment=None, max_cases=args.max_images)
    out = compare(
        model,
        items,
        args.samples,
        args.seed,
        max_images=args.max_images,
        progress=lambda d, t: print(f"{d}/{t}", file=sys.stderr, flush=True) if d % 320 == 0 or d == t else None,
    )
    out.update({"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split})
    text = json.dumps(out, indent=2)
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
