"""Build the toy VQGM here: a taming VQGAN tokenizer and a class-conditional GPT prior, saved in
taming's own format.

CORTEX explains a VQGM G (PAPER.md §2.1): a codebook C in R^{K x d}, a transformer that predicts
m^2 tokens for a concept, and a decoder from the token-based embedding E to an image. The paper's
synthetic dataset (§4.1.1) is *sampled* from taming's class-conditional ImageNet model. The toy
profile needs the same kind of model at toy size, trained on this 2-core CPU in minutes, and read
back exactly like the official one. So :func:`build_toy_vqgm`

1. trains the first stage, taming's ``VQModel``, with our own plain loop
   (:func:`cortex_nb.toy.tokenizer.train_tokenizer`, whose docstring says why the recipe is not
   taming's),
2. encodes freshly rendered ToyBirds with it and trains the prior, taming's mingpt ``GPT``, on
   ``[class token, z tokens in raster order]`` exactly as ``Net2NetTransformer.forward`` does
   (:func:`cortex_nb.toy.prior.train_prior`), and
3. assembles both into a ``Net2NetTransformer`` whose config has the structure of the official
   class-conditional ImageNet ("cin") config (:func:`toy_cin_config`), saved as ``config.yaml`` +
   ``model.ckpt``, which the project reads back only through :func:`cortex_nb.vqgm.load_vqgm` --
   the same loader as the official checkpoint.

Measured (seed 0; AMD EPYC with AVX512-BF16, 2 cores shared with other jobs, so the times are
single-core CPU seconds) with the toy profile's settings but a prior of 1000 steps (the toy
profile's 600 save a minute; its samples are recognised 71-77 % instead of 84-90 %):
tokenizer 600 steps x 48 images ~290 s, encoding 24k images ~70 s, prior 1000 steps x 128
sequences ~380 s. On 2000 held-out images: L1 0.070, all 512 codes used (perplexity ~430). A
ResNet-18 trained on real ToyBirds (100 % on real images) recognises 97.6 % of the
reconstructions (99.7 % within a head-only pair: heads survive), and 84 % of class-conditional
prior samples (temperature 1, no top-k; 90 % with top_p 0.92). Chance is 10 %.

Example::

    from cortex_nb.toy.vqgm import build_toy_vqgm
    from cortex_nb.vqgm import load_vqgm
    paths = build_toy_vqgm("results/toy/cache/vqgm", seed=0)   # cached after the first run
    vq = load_vqgm(paths["config"], paths["ckpt"])
    tokens = vq.sample([0, 1, 2], seed=0)                         # (3, 8, 8)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import world as toyworld
from ..io.files import atomic_path, digest, save_text
from ..vqgm.taming_ckpt import save_taming_checkpoint
from ..vqgm.taming_config import build_from_config
from ..vqgm.taming_shapes import cin_config
from .prior import PriorConfig, gpt_config, train_prior
from .tokenizer import (TokenizerConfig, codebook_usage, encode_images, train_tokenizer,
                            vqgan_config)
from .training import RECIPE_VERSION, config_dict, load_state, step_seed
# tests/test_stages.py checks this module's checkpoint writer under this name
from ..io.files import save_torch

__all__ = ["toy_cin_config", "build_toy_vqgm"]

logger = logging.getLogger(__name__)


def toy_cin_config(tok: TokenizerConfig, prior: PriorConfig, n_classes: int = 10) -> DictConfig:
    """The toy model's taming config, with the structure of the official class-conditional
    ImageNet ("cin") config (:func:`cortex_nb.vqgm.taming_shapes.cin_config`): ``model.target``
    Net2NetTransformer, ``first_stage_key: image``, ``cond_stage_key: class_label``, a mingpt GPT
    over the K codes (the class token shares the vocabulary, as in the official model), a VQModel
    first stage (loss: DummyLoss, no ``ckpt_path``) and a Labelator cond stage.
    """
    if n_classes > tok.n_embed:
        raise ValueError(f"n_classes={n_classes} > K={tok.n_embed}: the class token must be a "
                         f"valid GPT vocabulary id (the cin model shares one vocabulary)")
    return cin_config(vqgan_config(tok), gpt_config(prior, tok.n_embed, tok.grid), n_classes)


def _build_key(tok, prior, seed, n_classes, scene_bias, n_report) -> dict:
    return dict(v=RECIPE_VERSION, tokenizer=config_dict(tok), prior=config_dict(prior),
                seed=int(seed), n_classes=int(n_classes), scene_bias=float(scene_bias),
                n_report=int(n_report))


def is_built(out_dir: str | os.PathLike, key: str) -> bool:
    """Whether ``out_dir`` holds a finished toy VQGM build (config.yaml, model.ckpt, report.json,
    build.json) whose settings digest is ``key``: what :func:`build_toy_vqgm` reuses."""
    out = Path(out_dir)
    if not all((out / f).is_file() for f in ("config.yaml", "model.ckpt", "report.json", "build.json")):
        return False
    try:
        return json.loads((out / "build.json").read_text()).get("hash") == key
    except (OSError, ValueError):
        return False


def build_key(tok: TokenizerConfig | None = None, prior: PriorConfig | None = None, *, seed: int = 0,
              n_classes: int = 10, scene_bias: float = 0.65, n_report: int = 2000) -> str:
    """The digest of the settings a toy VQGM build depends on: what ``build.json`` records and what
    a cached (or shipped, :mod:`cortex_nb.vqgm.shipped`) build must match to be reused."""
    return digest(_build_key(tok or TokenizerConfig(), prior or PriorConfig(), seed, n_classes, scene_bias, n_report))


@torch.no_grad()
def _recon_report(model, tok: TokenizerConfig, seed: int, n: int, n_classes: int,
                  scene_bias: float) -> dict:
    """Reconstruction error and codebook usage on n held-out real toy images."""
    b = toyworld.sample(n, step_seed(seed, 0, 5), n_classes=n_classes, scene_bias=scene_bias)
    x = toyworld.to_tensor(b.images)
    dev = next(model.parameters()).device
    l1, l2, head, toks = [], [], [], []
    masks = torch.as_tensor(b.masks)
    for xs, ms in zip(x.split(256), masks.split(256)):
        quant, _, (_, _, idx) = model.encode(xs.to(dev))
        r = model.decode(quant).clamp(-1, 1).cpu()
        e = (r - xs).abs().mean(1)                                 # (b, H, W) per-pixel L1
        l1.append(e.flatten(1).mean(1))
        l2.append((r - xs).pow(2).flatten(1).mean(1))
        hm = (ms == toyworld.HEAD).float()
        head.append((e * hm).flatten(1).sum(1) / hm.flatten(1).sum(1).clamp(min=1))
        toks.append(idx.reshape(xs.shape[0], -1).cpu())
    u = codebook_usage(torch.cat(toks), tok.n_embed)
    return dict(n_images=n, recon_l1=float(torch.cat(l1).mean()),
                recon_mse=float(torch.cat(l2).mean()), recon_l1_head=float(torch.cat(head).mean()),
                perplexity=u["perplexity"], used=u["used"], dead=u["dead"])


def build_toy_vqgm(out_dir: str | os.PathLike, tok: TokenizerConfig | None = None,
                   prior: PriorConfig | None = None, *, seed: int = 0,
                   device: str | torch.device = "cpu", n_classes: int = 10,
                   scene_bias: float = 0.65, n_report: int = 2000,
                   progress: bool = True) -> dict:
    """Train (or reuse) the toy VQGM and save it as a taming ``config.yaml`` + ``model.ckpt``.

    Cached: when ``out_dir`` holds config.yaml, model.ckpt and a ``build.json`` whose hash
    matches these settings, nothing is trained. Otherwise the tokenizer and the prior are
    trained (each resumable from ``out_dir/train``), assembled into a ``Net2NetTransformer``
    built from :func:`toy_cin_config` through :func:`cortex_nb.vqgm.taming_config.build_from_config`
    (weights loaded strictly), and saved with :func:`cortex_nb.vqgm.taming_ckpt.save_taming_checkpoint`.
    Read it back with ``cortex_nb.vqgm.load_vqgm(paths["config"], paths["ckpt"])``.

    Args:
        out_dir: where config.yaml, model.ckpt, report.json, build.json and train/ go.
        tok, prior: configs (default: the toy profile's).
        seed: all randomness (init, data, restarts, batches).  device: torch device.
        n_classes, scene_bias: the ToyBirds world.  n_report: held-out images for the report.
        progress: tqdm bars.

    Returns:
        dict(config=Path, ckpt=Path, report=dict) -- the report also lies in report.json: recon
        L1/MSE (and L1 on head pixels) on held-out real images, codebook perplexity/used/dead,
        training seconds per part, the prior's final loss, and whether it came from the cache.
    """
    tok = tok or TokenizerConfig()
    prior = prior or PriorConfig()
    out = Path(out_dir)
    paths = dict(config=out / "config.yaml", ckpt=out / "model.ckpt")
    report_path, build_path = out / "report.json", out / "build.json"
    spec = _build_key(tok, prior, seed, n_classes, scene_bias, n_report)
    key = digest(spec)
    if is_built(out, key):
        report = json.loads(report_path.read_text())
        logger.info("toy VQGM: reusing %s (settings hash %s)", out, key)
        return dict(**paths, report=dict(report, cached=True))

    device = torch.device(device)
    train_dir = out / "train"
    logger.info("toy VQGM: training tokenizer (%d steps)", tok.steps)
    first_stage, tok_stats = train_tokenizer(tok, seed=seed, device=device, ckpt_dir=train_dir,
                                             progress=progress, n_classes=n_classes,
                                             scene_bias=scene_bias)
    # the prior's training set: fresh images, encoded once (cached beside the checkpoints)
    tok_path = train_dir / "prior_tokens.pt"
    t0 = time.perf_counter()
    tok_key = digest(dict(part="prior_tokens", v=RECIPE_VERSION, tokenizer=spec["tokenizer"],
                          n_train=prior.n_train, seed=seed, n_classes=n_classes,
                          scene_bias=scene_bias))   # other prior settings: not re-encoded
    cached_tokens = load_state(tok_path, tok_key)
    if cached_tokens is None:
        logger.info("toy VQGM: encoding %d toy images for the prior", prior.n_train)
        b = toyworld.sample(prior.n_train, step_seed(seed, 0, 4), n_classes=n_classes,
                            scene_bias=scene_bias)
        tokens = encode_images(first_stage, toyworld.to_tensor(b.images))
        labels = torch.as_tensor(b.labels, dtype=torch.int64)
        save_torch(dict(key=tok_key, tokens=tokens, labels=labels), tok_path)
    else:
        tokens, labels = cached_tokens["tokens"], cached_tokens["labels"]
    encode_seconds = time.perf_counter() - t0
    logger.info("toy VQGM: training prior (%d steps)", prior.steps)
    gpt, prior_stats = train_prior(prior, tokens, labels, K=tok.n_embed, n_classes=n_classes,
                                   seed=seed, device=device, ckpt_dir=train_dir, progress=progress)

    config = toy_cin_config(tok, prior, n_classes)
    model = build_from_config(config)
    model.first_stage_model.load_state_dict(first_stage.state_dict(), strict=True)
    model.transformer.load_state_dict(gpt.state_dict(), strict=True)
    with atomic_path(paths["config"]) as tmp:
        OmegaConf.save(config, tmp)
    save_taming_checkpoint(model, paths["ckpt"], epoch=0,
                           global_step=tok_stats["steps"] + prior_stats["steps"])

    report = dict(
        _recon_report(first_stage, tok, seed, n_report, n_classes, scene_bias),
        tokenizer_seconds=tok_stats["seconds"], encode_seconds=encode_seconds,
        prior_seconds=prior_stats["seconds"], tokenizer_steps=tok_stats["steps"],
        tokenizer_final_loss=tok_stats["final_loss"], tokenizer_restarts=tok_stats["restarts"],
        prior_steps=prior_stats["steps"], prior_final_loss=prior_stats["final_loss"],
        prior_n_train=int(tokens.shape[0]), K=tok.n_embed, m=tok.grid, d=tok.embed_dim,
        settings=spec, hash=key,
    )
    save_text(report_path, json.dumps(report, indent=2))
    save_text(build_path, json.dumps(dict(hash=key, settings=spec), indent=2))
    return dict(**paths, report=dict(report, cached=False))
