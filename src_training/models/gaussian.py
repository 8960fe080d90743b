"""Axis-aligned conv Gaussian (Kohl 2018 prior / posterior nets) with a bounded log-sigma."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import make_norm


class ConvGaussian(nn.Module):
    """Encoder (blocks of Conv3x3+ReLU, AvgPool2 between blocks) -> global mean -> (mu, sigma) in R^L.

    ``log_sigma = b * tanh(raw / b)`` keeps sigma in [e^-b, e^b] so the KL cannot overflow / go NaN.
    """

    def __init__(
        self,
        in_channels: int,
        widths=(16, 32, 64, 128),
        latent_dim: int = 6,
        convs_per_block: int = 3,
        norm: str | None = "none",
        log_sigma_bound: float = 5.0,
    ):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.log_sigma_bound = float(log_sigma_bound)
        layers: list[nn.Module] = []
        cin = in_channels
        bias = norm in (None, "none")
        for i, w in enumerate(widths):
            if i > 0:
                layers.append(nn.AvgPool2d(2, 2, ceil_mode=True))
            for _ in range(convs_per_block):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=bias), make_norm(norm, w), nn.ReLU(inplace=True)]
                cin = w
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 2 * self.latent_dim)
        for m in self.encoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.trunc_normal_(m.bias, std=1e-3)
        nn.init.kaiming_normal_(self.head.weight, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.head.bias, std=0.1)

    def forward(self, x: torch.Tensor):
        """Returns ``(mu, sigma)``, each (B, L), always fp32 (the head runs outside any autocast)."""
        h = self.encoder(x).float().mean((2, 3))
        with torch.autocast(h.device.type, enabled=False):
            mu, raw = self.head(h).chunk(2, dim=1)
            b = self.log_sigma_bound
            return mu, torch.exp(b * torch.tanh(raw / b))


def build_gaussian(in_channels: int, latent_dim: int, cfg: dict) -> ConvGaussian:
    return ConvGaussian(
        in_channels,
        cfg.get("widths", [16, 32, 64, 128]),
        latent_dim,
        int(cfg.get("convs_per_block", 3)),
        cfg.get("norm", "none"),
        float(cfg.get("log_sigma_bound", 5.0)),
    )
