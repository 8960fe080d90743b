"""One optimisation step of a multi-rater model: :class:`Trainer` (Adam, cosine schedule, precision).

The training loop (:mod:`src_training.train`) and ``multirater bench`` both call :meth:`Trainer.step`.
"""

from __future__ import annotations

import math

import torch

from .precision import FP32, autocast, prepare_input


class _LossModule(torch.nn.Module):
    """Lets DistributedDataParallel see ``model.loss`` as the forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, step):
        return self.model.loss(batch, step)


class Trainer:
    """One model's optimisation: Adam over its parameter groups, a cosine learning-rate schedule over
    ``total_steps``, the precision's autocast and gradient scaler. :meth:`step` is one optimisation
    step; the training loop and ``multirater bench`` both call it."""

    def __init__(
        self,
        model,
        *,
        lr: float,
        total_steps: int,
        device,
        precision=FP32,
        z_lr: float | None = None,
        weight_decay: float = 0.0,
        dist=None,
    ):
        self.model, self.device, self.precision, self.total_steps = model, device, precision, int(total_steps)
        self.net = _LossModule(model)
        if dist is not None and dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
            )
        self.optim = torch.optim.Adam(model.param_groups(lr, z_lr), weight_decay=weight_decay)
        total = self.total_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.optim, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision.name == "fp16")
        self.steps_done = 0

    def step(self, batch: dict) -> dict:
        """Forward + backward + optimizer and schedule step on ``batch`` (on the model's device);
        returns the model's losses. A non-finite loss raises FloatingPointError before any update."""
        batch["image"] = prepare_input(batch["image"], self.precision)
        with autocast(self.precision, self.device):
            losses = self.net(batch, self.steps_done)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.steps_done}: {_fmt(losses)}")
        self.optim.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optim)
        self.scaler.update()
        self.sched.step()
        self.steps_done += 1
        return losses

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optim.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.steps_done,
            "precision": self.precision.name,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.steps_done = int(state["step"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def _fmt(losses: dict) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
