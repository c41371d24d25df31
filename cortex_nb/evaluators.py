"""The classifiers that judge CORTEX's explanations, and their toy-world stand-ins.

Paper: section 4.1 ("we employ four well-established pretrained classification models as
benchmarks": ResNet18, ResNet50, ViT-B/16, ViT-B/32); they score the masked images of
section 4.3 (Fig. 3, Table 2) and the token edits of section 4.4 (Table 3).

Two families share one wrapper, :class:`Evaluator` (classifier + its preprocessing):

* **imagenet profile** - torchvision's pretrained weights, loaded strictly offline by
  :func:`load_imagenet_evaluators`. Preprocessing is ``weights.transforms()`` (resize the
  short side to 256, centre-crop 224, normalise with ImageNet mean/std) done batched on tensors,
  or, labelled ``preprocess="reference"``, the authors' scripts' ``Resize((224, 224))`` + the
  same normalisation.
* **toy profile** - the same torchvision architectures, small, trained here on the 32 x 32
  ToyBirds world (:func:`build_toy_evaluator`, :func:`train_toy_evaluators`). Two ResNet depths
  stand in for ResNet18/50 and two ViT patch sizes in the ratio 16:32 (4 and 8 px on 32 x 32)
  for ViT-B/16 and ViT-B/32.

Images enter as taming's float ``(B, 3, H, W)`` in [-1, 1] or as uint8 ``(B, H, W, 3)`` /
``(B, 3, H, W)``; :meth:`Evaluator.predict_proba` returns softmax probabilities (B, C) on the CPU.

Files are checked before ``torch.load`` (which checks nothing: flipped bytes load as altered
weights): a torchvision file against the SHA-256 prefix in its name (``check_hash``), a toy
evaluator against the ``<file>.sha256`` sidecar :func:`save_evaluator` writes, and anything
else through its zip CRCs (:func:`cortex_nb.files.verify_file`). A damaged or unreadable file is
a :class:`cortex_nb.vqgm.CheckpointError` naming it and what to do.
"""

from __future__ import annotations

from .errors import UserError

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .train import FitConfig, FitResult, eval_mode, fit
from .errors import CheckpointError
from .files import file_sha256, rebuild_fix, save_with_checksum, verify_file

__all__ = [
    "EVALUATOR_NAMES",
    "TOY_EVALUATOR_NAMES",
    "DISPLAY_NAMES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Evaluator",
    "to_unit_images",
    "to_signed_images",
    "imagenet_spec",
    "WeightsUnavailableError",
    "weights_file",
    "load_imagenet_evaluator",
    "load_imagenet_evaluators",
    "build_toy_evaluator",
    "toy_augment",
    "TOY_FIT_DEFAULTS",
    "toy_fit_config",
    "train_toy_evaluators",
    "save_evaluator",
    "load_evaluator",
]

#: The paper's four pretrained evaluators (torchvision model names), section 4.1.
EVALUATOR_NAMES = ("resnet18", "resnet50", "vit_b_16", "vit_b_32")
#: Their toy-world stand-ins, position by position (ResNet18, ResNet50, ViT-B/16, ViT-B/32).
TOY_EVALUATOR_NAMES = ("resnet18", "resnet34", "vit_p4", "vit_p8")
#: Names for tables and figures.
DISPLAY_NAMES = {
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "resnet50": "ResNet50",
    "vit_b_16": "ViT-B/16",
    "vit_b_32": "ViT-B/32",
    "vit_p4": "ViT-p4",
    "vit_p8": "ViT-p8",
}
#: The toy stand-in of each paper evaluator (for tables that put them side by side).
TOY_STAND_IN = dict(zip(EVALUATOR_NAMES, TOY_EVALUATOR_NAMES))

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_DEFAULT_WEIGHTS = "IMAGENET1K_V1"  # torchvision's `pretrained=True` weights, as the authors used


# --------------------------------------------------------------------------------------
# the wrapper
# --------------------------------------------------------------------------------------


