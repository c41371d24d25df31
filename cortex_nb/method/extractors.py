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
- **RE, variant "scripts"** (:class:`REScripts`; profile ``extractors.re_variant: scripts``): RE as
  the authors' scripts build it (``ClassificationNet3`` in ``VQGAN_explanation/model.py``). No stem:
  the first stage's first block maps d → width itself (stride 2, 1x1 conv+BN projection), the
  second stage's first block keeps the width (stride 2, projection); each block is
  conv-BN-ReLU-conv-BN plus the shortcut, **then** SE on the sum (GAP, FC /16, ReLU, FC, sigmoid;
  bottleneck width // 16, at least 1 where RE's is at least 4), then ReLU; GAP, FC width → fc (BN, ReLU), dropout **0.4**, FC → classes.
  Convs carry no bias (the scripts' ``bias=False``), the FCs of SE and head do.

Parameter counts at paper size (d 256, m 16, width 512, fc 4096 / 2048, 1000 classes):
CE 72,156,136 · RE 33,334,440 · RE-scripts 30,843,048
(``python -c "from cortex_nb.method.extractors import *; print(paper_sizes())"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ExtractorConfig", "CE", "RE", "REScripts", "RE_VARIANTS", "build_extractor", "paper_sizes",
           "count_parameters"]

#: RE as appendix A.1.2 reads (with our stem) | as the authors' scripts build it (ClassificationNet3)
RE_VARIANTS = ("paper", "scripts")


@dataclass(frozen=True)
class ExtractorConfig:
    arch: str = "CE"          # "CE" (CNN, A.1.1) or "RE" (ResNet + SE, A.1.2)
    d: int = 256              # input channels = codebook dimension
    m: int = 16               # token grid side (must be divisible by 4)
    n_classes: int = 1000
    width: int = 512          # conv filters (paper: 512)
    fc: int | None = None     # hidden FC width (paper: 4096 for CE, 2048 for RE); None = paper ratio x width
    se_reduction: int = 16    # SE bottleneck ratio (RE)
    dropout: float | None = None  # None = the architecture's: 0.5 (CE, RE; A.1), 0.4 (RE "scripts")
    variant: str = "paper"    # RE only: "paper" (A.1.2, our stem) | "scripts" (the authors' ClassificationNet3)

    @property
    def hidden(self) -> int:
        if self.fc is not None:
            return self.fc
        return self.width * (8 if self.arch == "CE" else 4)

    @property
    def p_dropout(self) -> float:
        if self.dropout is not None:
            return self.dropout
        return 0.4 if self.arch == "RE" and self.variant == "scripts" else 0.5


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
            nn.Linear(w * (cfg.m // 4) ** 2, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(cfg.p_dropout),
            nn.Linear(h, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
            nn.Linear(h, cfg.n_classes),
        )

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(E))


class SE(nn.Module):
    """Squeeze-and-excitation: global average pool, FC reduce, ReLU, FC expand, sigmoid gate.
    The bottleneck is ``channels // reduction``, at least ``min_hidden`` (RE: 4; the scripts: 1)."""

    def __init__(self, channels: int, reduction: int, min_hidden: int = 4):
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
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
            nn.Linear(w, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(cfg.p_dropout),
            nn.Linear(h, cfg.n_classes),
        )

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(self.stem(E)))


class ResidualSEAfterSum(nn.Module):
    """The scripts' residual block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, SE on the sum, ReLU:
    ``relu(se(body(x) + shortcut(x)))`` (:class:`ResidualSE` gates the residual branch before the sum)."""

    def __init__(self, cin: int, cout: int, stride: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.se = SE(cout, reduction, min_hidden=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.se(self.body(x) + self.shortcut(x)))


class REScripts(nn.Module):
    """RE as the authors' scripts build it (``ClassificationNet3``; see the module docstring).
    Input E (B, d, m, m) → logits (B, n_classes). ``layers[s][b]`` is block b of stage s
    (the scripts' ``layer{s+1}[b]``); the first block of each stage has stride 2."""

    def __init__(self, cfg: ExtractorConfig):
        super().__init__()
        w, h, r = cfg.width, cfg.hidden, cfg.se_reduction
        self.layers = nn.Sequential(*[
            nn.Sequential(*[ResidualSEAfterSum(cin if b == 0 else w, w, 2 if b == 0 else 1, r) for b in range(3)])
            for cin in (cfg.d, w)])                                    # (B, w, ⌈m/4⌉, ⌈m/4⌉)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(w, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(cfg.p_dropout),
            nn.Linear(h, cfg.n_classes),
        )

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(E))


def build_extractor(cfg: ExtractorConfig) -> nn.Module:
    """CE, RE or RE's scripts variant from its config."""
    if cfg.arch not in ("CE", "RE"):
        raise ValueError(f"unknown extractor {cfg.arch!r}: expected 'CE' or 'RE'")
    if cfg.variant not in RE_VARIANTS or (cfg.arch == "CE" and cfg.variant != "paper"):
        raise ValueError(f"unknown {cfg.arch} variant {cfg.variant!r}: expected "
                         + ("'paper' (CE has one variant)" if cfg.arch == "CE" else " or ".join(map(repr, RE_VARIANTS))))
    if cfg.arch == "CE":
        return CE(cfg)
    return REScripts(cfg) if cfg.variant == "scripts" else RE(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_sizes() -> dict[str, int]:
    """Parameter counts of CE, RE and RE's scripts variant at the paper's size (A.1)."""
    cfgs = {"CE": ExtractorConfig(arch="CE"), "RE": ExtractorConfig(arch="RE"),
            "RE-scripts": ExtractorConfig(arch="RE", variant="scripts")}
    return {name: count_parameters(build_extractor(c)) for name, c in cfgs.items()}
