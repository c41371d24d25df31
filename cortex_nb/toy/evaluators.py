"""The toy-world stand-ins for the paper's four evaluators: build, train, save and load them.

Paper: section 4.1's pretrained classifiers (ResNet18, ResNet50, ViT-B/16, ViT-B/32). In the toy
profile their places are taken by the same torchvision architectures, small, trained here on the
32 x 32 ToyBirds world: two ResNet depths stand in for ResNet18/50 and two ViT patch sizes in the
ratio 16:32 (4 and 8 px on 32 x 32) for ViT-B/16 and ViT-B/32 (``TOY_EVALUATOR_NAMES``).
Training is A.1.3's fit loop (:func:`cortex_nb.engine.train.fit`) with the schedules measured in
:data:`TOY_FIT_DEFAULTS`.

Each one is an :class:`cortex_nb.method.evaluators.Evaluator` (classifier + its preprocessing), so the
masking (section 4.3) and editing (section 4.4) code cannot tell it from a pretrained one.
:func:`save_evaluator` writes ``{"spec", "state_dict"}`` with a ``<file>.sha256`` sidecar that
:func:`load_evaluator` verifies before ``torch.load``; a damaged or unreadable file is a
:class:`cortex_nb.errors.CheckpointError` naming it and how to remake it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torchvision

from ..errors import CheckpointError
from ..method.evaluators import (DISPLAY_NAMES, TOY_EVALUATOR_NAMES, Evaluator, WeightsUnavailableError, read_torch_file,
                         to_signed_images, to_unit_images)
from ..io.files import rebuild_fix, save_with_checksum, verify_file
from ..engine.train import FitConfig, FitResult, fit

__all__ = [
    "build_toy_evaluator",
    "toy_augment",
    "TOY_FIT_DEFAULTS",
    "toy_fit_config",
    "train_toy_evaluators",
    "save_evaluator",
    "load_evaluator",
]

# Architecture choices (measured on the 2-core CPU, 32 x 32 ToyBirds, batch 128, training
# images/s with OMP_WAIT_POLICY=PASSIVE on a shared, busy machine):
#  * ResNets are torchvision's, unmodified by default (stem="imagenet": 7x7/2 conv + max-pool,
#    so layer1 sees 8 x 8 maps): resnet18 ~310 img/s, resnet34 ~170, resnet50 ~110, and all
#    reach >= 99 % held-out accuracy in ~2 short epochs, so the CIFAR-style stems are not
#    needed: stem="stride2" (3x3/2, no max-pool, 16 x 16 into layer1) runs resnet18 at ~110
#    img/s and stem="cifar" (3x3/1, 32 x 32 into layer1) at ~15-30 img/s.
#  * The second depth is resnet34 (half resnet50's cost); resnet50 is available.
#  * ViTs: torchvision VisionTransformer, 4 layers, 4 heads, hidden 128, MLP 256, patch 4 or 8
#    (64 or 16 patches, the 16:32 ratio of ViT-B/16 vs ViT-B/32): vit_p4 ~215, vit_p8 ~860 img/s.
_TOY_VIT = {"vit_p4": 4, "vit_p8": 8}
_TOY_RESNET = {"resnet18", "resnet34", "resnet50"}


def _toy_model(arch: str, n_classes: int, image_size: int, stem: str) -> nn.Module:
    if arch in _TOY_RESNET:
        m = torchvision.models.get_model(arch, weights=None, num_classes=n_classes)
        if stem == "cifar":  # full resolution into layer1 (accurate, ~4x the compute)
            m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            m.maxpool = nn.Identity()
        elif stem == "stride2":  # 16 x 16 into layer1 for 32 x 32 images
            m.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
            m.maxpool = nn.Identity()
        elif stem != "imagenet":  # "imagenet": torchvision's 7x7/2 conv + max-pool (8 x 8)
            raise ValueError(f"stem must be 'imagenet', 'stride2' or 'cifar', got {stem!r}")
        return m
    if arch in _TOY_VIT:
        return torchvision.models.VisionTransformer(
            image_size=image_size,
            patch_size=_TOY_VIT[arch],
            num_layers=4,
            num_heads=4,
            hidden_dim=128,
            mlp_dim=256,
            num_classes=n_classes,
        )
    raise ValueError(
        f"unknown toy evaluator {arch!r}; expected one of {sorted(_TOY_RESNET | set(_TOY_VIT))}"
    )


TOY_RESNET_STEM = "imagenet"


def build_toy_evaluator(
    name: str,
    n_classes: int = 10,
    image_size: int = 32,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
    stem: str | None = None,
    batch_size: int = 256,
) -> Evaluator:
    """A freshly initialised toy evaluator (torchvision architecture, sized for 32 x 32).

    ``mean``/``std`` normalise [0, 1] images inside the Evaluator (train_toy_evaluators sets
    them from the training images). Images of another size are resized to ``image_size``.
    """
    stem = stem or TOY_RESNET_STEM
    model = _toy_model(name, n_classes, image_size, stem)
    spec = {
        "name": name,
        "display_name": DISPLAY_NAMES.get(name, name),
        "kind": "toy",
        "arch": name,
        "stem": stem if name in _TOY_RESNET else None,
        "preprocess": "toy",
        "resize": [image_size, image_size],
        "crop": None,
        "interpolation": "bilinear",
        "antialias": True,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "n_classes": int(n_classes),
        "image_size": int(image_size),
        "categories": None,
    }
    return Evaluator(model, spec, batch_size=batch_size)


def toy_augment(max_shift: int = 3, flip: bool = True):
    """On-device training augmentation for [-1, 1] image batches: per-image random horizontal
    flip and an integer shift of up to ``max_shift`` px in x and y (edge pixels replicated).
    Draws from torch's global RNG on the batch's device (fit checkpoints its state)."""

    def augment(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        if flip:
            f = torch.rand(b, device=dev) < 0.5
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
        if max_shift > 0:
            s = torch.randint(-max_shift, max_shift + 1, (b, 2), device=dev)
            iy = (torch.arange(h, device=dev)[None] + s[:, :1]).clamp_(0, h - 1)  # (B, H)
            ix = (torch.arange(w, device=dev)[None] + s[:, 1:]).clamp_(0, w - 1)  # (B, W)
            bi = torch.arange(b, device=dev)[:, None, None]
            x = x.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
        return x.contiguous()

    return augment


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    n = 0
    for i in range(0, len(images), chunk):
        x = to_unit_images(images[i : i + chunk]).double()
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
        n += x.numel() // 3
    mean = s / n
    std = (s2 / n - mean**2).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


# Measured schedules for 10k training images (toyworld.sample(10000, 1); validation
# sample(2000, 2); test sample(2000, 3)). Adam + StepLR as in A.1.3; an "epoch" is capped at
# ``max_steps_per_epoch`` batches of 64 (a fresh random subset of the training set each
# epoch), and the learning rate drops x0.1 for the last epoch. Test accuracy / CPU seconds
# (2 threads, OMP_WAIT_POLICY=PASSIVE, shared machine at load ~4.3, so wall time was ~1.5x):
#   resnet18 99.95 % / 45 s, resnet34 99.85 % / 61 s, resnet50 99.0 % / 109 s,
#   vit_p4 99.45 % / 63 s, vit_p8 98.8 % / 21 s.
TOY_FIT_DEFAULTS: dict[str, dict[str, Any]] = {
    "resnet18": dict(epochs=2, batch_size=64, step_size=1, max_steps_per_epoch=80),
    "resnet34": dict(epochs=2, batch_size=64, step_size=1, max_steps_per_epoch=60),
    "resnet50": dict(epochs=2, batch_size=64, step_size=1, max_steps_per_epoch=70),
    "vit_p4": dict(epochs=3, batch_size=64, step_size=2, max_steps_per_epoch=60),
    "vit_p8": dict(epochs=3, batch_size=64, step_size=2, max_steps_per_epoch=80),
}


def toy_fit_config(name: str, **overrides: Any) -> FitConfig:
    """The measured :data:`TOY_FIT_DEFAULTS` schedule of a toy evaluator, with ``overrides``
    (any :class:`FitConfig` field: seed, device, progress, epochs, ...) applied on top."""
    return FitConfig(**{**TOY_FIT_DEFAULTS.get(name, {}), **overrides})


def train_toy_evaluators(
    train: tuple[Any, Any],
    val: tuple[Any, Any],
    names: Sequence[str] = TOY_EVALUATOR_NAMES,
    fit_cfg: FitConfig | Mapping[str, FitConfig] | None = None,
    ckpt_dir: str | os.PathLike | None = None,
    n_classes: int | None = None,
    augment=None,
    fit_overrides: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Evaluator, FitResult]]:
    """Train the toy evaluators on ``train = (images, labels)``, select by ``val`` top-1.

    Images: uint8 (N, H, W, 3) as ``toyworld.sample`` gives them, or float [-1, 1]
    (N, 3, H, W). They stay as given in memory; each batch is converted on the device and
    augmented with :func:`toy_augment` (training batches only).

    Schedules: ``fit_cfg=None`` (recommended) uses :func:`toy_fit_config` per name, i.e. the
    measured :data:`TOY_FIT_DEFAULTS` with ``fit_overrides`` (e.g. ``{"seed": 0, "device":
    "cuda", "progress": False}``) on top; a :class:`FitConfig` applies to every name as given;
    a dict maps names to FitConfigs.

    With ``ckpt_dir``, each model trains in ``ckpt_dir/<name>/`` (resumable; a finished run is
    loaded, not retrained) and the final evaluator is saved as ``ckpt_dir/<name>.pt``
    (:func:`save_evaluator`). Initial weights come from ``torch.manual_seed(cfg.seed)``.
    """
    x_tr, y_tr = torch.as_tensor(train[0]), torch.as_tensor(train[1]).long()
    x_va, y_va = torch.as_tensor(val[0]), torch.as_tensor(val[1]).long()
    k = int(n_classes or int(y_tr.max()) + 1)
    image_size = int(to_unit_images(x_tr[:1]).shape[-1])
    mean, std = _channel_stats(x_tr)
    aug = augment if augment is not None else toy_augment()
    out = {}
    for name in names:
        if fit_cfg is None:
            cfg = toy_fit_config(name, **(fit_overrides or {}))
        elif isinstance(fit_cfg, FitConfig):
            cfg = fit_cfg
        elif name in fit_cfg:
            cfg = fit_cfg[name]
        else:
            raise KeyError(f"fit_cfg has no FitConfig for {name!r} (it has {sorted(fit_cfg)})")
        torch.manual_seed(cfg.seed)  # same initial weights for the same seed
        ev = build_toy_evaluator(name, n_classes=k, image_size=image_size, mean=mean, std=std)
        sub = Path(ckpt_dir) / name if ckpt_dir is not None else None
        res = fit(ev, (x_tr, y_tr), (x_va, y_va), cfg, ckpt_dir=sub, transform=to_signed_images, augment=aug)
        ev = res.model.eval()
        if ckpt_dir is not None:
            save_evaluator(ev, Path(ckpt_dir) / f"{name}.pt")
        out[name] = (ev, res)
    return out


# --------------------------------------------------------------------------------------
# save / load
# --------------------------------------------------------------------------------------


_EVALUATORS_STAGE = "the evaluators stage (`python -m cortex_nb evaluators --profile P`)"


def save_evaluator(ev: Evaluator, path: str | os.PathLike) -> Path:
    """Write ``{"spec": ..., "state_dict": ...}`` (``torch.load(weights_only=True)`` reads it)
    atomically through :func:`cortex_nb.io.files.atomic_path`, with its SHA-256 in the sidecar
    ``<path>.sha256`` that :func:`load_evaluator` verifies."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in ev.model.state_dict().items()}
    save_with_checksum({"spec": dict(ev.spec), "state_dict": state, "format": 1}, path)
    return path


