"""``multirater bench`` section 3: one training step per method (compact default configs)."""

from __future__ import annotations

from functools import partial

import numpy as np

from .bench_common import Settings, _log, fresh_model, measure


def synthetic_batch(b: int, k: int, size: int, device, seed: int = 0) -> dict:
    """Images in [0, 1] with a bright blob and K rater masks of that blob at different radii."""
    import torch

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    imgs, masks = np.empty((b, 1, size, size), np.float32), np.empty((b, k, size, size), np.float32)
    for i in range(b):
        cy, cx, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(0.08, 0.2) * size
        d = np.hypot(yy - cy, xx - cx)
        imgs[i, 0] = np.clip(0.3 + 0.4 * (d < r) + rng.normal(0, 0.05, (size, size)), 0, 1)
        for j in range(k):
            masks[i, j] = d < r * (0.8 + 0.15 * j)
    valid = np.ones((b, k), bool)
    if b > 1 and k > 1:
        valid[0, -1] = False  # one missing annotation, as in real multi-rater data
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return {"image": t(imgs), "masks": t(masks), "mask_valid": t(valid)}


def bench_training(device, s: Settings, precision=None) -> dict:
    """Section 3: one :meth:`src_training.trainer.Trainer.step` (forward + backward + Adam + schedule)
    per method (compact default configs)."""
    import torch

    from src_training.models import default_config
    from src_training.precision import FP32, prepare_model
    from src_training.trainer import Trainer

    precision = precision or FP32
    rows = []
    for name in s.train_configs:
        model = prepare_model(fresh_model(name).to(device).train(), precision)
        lr = float((default_config(name).get("train") or {}).get("lr", 5e-4))
        trainer = Trainer(model, lr=lr, total_steps=s.train_steps + s.train_warmup, device=device, precision=precision)
        batch = synthetic_batch(s.train_batch, model.num_raters, s.train_size, device)
        torch.manual_seed(0)
        st = measure(partial(trainer.step, batch), s.train_steps, s.train_warmup, device, unit="s")
        rows.append(
            {
                "config": name,
                "method": model.method,
                "stage": model.config.get("stage"),
                "trainable_parameters": int(sum(p.numel() for p in model.trainable_parameters())),
                "step": st,
                "images_per_s": s.train_batch / st["median"],
            }
        )
        _log(f"{device.type} train {name}: {st['median']:.3f} s/step")
        del model, trainer, batch
    return {
        "batch": s.train_batch,
        "size": s.train_size,
        "optimizer": "adam",
        "precision": precision.describe(),
        "rows": rows,
    }
