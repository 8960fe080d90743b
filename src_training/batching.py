"""Padding a batch of 2D slices for a model and cropping its outputs back (shared by every
evaluation protocol: ``evaluate``, ``paper_protocol``, ``precision_check``)."""

from __future__ import annotations

import numpy as np
import torch

from .data import pad_to_multiple


def padded_batch(raws, device="cpu") -> tuple[torch.Tensor, list[tuple[slice, slice]]]:
    """The images of ``raws`` ((image, masks, valid) items) padded to a multiple of 16 as one
    (B, 1, H, W) tensor, and per image the slices that crop an output back to the image's size."""
    padded = [pad_to_multiple(img, masks, 16)[0] for img, masks, _ in raws]
    x = torch.from_numpy(np.stack(padded))[:, None].to(device)
    return x, [crop_slices(p.shape, img.shape) for p, (img, _, _) in zip(padded, raws)]


def crop_slices(padded_hw, hw):
    ph, pw = padded_hw[0] - hw[0], padded_hw[1] - hw[1]
    return slice(ph // 2, ph // 2 + hw[0]), slice(pw // 2, pw // 2 + hw[1])