def load_evaluator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Evaluator:
    """Rebuild an Evaluator written by :func:`save_evaluator` (eval mode, on ``device``).

    The file is checked first (:func:`cortex_nb.io.files.verify_file`: its sidecar's SHA-256 when
    there is one, else its zip CRCs); missing -> :class:`WeightsUnavailableError`, damaged or
    not an evaluator file -> :class:`CheckpointError`, each saying how to remake it.
    """
    path = Path(path)
    fix = rebuild_fix(path, _EVALUATORS_STAGE)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"no evaluator file {path}",
            fix=f"train it (train_toy_evaluators, or {_EVALUATORS_STAGE}) first",
        )
    verify_file(path, damaged_fix=f"the file is damaged (truncated or altered): {fix}",
                mismatch_fix=fix)
    blob = read_torch_file(path, fix)
    spec = blob.get("spec") if isinstance(blob, dict) else None
    if not isinstance(spec, dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path} is not an evaluator file (no 'spec' and 'state_dict')",
                              fix=fix)
    if spec.get("kind") == "toy":
        ev = build_toy_evaluator(
            spec["arch"], n_classes=spec["n_classes"], image_size=spec["image_size"],
            mean=spec["mean"], std=spec["std"], stem=spec.get("stem"),
        )
        ev.spec.update(spec)
    else:
        model = torchvision.models.get_model(spec["arch"], weights=None, num_classes=spec["n_classes"])
        ev = Evaluator(model, spec)
    # a shipped ResNet stores its floating-point tensors in float16 (tools/ship_artifacts.py): cast back to the
    # model's dtype, exactly (every float16 is a float32), so every machine evaluates with the same weights
    own = ev.model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() and v.dtype != own[k].dtype else v
             for k, v in blob["state_dict"].items()}
    try:
        ev.model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {spec['arch']} it names: {e}",
                              fix=fix) from e
    # a loaded evaluator is for inference: weights in channels_last let oneDNN skip a reorder per
    # convolution. 500 toy images, 2 threads, AVX2: ResNet18 0.254 -> 0.204 s, ResNet34 0.465 ->
    # 0.397 s, ViT-p4 0.344 -> 0.313 s, outputs bitwise equal on AVX2 and AVX-512 (not promised in
    # general: another kernel may round differently, at ~1e-8)
    ev.model.to(memory_format=torch.channels_last)
    return ev.to(device).eval()