def to_unit_images(images: Any) -> torch.Tensor:
    """Any accepted image batch -> float (B, 3, H, W) in [0, 1].

    float input is taken as taming's [-1, 1] (B, 3, H, W); uint8 as (B, H, W, 3) or (B, 3, H, W)
    in 0..255. A single image (no batch dimension) gets one.
    """
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images (B, 3, H, W) or (B, H, W, 3), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[1] != 3 and x.shape[-1] == 3:
            x = x.permute(0, 3, 1, 2)
        if x.shape[1] != 3:
            raise ValueError(f"uint8 images need 3 channels, got shape {tuple(x.shape)}")
        return x.float().div(255.0)
    if not x.dtype.is_floating_point:
        raise ValueError(f"images must be uint8 (0..255) or float in [-1, 1], got {x.dtype}")
    if x.shape[1] != 3:
        raise ValueError(
            f"float images must be (B, 3, H, W) in [-1, 1] (taming's convention), got shape "
            f"{tuple(x.shape)}"
        )
    return x.float().add(1.0).mul(0.5)


def to_signed_images(images: Any) -> torch.Tensor:
    """Any accepted image batch -> float (B, 3, H, W) in [-1, 1] (taming's convention)."""
    x = torch.as_tensor(images)
    if x.dtype.is_floating_point and x.ndim == 4 and x.shape[1] == 3:
        return x.float()
    return to_unit_images(x).mul(2.0).sub(1.0)


class Evaluator(nn.Module):
    """A classifier plus its preprocessing.

    ``forward(images)`` is differentiable and returns logits; :meth:`predict_proba` /
    :meth:`predict_logits` are the batched, no-grad, eval-mode entry points.

    Preprocessing (batched, on the evaluator's device): images -> [0, 1] -> optional resize
    (``resize``: int = short side as ``weights.transforms()`` does, or (h, w) exact) -> optional
    centre crop ``crop`` -> ``(x - mean) / std``.

    ``spec`` is a plain dict (name, kind, preprocessing, architecture) that
    :func:`save_evaluator` stores next to the weights.
    """

    def __init__(self, model: nn.Module, spec: Mapping[str, Any], batch_size: int = 64):
        super().__init__()
        self.model = model
        self.spec = dict(spec)
        self.name = self.spec["name"]
        self.display_name = self.spec.get("display_name", DISPLAY_NAMES.get(self.name, self.name))
        self.categories = self.spec.get("categories")
        self.batch_size = batch_size
        for key in ("mean", "std"):  # not in state_dict: the spec carries them
            value = torch.tensor(self.spec[key], dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer(key, value, persistent=False)

    @property
    def n_classes(self) -> int:
        return int(self.spec["n_classes"])

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: Any) -> torch.Tensor:
        """Images in any accepted form -> the normalised model input (on this device)."""
        x = to_unit_images(images).to(self.device)
        resize, crop = self.spec.get("resize"), self.spec.get("crop")
        interp = InterpolationMode(self.spec.get("interpolation", "bilinear"))
        antialias = bool(self.spec.get("antialias", True))
        if resize is not None:
            size = [resize] if isinstance(resize, int) else list(resize)
            if size != list(x.shape[-2:]) and not (len(size) == 1 and min(x.shape[-2:]) == size[0]):
                x = TF.resize(x, size, interpolation=interp, antialias=antialias)
        if crop is not None:
            x = TF.center_crop(x, [crop, crop] if isinstance(crop, int) else list(crop))
        return (x - self.mean) / self.std

    def forward(self, images: Any) -> torch.Tensor:
        return self.model(self.preprocess(images))

    @torch.no_grad()
    def predict_logits(self, images: Any, batch_size: int | None = None) -> torch.Tensor:
        """Logits (B, C) on the CPU; batched, no grad, eval mode (mode restored afterwards)."""
        bs = batch_size or self.batch_size
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x[None]
        with eval_mode(self):
            out = [self(x[i : i + bs]).float().cpu() for i in range(0, len(x), bs)]
        if not out:
            return torch.empty(0, self.n_classes)
        return torch.cat(out)

    @torch.no_grad()
    def predict_proba(self, images: Any, batch_size: int | None = None) -> torch.Tensor:
        """Softmax probabilities (B, C) on the CPU; batched, no grad, eval mode."""
        return self.predict_logits(images, batch_size).softmax(dim=1)

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"name={self.name!r}, kind={s.get('kind')!r}, preprocess={s.get('preprocess')!r}, "
            f"resize={s.get('resize')}, crop={s.get('crop')}, n_classes={s.get('n_classes')}"
        )


