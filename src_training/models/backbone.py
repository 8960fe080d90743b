"""Self-contained feature U-Net (no downloads): image -> F-channel full-resolution feature map."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "none")


def make_norm(kind: str | None, channels: int) -> nn.Module:
    """BatchNorm2d, GroupNorm (gcd(8, C) groups) or Identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind in (None, "none"):
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvBlock(nn.Sequential):
    """n x (Conv3x3 -> norm -> ReLU)."""

    def __init__(self, cin: int, cout: int, n_convs: int = 2, norm: str | None = "batch"):
        layers: list[nn.Module] = []
        bias = norm in (None, "none")
        for i in range(n_convs):
            layers += [
                nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=bias),
                make_norm(norm, cout),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class FeatureUNet(nn.Module):
    """U-Net encoder/decoder; output (B, features, H, W) after norm + ReLU (like smp's last decoder block).

    Down: max-pool 2; up: bilinear resize to the skip's size (any H, W works) + concat + ConvBlock.
    """

    def __init__(
        self,
        in_channels: int,
        widths=(16, 32, 64, 128),
        features: int = 16,
        norm: str | None = "batch",
        convs_per_block: int = 2,
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 1:
            raise ValueError("backbone widths must be non-empty")
        self.out_channels = int(features)
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(ConvBlock(cin, w, convs_per_block, norm))
            cin = w
        self.up = nn.ModuleList(
            ConvBlock(widths[i + 1] + widths[i], widths[i], convs_per_block, norm)
            for i in reversed(range(len(widths) - 1))
        )
        self.out = nn.Sequential(
            nn.Conv2d(widths[0], features, 1, bias=norm in (None, "none")),
            make_norm(norm, features),
            nn.ReLU(inplace=True),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def level_channels(self) -> list[int]:
        """Channels of every encoder block (the deepest, the bottleneck, last) and of the output."""
        return [int(block[0].out_channels) for block in self.down] + [self.out_channels]

    def forward(self, x: torch.Tensor, return_levels: bool = False):
        """Features (B, F, H, W); with ``return_levels`` also ``[encoder block outputs..., features]``
        (what a presence head reads)."""
        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2, ceil_mode=True)
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], 1))
        out = self.out(h)
        return (out, skips + [out]) if return_levels else out


def build_backbone(config: dict) -> FeatureUNet:
    """FeatureUNet from a model config (``in_channels`` + ``backbone`` section)."""
    b = config["backbone"]
    return FeatureUNet(
        int(config["in_channels"]),
        b["widths"],
        int(b.get("features", 16)),
        b.get("norm", "batch"),
        int(b.get("convs_per_block", 2)),
    )
