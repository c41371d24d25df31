"""The classifiers that judge CORTEX's explanations: the wrapper and the pretrained ImageNet models.

Paper: section 4.1 ("we employ four well-established pretrained classification models as
benchmarks": ResNet18, ResNet50, ViT-B/16, ViT-B/32); they score the masked images of
section 4.3 (Fig. 3, Table 2) and the token edits of section 4.4 (Table 3).

Two families share one wrapper, :class:`Evaluator` (classifier + its preprocessing):

* **imagenet profile** - torchvision's pretrained weights, loaded strictly offline by
  :func:`load_imagenet_evaluators` (this module). Preprocessing is ``weights.transforms()``
  (resize the short side to 256, centre-crop 224, normalise with ImageNet mean/std) done batched
  on tensors, or, labelled ``preprocess="reference"``, the authors' scripts' ``Resize((224, 224))``
  + the same normalisation.
* **toy profile** - the same torchvision architectures, small, trained here on the 32 x 32
  ToyBirds world: :mod:`cortex_nb.toy.evaluators` (building, training, saving and loading them).

Images enter as taming's float ``(B, 3, H, W)`` in [-1, 1] or as uint8 ``(B, H, W, 3)`` /
``(B, 3, H, W)``; :meth:`Evaluator.predict_proba` returns softmax probabilities (B, C) on the CPU.

Files are checked before ``torch.load`` (which checks nothing: flipped bytes load as altered
weights): a torchvision file against the SHA-256 prefix in its name (``check_hash``), anything
else through its zip CRCs (:func:`cortex_nb.io.files.verify_file`). A damaged or unreadable file is
a :class:`cortex_nb.errors.CheckpointError` naming it and what to do (:func:`read_torch_file`).
"""

from __future__ import annotations

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

from ..errors import CheckpointError, UserError
from ..io.files import file_sha256, verify_file
from ..engine.inference import eval_mode
from .evaluator_names import DISPLAY_NAMES, EVALUATOR_NAMES, TOY_EVALUATOR_NAMES  # re-exported

__all__ = [
    "weights_enum",
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
    "read_torch_file",
]

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
    :func:`cortex_nb.toy.evaluators.save_evaluator` stores next to the weights.
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


def weights_enum(name: str, weights: str | None):
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
    w = weights_enum(name, weights)
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


def read_torch_file(path: Path, fix: str) -> Any:
    """``torch.load(weights_only=True)``; any failure -> CheckpointError naming the file and
    ``fix``. Check the file first (:func:`cortex_nb.io.files.verify_file`): torch.load does not."""
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
        weights_obj = weights_enum(name, weights_obj)
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
    w = weights_enum(name, weights)
    path = _find_weights(name, weights, weights_dir)
    fix = _redownload_fix(path, w.url)
    if not (check_hash and _check_hash(path, w.url)):
        verify_file(path, damaged_fix=fix, mismatch_fix=fix)
    state = read_torch_file(path, fix)
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
