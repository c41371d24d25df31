"""Information extractors f_Y: CORTEX §3.2, appendix A.1.

An information extractor classifies a token-based embedding E (B, d, m, m) into the concept Y
(here: the class). Two architectures, exactly as appendix A.1 at paper size (d = 256, m = 16,
width 512, 1000 classes); width, d, m and the class count come from the profile, so the toy
profile runs the same networks narrower.

- **CE** (A.1.1): two blocks of four 3x3 conv(width)+BN+ReLU, a 2x2 max-pool after each block,
  then FC width·(m/4)² → fc → fc → classes with BN+ReLU after the first two FCs and dropout 0.5
  after the first.
- **RE** (A.1.2): two stages of three residual blocks (two 3x3 convs with BN+ReLU, shortcut,
  squeeze-and-excitation), global average pooling, FC width → fc → classes with BN+ReLU and
  dropout 0.5. The paper does not say how the 256 input channels become the width or where the
  resolution drops; like the authors' script, the first block of each stage has stride 2 (with a
  1x1 projection shortcut), and a 3x3 stem conv maps d → width (our choice, documented here).

Parameter counts at paper size (d 256, m 16, width 512, fc 4096 / 2048, 1000 classes):
CE 72,156,136 · RE 33,334,440 (``python -c "from cortex_nb.extractors import *; print(paper_sizes())"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ExtractorConfig", "CE", "RE", "build_extractor", "paper_sizes", "count_parameters"]


@dataclass(frozen=True)
class ExtractorConfig:
    arch: str = "CE"          # "CE" (CNN, A.1.1) or "RE" (ResNet + SE, A.1.2)
    d: int = 256              # input channels = codebook dimension
    m: int = 16               # token grid side (must be divisible by 4)
    n_classes: int = 1000
    width: int = 512          # conv filters (paper: 512)
    fc: int | None = None     # hidden FC width (paper: 4096 for CE, 2048 for RE); None = paper ratio x width
    se_reduction: int = 16    # SE bottleneck ratio (RE)
    dropout: float = 0.5

    @property
    def hidden(self) -> int:
        if self.fc is not None:
            return self.fc
        return self.width * (8 if self.arch == "CE" else 4)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CE(nn.Module):
    """CNN-based extractor (A.1.1). Input E (B, d, m, m) → logits (B, n_classes)."""

    def __init__(self, cfg: ExtractorConfig):
        super().__init__()
        if cfg.m % 4:
            raise ValueError(f"CE pools twice: the grid m = {cfg.m} must be divisible by 4")
        w, h = cfg.width, cfg.hidden
        block1 = _conv_bn_relu(cfg.d, w) + sum((_conv_bn_relu(w, w) for _ in range(3)), [])
        block2 = sum((_conv_bn_relu(w, w) for _ in range(4)), [])
        self.features = nn.Sequential(*block1, nn.MaxPool2d(2), *block2, nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w * (cfg.m // 4) ** 2, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
            nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
            nn.Linear(h, cfg.n_classes),
        )

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(E))


class SE(nn.Module):
    """Squeeze-and-excitation: global average pool, FC reduce, ReLU, FC expand, sigmoid gate."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]


class ResidualSE(nn.Module):
    """Two 3x3 conv+BN (ReLU between), SE on the residual branch, shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout), SE(cout, reduction))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class RE(nn.Module):
    """ResNet-based extractor with SE blocks (A.1.2). Input E (B, d, m, m) → logits (B, n_classes)."""

    def __init__(self, cfg: ExtractorConfig):
        super().__init__()
        w, h, r = cfg.width, cfg.hidden, cfg.se_reduction
        self.stem = nn.Sequential(*_conv_bn_relu(cfg.d, w))
        self.layers = nn.Sequential(*[ResidualSE(w, w, 2 if i in (0, 3) else 1, r) for i in range(6)])
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(w, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
            nn.Linear(h, cfg.n_classes),
        )

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(self.stem(E)))


def build_extractor(cfg: ExtractorConfig) -> nn.Module:
    """CE or RE from its config."""
    if cfg.arch not in ("CE", "RE"):
        raise ValueError(f"unknown extractor {cfg.arch!r}: expected 'CE' or 'RE'")
    return (CE if cfg.arch == "CE" else RE)(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_sizes() -> dict[str, int]:
    """Parameter counts of CE and RE at the paper's size (A.1)."""
    return {a: count_parameters(build_extractor(ExtractorConfig(arch=a))) for a in ("CE", "RE")}
