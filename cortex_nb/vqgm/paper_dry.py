"""The paper's models at their real shapes with random weights: what the ``paper-dry`` profile runs (issue #17).

No checkpoint can be downloaded here, so the ImageNet path is proven with everything but the weights:

- :func:`released_cin_config` — taming's class-conditional ImageNet ("cin transformer") config as released: a
  ``Net2NetTransformer`` whose first stage is the f16 VQGAN (16384 x 256 codebook, 16 x 16 tokens for 256 px; its
  ``VQLPIPSWithDiscriminator`` lossconfig and the nested first-stage ``ckpt_path`` included, as in the released
  project.yaml, so the loader's swap to ``DummyLoss`` and its dropping of ``ckpt_path`` are exercised), a Labelator
  over 1000 classes and minGPT at 48 layers x 24 heads x 1536 wide (~1.4 B parameters). The shapes are those of
  ``benchmarks/scale.py`` (taming's README and paper: the cin model has 1.4 B parameters; the released YAML itself
  could not be read here, no network).
- :func:`write_dry_vqgm` — that model with seeded random weights, written as a Lightning-style ``last.ckpt`` +
  config YAML through the same :func:`cortex_nb.vqgm.taming_ckpt.save_taming_checkpoint` writer, and read back by the one
  loader (:func:`cortex_nb.vqgm.load_vqgm`), the path the real files take. The checkpoint carries
  ``DRY_MARKER``; the loader flags it (``VQGM.dry_run``) and every profile but ``paper-dry`` refuses such a file.
- :func:`dry_imagenet_evaluators` — torchvision's ResNet18 / ResNet50 / ViT-B/16 / ViT-B/32 built with
  ``weights=None`` (seeded) and the weights enums' real preprocessing (resize, crop, normalisation).

Random weights are used only under the ``paper-dry`` profile, and every use logs :data:`DRY_BANNER`.
"""
from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ..io.files import digest, load_cache_json, save_json, save_text
from .taming_config import instantiate, sanitize_config
from .taming_shapes import RELEASED_LOSSCONFIG, cin_config, first_stage_config, transformer_config

__all__ = ["CIN_GPT", "VQGAN_F16", "DRY_MARKER", "DRY_BANNER", "released_cin_config", "write_dry_vqgm",
           "dry_imagenet_evaluators"]

logger = logging.getLogger(__name__)

#: minGPT of taming's cin transformer (~1.41 B parameters); block_size covers the 16 x 16 grid
CIN_GPT: dict[str, int] = dict(vocab_size=16384, block_size=256, n_layer=48, n_head=24, n_embd=1536)
#: its first stage, the f16 VQGAN with a 16384 x 256 codebook
VQGAN_F16: dict[str, Any] = dict(n_embed=16384, embed_dim=256, z_channels=256, resolution=256, ch=128,
                                 ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,))
#: the key a dry checkpoint carries (its value: DRY_BANNER)
DRY_MARKER = "cortex_nb_dry_run"
DRY_BANNER = ("PAPER-DRY: random weights at the paper's shapes (no checkpoint was loaded); every number this "
              "run writes is meaningless — it proves the code path, shapes, time and memory only")
#: the released config's nested first-stage checkpoint (a path on the authors' machine; the loader drops it)
_RELEASED_FIRST_STAGE_CKPT = "logs/2020-09-23T17-56-33_imagenet_vqgan/checkpoints/last.ckpt"


def released_cin_config(n_classes: int = 1000, *, gpt: dict | None = None, vqgan: dict | None = None) -> DictConfig:
    """taming's cin transformer config at the released shapes (``gpt`` / ``vqgan``: overrides, for tests)."""
    v = {**VQGAN_F16, **(vqgan or {})}
    g = {**CIN_GPT, **(gpt or {})}
    first = first_stage_config(n_embed=v["n_embed"], embed_dim=v["embed_dim"], z_channels=v["z_channels"],
                               resolution=v["resolution"], ch=v["ch"], ch_mult=v["ch_mult"],
                               num_res_blocks=v["num_res_blocks"], attn_resolutions=v["attn_resolutions"],
                               lossconfig=RELEASED_LOSSCONFIG, ckpt_path=_RELEASED_FIRST_STAGE_CKPT)
    transformer = transformer_config(vocab_size=v["n_embed"], block_size=g["block_size"], n_layer=g["n_layer"],
                                     n_head=g["n_head"], n_embd=g["n_embd"])
    return cin_config(first, transformer, n_classes)


def write_dry_vqgm(out_dir: str | os.PathLike, config: Any, seed: int = 0) -> dict[str, Path]:
    """Build the model of ``config`` with random weights (``torch.manual_seed(seed)``) and write it as taming's
    released files are laid out: ``config.yaml`` (the config as given) and ``last.ckpt`` (Lightning layout, SHA-256
    sidecar, :data:`DRY_MARKER`). Cached: a finished write of the same (config, seed) is reused
    (``dry.json``). Returns {"config", "ckpt"}. The model is freed before returning (the loader builds its own)."""
    from .taming_ckpt import save_taming_checkpoint

    out = Path(out_dir)
    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(config), resolve=True))
    key = digest({"config": OmegaConf.to_container(cfg), "seed": int(seed), "v": 1})
    paths = {"config": out / "config.yaml", "ckpt": out / "last.ckpt"}
    stamp = out / "dry.json"
    if (load_cache_json(stamp) or {}).get("key") == key and all(p.exists() for p in paths.values()):
        return paths
    logger.warning(DRY_BANNER)
    logger.info("paper-dry: building the cin model at its released shapes with random weights (seed %d)", seed)
    model_cfg, _ = sanitize_config(cfg)          # what the loader builds: DummyLoss, no nested ckpt_path
    torch.manual_seed(int(seed))
    model = instantiate(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    save_text(paths["config"], OmegaConf.to_yaml(cfg))
    save_taming_checkpoint(model, paths["ckpt"], extra={DRY_MARKER: DRY_BANNER})
    del model
    gc.collect()
    save_json(stamp, {"key": key, "parameters": int(n_params), "seed": int(seed), "note": DRY_BANNER})
    return paths


def dry_imagenet_evaluators(names: Sequence[str], device: str | torch.device = "cpu", preprocess: str = "torchvision",
                            seed: int = 0, batch_size: int = 64) -> dict:
    """The paper's evaluators built by torchvision with ``weights=None`` (seeded random weights) and the weights
    enums' real preprocessing (:func:`cortex_nb.method.evaluators.imagenet_spec`), marked ``spec["dry_run"]``."""
    import torchvision

    from ..method.evaluators import Evaluator, weights_enum, imagenet_spec

    logger.warning(DRY_BANNER)
    out = {}
    for i, name in enumerate(names):
        w = weights_enum(name, None)
        torch.manual_seed(int(seed) + i)
        model = torchvision.models.get_model(name, weights=None, num_classes=len(w.meta["categories"]))
        spec = {**imagenet_spec(name, w, preprocess), "dry_run": True}
        out[name] = Evaluator(model, spec, batch_size=batch_size).to(device).eval()
    return out