# --------------------------------------------------------------------------------------
# ImageNet: torchvision weights, strictly offline
# --------------------------------------------------------------------------------------


class WeightsUnavailableError(UserError, FileNotFoundError):
    """A weights file (pretrained, or a toy evaluator's) is not on disk (cortex-nb never
    downloads)."""


def _weights_enum(name: str, weights: str | None):
    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as e:
        raise ValueError(f"unknown torchvision model {name!r}; expected one of {EVALUATOR_NAMES}") from e
    key = weights or _DEFAULT_WEIGHTS
    try:
        return enum[key]
    except KeyError:
        raise ValueError(
            f"{name} has no weights {key!r}; available: {[w.name for w in enum]}"
        ) from None


def weights_file(name: str, weights: str | None = None) -> tuple[str, str]:
    """(file name, URL) of torchvision's weights for ``name``, e.g. ('resnet18-f37072fd.pth', ...)."""
    w = _weights_enum(name, weights)
    return os.path.basename(urlparse(w.url).path), w.url


def _search_dirs(weights_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def _find_weights(name: str, weights: str | None, weights_dir) -> Path:
    fname, url = weights_file(name, weights)
    dirs = _search_dirs(weights_dir)
    for d in dirs:
        if (d / fname).is_file():
            return d / fname
    where = dirs[0]
    searched = ", ".join(str(d) for d in dirs)
    raise WeightsUnavailableError(
        f"pretrained weights for {name} not found: need file {fname} (from {url}). cortex-nb "
        f"never downloads; fetch it on a machine with network access and put it in {where} "
        f"(searched: {searched}; TORCH_HOME moves torch's hub directory)."
    )


_HASH_RE = re.compile(r"-([a-f0-9]+)\.")


def _redownload_fix(path: Path, url: str) -> str:
    return (f"the file is damaged (truncated or altered): delete {path} and download it again "
            f"from {url}")


def _check_hash(path: Path, url: str) -> bool:
    """Verify the SHA-256 prefix torchvision puts in the file name; False if there is none."""
    m = _HASH_RE.search(path.name)
    if not m:
        return False
    digest = file_sha256(path)
    if not digest.startswith(m.group(1)):
        raise CheckpointError(
            f"{path} does not match the SHA-256 prefix {m.group(1)} in its name (got "
            f"{digest[:len(m.group(1))]}...): the file is damaged or not torchvision's",
            fix=f"delete it and download it again from {url}, or pass check_hash=False to load "
                f"it anyway",
        )
    return True


def _torch_load(path: Path, fix: str) -> Any:
    """``torch.load(weights_only=True)``; any failure -> CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, foreign objects...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"cannot read {path} ({path.stat().st_size} bytes): {type(e).__name__}: {first}",
            fix=fix,
        ) from e


def imagenet_spec(name: str, weights_obj=None, preprocess: str = "torchvision") -> dict:
    """The Evaluator spec (preprocessing, classes) of a torchvision ImageNet model; needs no
    weights file. ``weights_obj``: a weights enum member or its name (default IMAGENET1K_V1)."""
    if weights_obj is None or isinstance(weights_obj, str):
        weights_obj = _weights_enum(name, weights_obj)
    t = weights_obj.transforms()
    if preprocess == "torchvision":
        resize, crop = int(t.resize_size[0]), int(t.crop_size[0])
        interp, antialias = t.interpolation.value, bool(t.antialias)
    elif preprocess == "reference":  # authors' scripts: Resize((224, 224)) + Normalize
        resize, crop = [int(t.crop_size[0]), int(t.crop_size[0])], None
        interp, antialias = "bilinear", True
    else:
        raise ValueError(f"preprocess must be 'torchvision' or 'reference', got {preprocess!r}")
    return {
        "name": name,
        "display_name": DISPLAY_NAMES.get(name, name),
        "kind": "imagenet",
        "arch": name,
        "weights": weights_obj.name,
        "preprocess": preprocess,
        "resize": resize,
        "crop": crop,
        "interpolation": interp,
        "antialias": antialias,
        "mean": [float(v) for v in t.mean],
        "std": [float(v) for v in t.std],
        "n_classes": len(weights_obj.meta["categories"]),
        "categories": list(weights_obj.meta["categories"]),
    }


def load_imagenet_evaluator(
    name: str,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    preprocess: str = "torchvision",
    weights: str | None = None,
    check_hash: bool = True,
    batch_size: int = 64,
) -> Evaluator:
    """One pretrained torchvision classifier, from a local file only (see module docstring).

    The file is the one ``weights.url`` ends with (``weights_file(name)``), looked up in
    ``weights_dir`` then ``torch.hub.get_dir()/checkpoints``; missing ->
    :class:`WeightsUnavailableError` naming the file, its URL and the directory to put it in.
    ``check_hash`` verifies the SHA-256 prefix torchvision puts in the file name; without it
    (or without a prefix) the file's zip CRCs are checked. A damaged file, or one that does not
    fit the architecture -> :class:`CheckpointError` naming the file and its URL.
    """
    w = _weights_enum(name, weights)
    path = _find_weights(name, weights, weights_dir)
    fix = _redownload_fix(path, w.url)
    if not (check_hash and _check_hash(path, w.url)):
        verify_file(path, damaged_fix=fix, mismatch_fix=fix)
    state = _torch_load(path, fix)
    model = torchvision.models.get_model(name, weights=None, num_classes=len(w.meta["categories"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit torchvision's {name}: {e}",
                              fix=f"put torchvision's file from {w.url} there") from e
    ev = Evaluator(model, imagenet_spec(name, w, preprocess), batch_size=batch_size)
    return ev.to(device).eval()


def load_imagenet_evaluators(
    names: Sequence[str] = EVALUATOR_NAMES,
    weights_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    preprocess: str = "torchvision",
    weights: str | Mapping[str, str] | None = None,
    check_hash: bool = True,
) -> dict[str, Evaluator]:
    """The paper's evaluators by name (default all four), offline. ``weights``: one enum member
    name for all (default ``IMAGENET1K_V1``, the ``pretrained=True`` weights) or a dict per name.

    All missing files are reported in one :class:`WeightsUnavailableError`.
    """
    missing, out = [], {}
    for n in names:
        wn = weights.get(n) if isinstance(weights, Mapping) else weights
        try:
            out[n] = load_imagenet_evaluator(n, weights_dir, device, preprocess, wn, check_hash)
        except WeightsUnavailableError as e:
            missing.append(str(e))
    if missing:
        raise WeightsUnavailableError("\n".join(missing))
    return out


# --------------------------------------------------------------------------------------
# toy stand-ins
# --------------------------------------------------------------------------------------

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
    atomically through :func:`cortex_nb.files.atomic_path`, with its SHA-256 in the sidecar
    ``<path>.sha256`` that :func:`load_evaluator` verifies."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in ev.model.state_dict().items()}
    save_with_checksum({"spec": dict(ev.spec), "state_dict": state, "format": 1}, path)
    return path


def load_evaluator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Evaluator:
    """Rebuild an Evaluator written by :func:`save_evaluator` (eval mode, on ``device``).

    The file is checked first (:func:`cortex_nb.files.verify_file`: its sidecar's SHA-256 when
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
    blob = _torch_load(path, fix)
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
    try:
        ev.model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the {spec['arch']} it names: {e}",
                              fix=fix) from e
    return ev.to(device).eval()
