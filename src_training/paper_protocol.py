"""The papers' evaluation protocol (``multirater evaluate --paper-protocol``), next to the project's own.

What differs from the project's protocol (``evaluate`` without the flag):
- only slices marked by every rater (LIDC: all four) are scored;
- each method is scored on ONE output set that feeds every metric, the set its reference code
  scores (``model.reference_outputs``): D-Persona stage I / Prob. U-Net 50 prior samples,
  D-Persona stage II its K expert outputs, Pionono per rater the mean of 20 MC logits, ProSeg
  13 draws per rater with the boundary latent Z sampled; deterministic methods repeat their one
  prediction;
- per-expert Dice is the reference's Hungarian-matched Dice_each (not head k against rater k);
- GED in the reference's convention (``ged_dpersona``: d(empty, empty) = 1, diagonal included).
The published rows are quoted from the literature for context and were measured under another
protocol (``PROTOCOL_DIFFERENCES``): they are not comparable number for number.
"""

from __future__ import annotations

import numpy as np
import torch

from . import metrics as M
from .batching import padded_batch
from .data import SliceDataset
from .precision import FP32, Precision, autocast, prepare_input

PAPER_KEYS = ("ged_dpersona", "dice_soft", "dice_max", "dice_max_reverse", "dice_match", "dice_each_matched_mean")

# D-Persona on LIDC as reported by later work (K = 50 for stage I); keys as PAPER_KEYS.
PUBLISHED = (
    (
        "D-Persona stage I, published (K=50)",
        {"ged_dpersona": 0.136, "dice_soft": 0.905, "dice_max": 0.914, "dice_match": 0.913},
    ),
    ("D-Persona stage II, published", {"dice_match": 0.892}),
)
PROTOCOL_DIFFERENCES = (
    "The published figures come from a slice-level (image-level) 4-fold split, so slices of one nodule "
    "appear in train and test; checkpoints were selected on the test fold (no separate validation set); "
    "the backbone is an ImageNet-pretrained ResNet34 U-Net; the data are 1,609 curated 128x128 LIDC slices "
    "marked by all four readers. This project's rows use a patient-level split, checkpoints selected on "
    "val only, backbones trained from scratch, and the project's own LIDC shards."
)


def all_marked(masks: np.ndarray, valid: np.ndarray) -> bool:
    """True when every rater is valid and drew something (the papers' LIDC slices)."""
    valid = np.asarray(valid, bool)
    return bool(valid.all()) and M.n_marked(masks, valid) == len(valid)


@torch.inference_mode()
def reference_probabilities(model, images: torch.Tensor, generator, precision: Precision = FP32) -> np.ndarray:
    """Sigmoid of ``model.reference_outputs`` (B, S, H, W) as float32 numpy; metrics stay fp32."""
    images = prepare_input(images, precision)
    with autocast(precision, images.device):
        logits = model.reference_outputs(images, generator=generator)
    return torch.sigmoid(logits.float()).cpu().numpy()


def evaluate_paper_protocol(
    model,
    items: SliceDataset,
    *,
    device="cpu",
    batch_size: int = 4,
    seed: int = 0,
    max_images: int | None = None,
    progress=None,
    precision: Precision = FP32,
) -> dict:
    """The papers' protocol on the images of ``items`` that every rater marked (see module doc)."""
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    n_all = len(items) if max_images is None else min(len(items), max_images)
    keep = [i for i in range(n_all) if all_marked(*items.raw(i)[1:])]
    results, n_outputs = [], 0
    for start in range(0, len(keep), batch_size):
        raws = [items.raw(i) for i in keep[start : start + batch_size]]
        x, crops = padded_batch(raws, device)
        probs = reference_probabilities(model, x, gen, precision)
        n_outputs = probs.shape[1]
        for b, ((_, masks, valid), sl) in enumerate(zip(raws, crops)):
            out = probs[b][:, sl[0], sl[1]]
            results.append(M.evaluate_image(masks, out, valid, out))
        if progress:
            progress(min(start + batch_size, len(keep)), len(keep))
    agg = M.aggregate(results)
    agg.update(
        {"protocol": "paper", "n_outputs": int(n_outputs), "n_images_considered": int(n_all), "n_images": len(results)}
    )
    agg["conventions"] = dict(agg.get("conventions") or {})
    agg["conventions"].update(
        {
            "protocol": "the papers' protocol: only images every rater marked; one output set per image feeds every "
            "metric (model.reference_outputs: the set the method's reference code scores)",
            "dice_each_matched": "per-expert Dice = the Hungarian-matched Dice of each rater against the output set "
            "(the reference's Dice_each); it does not check that output k is rater k's",
            "ged_dpersona": "GED with d(empty, empty) = 1 and the diagonal included (the reference's convention)",
        }
    )
    return agg
