"""Training, building, saving and loading the toy MaskGIT (:mod:`cortex_nb.toy.maskgit`).

Both loops follow :mod:`cortex_nb.toy.training` as the taming toy model's do: seeds derived from (seed, step,
purpose) (:func:`~cortex_nb.toy.training.step_seed`: 1 tokenizer batches, 2 the quantiser's k-means and dead-code
restarts, 3 prior epochs, 4 prior images, 5 report images, 6 prior masks), warmup + cosine learning rate, bf16 autocast
where fast, and a checkpoint keyed by every setting that a later call resumes from.

* :func:`train_tokenizer`: fresh ToyBirds every step; part-weighted L1 + L2 reconstruction (heads weigh
  ``1 + head_weight``: the toy world's masks, as in :mod:`cortex_nb.toy.tokenizer`) plus VectorQuantize's commitment
  term. The codebook is VectorQuantize's own EMA with k-means initialisation and dead-code restarts; the library draws
  from the global RNG, so each step runs on a forked RNG seeded from (seed, step): a resumed run is the same run.
* :func:`train_prior`: MaskGIT's objective on the tokenizer's grids of real toy images: per grid r ~ U(0, 1),
  ceil(cos(pi/2 r) m^2) positions (at least 1) become [MASK] (:func:`mask_tokens`), cross-entropy on those only.
* :func:`build_toy_maskgit`: both, cached under ``out_dir`` by a digest of the settings, then :func:`save_maskgit`
  and a report on held-out real images.

Cost with the defaults, measured at one thread on this CPU (bf16 autocast on): tokenizer ~0.9 s/step (600 steps: ~9
min), encoding the prior's 24k images ~80 s, prior ~0.7 s/step (1000 steps: ~12 min); ~22 min in all. The quality of
a full-size build (reconstruction of the heads, recognisability of samples) has not been measured yet.

Example::

    from cortex_nb.toy.maskgit import MaskGITConfig
    from cortex_nb.toy.maskgit_training import build_toy_maskgit, load_maskgit
    paths = build_toy_maskgit("results/toy/cache/maskgit", MaskGITConfig(), seed=0)   # cached after the first run
    vq = load_maskgit(paths["dir"])
    tokens = vq.sample([0, 1, 2], seed=0)                                               # (3, 8, 8)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from . import world as toyworld
from ..errors import CheckpointError
from ..io.files import DAMAGED_FIX, digest, save_json, save_torch, save_with_checksum, verify_file
from .maskgit import (BidirectionalTransformer, MaskGITConfig, MaskGITNet, MaskGITVQGM, Tokenizer, build_maskgit,
                      nearest_code)
from .tokenizer import codebook_usage
from .training import RECIPE_VERSION, bf16_ok, config_dict, end_step, load_state, lr_at, step_bar, step_seed

__all__ = ["train_tokenizer", "mask_tokens", "train_prior", "encode_tokens", "build_key", "is_built",
           "build_toy_maskgit", "save_maskgit", "load_maskgit"]

logger = logging.getLogger(__name__)


def _rng_devices(device: torch.device) -> list:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def _pixel_weights(masks, cfg: MaskGITConfig) -> torch.Tensor:
    """(B, 1, H, W) loss weights: 1, plus head_weight on head pixels and body_weight on body pixels."""
    m = torch.as_tensor(masks, dtype=torch.int64)
    return (1.0 + cfg.head_weight * (m == toyworld.HEAD).float() + cfg.body_weight * (m == toyworld.BODY).float())[:, None]


def train_tokenizer(cfg: MaskGITConfig, *, seed: int, device: str | torch.device = "cpu",
                    ckpt_dir: str | os.PathLike, n_classes: int = 10, scene_bias: float = 0.65, progress: bool = True,
                    callback: Callable[[int, dict], None] | None = None) -> tuple[Tokenizer, dict]:
    """Train the MaskGIT tokenizer on fresh ToyBirds; resumable from ``ckpt_dir/maskgit_tokenizer.pt``.

    Returns:
        (tokenizer in eval mode, dict(steps, seconds, final_loss, history)): history rows hold step, loss, rec
        (weighted reconstruction), commit, perplexity and used codes over the logged window, lr.
    """
    device = torch.device(device)
    key = digest(dict(part="maskgit_tokenizer", v=RECIPE_VERSION, cfg=cfg.settings("tokenizer"), seed=int(seed),
                      n_classes=int(n_classes), scene_bias=float(scene_bias)))
    path = Path(ckpt_dir) / "maskgit_tokenizer.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = Tokenizer(cfg)
    tok.to(device)
    opt = torch.optim.Adam(tok.parameters(), lr=cfg.tok_lr, betas=(0.9, 0.99))   # the codebook is an EMA buffer
    step, seconds, history, window = 0, 0.0, [], []
    state = load_state(path, key)
    if state is not None:
        tok.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, seconds, history = state["step"], state["seconds"], state["history"]

    def save() -> None:
        save_torch(dict(key=key, model=tok.state_dict(), opt=opt.state_dict(), step=step, seconds=seconds,
                        history=history, done=step >= cfg.tok_steps), path)

    def stats() -> dict:
        u = codebook_usage(torch.cat(window), cfg.K)
        window.clear()
        return dict(step=step, loss=loss.item(), rec=rec.item(), commit=commit.item(), perplexity=u["perplexity"],
                    used=u["used"], lr=opt.param_groups[0]["lr"])

    sched = SimpleNamespace(steps=cfg.tok_steps, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every)
    amp = cfg.amp and bf16_ok(device)
    bar = step_bar(cfg.tok_steps, step, "maskgit tokenizer", progress and step < cfg.tok_steps)
    tok.train()
    try:
        while step < cfg.tok_steps:
            t0 = time.perf_counter()
            b = toyworld.sample(cfg.tok_batch_size, step_seed(seed, step, 1), n_classes=n_classes,
                                image_size=cfg.image_size, scene_bias=scene_bias)
            x, w = toyworld.to_tensor(b.images).to(device), _pixel_weights(b.masks, cfg).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg.tok_lr, cfg.tok_warmup, cfg.tok_steps, cfg.min_lr_frac)
            with torch.random.fork_rng(devices=_rng_devices(device)):
                torch.manual_seed(step_seed(seed, step, 2))       # k-means init and dead-code restarts
                with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    h = tok.features(x).float()                   # (B, d, m, m)
                zq, idx, commit = tok.quantize(h)                 # EMA codebook update in train mode
                with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    xrec = tok.decode(zq).float()                 # (B, 3, H, H)
            err = xrec - x
            rec = (w * (err.abs() + cfg.l2_weight * err * err)).mean() / w.mean()
            loss = rec + commit
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(idx.detach().reshape(-1).cpu())
            step += 1
            seconds += time.perf_counter() - t0
            end_step(step, sched, stats, history, bar, callback, save,
                     lambda r: dict(loss=f"{r['loss']:.4f}", ppl=f"{r['perplexity']:.0f}", used=r["used"]))
    finally:
        if bar is not None:
            bar.close()
    opt.zero_grad(set_to_none=True)                               # no stale gradients on the returned model
    tok.eval()
    return tok, dict(steps=step, seconds=seconds, final_loss=history[-1]["loss"] if history else None,
                     history=history)


def mask_tokens(z: torch.Tensor, mask_id: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskGIT's training mask: z (B, n) -> (inputs with [MASK] = ``mask_id``, mask (B, n) bool). Per row r ~ U(0, 1)
    and ceil(cos(pi/2 r) n) positions (at least 1), uniformly chosen, are masked."""
    B, n = z.shape
    r = torch.rand(B, generator=generator)
    n_mask = torch.ceil(torch.cos(math.pi / 2 * r) * n).clamp(1, n).long()           # (B,)
    ranks = torch.rand(B, n, generator=generator).argsort(1).argsort(1)            # a random order per row
    mask = (ranks < n_mask[:, None]).to(z.device)
    return z.masked_fill(mask, mask_id), mask


def train_prior(cfg: MaskGITConfig, tokens: torch.Tensor, labels: torch.Tensor, *, n_classes: int, seed: int,
                device: str | torch.device = "cpu", ckpt_dir: str | os.PathLike, progress: bool = True,
                callback: Callable[[int, dict], None] | None = None) -> tuple[BidirectionalTransformer, dict]:
    """Train the bidirectional prior on token grids (N, m, m) with class ``labels`` (N,); resumable from
    ``ckpt_dir/maskgit_prior.pt``. AdamW (decay on weight matrices), warmup + cosine, gradient clipping; batches walk
    a per-epoch permutation. Returns (prior in eval mode, dict(steps, seconds, final_loss, history))."""
    device = torch.device(device)
    tokens = torch.as_tensor(tokens).to(torch.int64)
    labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    m = cfg.m
    if tuple(tokens.shape[1:]) != (m, m) or tokens.dim() != 3 or tokens.shape[0] != labels.numel():
        raise ValueError(f"tokens must be (N, {m}, {m}) with N = len(labels); got {tuple(tokens.shape)} and "
                         f"{labels.numel()} labels")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.K):
        raise ValueError(f"token ids must lie in [0, {cfg.K})")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    N = tokens.shape[0]
    data = hashlib.sha256(tokens.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()[:16]
    key = digest(dict(part="maskgit_prior", v=RECIPE_VERSION, cfg=cfg.settings("prior"), K=cfg.K, m=m,
                      n_classes=int(n_classes), seed=int(seed), data=data))
    path = Path(ckpt_dir) / "maskgit_prior.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = BidirectionalTransformer(cfg.K, m, n_classes, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout)
    prior.to(device)
    named = list(prior.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in named if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.prior_lr, betas=(0.9, 0.95))
    step, seconds, history, recent = 0, 0.0, [], []
    state = load_state(path, key)
    if state is not None:
        prior.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, seconds, history, recent = state["step"], state["seconds"], state["history"], state["recent"]

    def save() -> None:
        save_torch(dict(key=key, model=prior.state_dict(), opt=opt.state_dict(), step=step, seconds=seconds,
                        history=history, recent=recent, done=step >= cfg.prior_steps), path)

    sched = SimpleNamespace(steps=cfg.prior_steps, log_every=cfg.log_every, ckpt_every=cfg.ckpt_every)
    per_epoch = max(1, N // cfg.prior_batch_size)
    perm, perm_epoch = None, -1
    amp = cfg.amp and bf16_ok(device)
    bar = step_bar(cfg.prior_steps, step, "maskgit prior", progress and step < cfg.prior_steps)
    prior.train()
    try:
        while step < cfg.prior_steps:
            t0 = time.perf_counter()
            epoch, i = divmod(step, per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(N, generator=torch.Generator().manual_seed(step_seed(seed, epoch, 3)))
                perm_epoch = epoch
            sel = perm[i * cfg.prior_batch_size:(i + 1) * cfg.prior_batch_size]
            z = tokens[sel].reshape(sel.numel(), m * m)
            inp, mask = mask_tokens(z, prior.mask_id, torch.Generator().manual_seed(step_seed(seed, step, 6)))
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg.prior_lr, cfg.prior_warmup, cfg.prior_steps, cfg.min_lr_frac)
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                logits = prior(inp.to(device), labels[sel].to(device))           # (B, n, K)
            mask = mask.to(device)
            loss = F.cross_entropy(logits.float()[mask], z.to(device)[mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(prior.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            seconds += time.perf_counter() - t0
            recent = (recent + [loss.item()])[-cfg.log_every:]
            end_step(step, sched, lambda: dict(step=step, loss=sum(recent) / len(recent),
                                               lr=opt.param_groups[0]["lr"]),
                     history, bar, callback, save, lambda r: dict(loss=f"{r['loss']:.3f}"))
    finally:
        if bar is not None:
            bar.close()
    opt.zero_grad(set_to_none=True)
    prior.eval()
    return prior, dict(steps=step, seconds=seconds, final_loss=history[-1]["loss"] if history else None,
                       history=history)


@torch.no_grad()
def encode_tokens(tok: Tokenizer, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images (N, 3, H, H) in [-1, 1] -> tokens (N, m, m) on the CPU: nearest code of each encoder output."""
    dev = tok.codebook.device
    out = []
    for x in images.split(batch_size):
        h = tok.features(x.to(dev))                                                # (b, d, m, m)
        idx = nearest_code(h.permute(0, 2, 3, 1).reshape(-1, h.shape[1]), tok.codebook)
        out.append(idx.reshape(x.shape[0], h.shape[2], h.shape[3]).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# the cached build


def build_key(cfg: MaskGITConfig, *, seed: int = 0, n_classes: int = 10, scene_bias: float = 0.65) -> str:
    """The digest of every setting a build depends on (what ``build.json`` records). The sampler's knobs (steps,
    temperature, top_k, choice_temperature) are not among them: training never reads them, and a model decodes with
    any (:func:`load_maskgit`'s ``sampler``), so changing them never retrains."""
    sampler = cfg.settings("sampler")
    return digest(dict(v=RECIPE_VERSION, family="maskgit",
                       config={k: v for k, v in config_dict(cfg).items() if k not in sampler}, seed=int(seed),
                       n_classes=int(n_classes), scene_bias=float(scene_bias)))


def is_built(out_dir: str | os.PathLike, key: str) -> bool:
    """Whether ``out_dir`` holds a finished build (config.json, model.pt, report.json, build.json) of ``key``."""
    out = Path(out_dir)
    if not all((out / f).is_file() for f in ("config.json", "model.pt", "report.json", "build.json")):
        return False
    try:
        return json.loads((out / "build.json").read_text()).get("hash") == key
    except (OSError, ValueError):
        return False


@torch.no_grad()
def _report(vq: MaskGITVQGM, seed: int, n: int, n_classes: int, scene_bias: float) -> dict:
    """Reconstruction error (all pixels, head pixels) and codebook usage on n held-out real toy images."""
    b = toyworld.sample(n, step_seed(seed, 0, 5), n_classes=n_classes, image_size=vq.image_size,
                        scene_bias=scene_bias)
    x, head = toyworld.to_tensor(b.images), torch.as_tensor(b.masks == toyworld.HEAD).float()
    tokens = vq.encode(x, batch_size=256)
    r = vq.decode(tokens, batch_size=256).cpu()
    e = (r - x).abs().mean(1)                                                      # (n, H, W)
    u = codebook_usage(tokens, vq.K)
    return dict(n_images=n, recon_l1=float(e.mean()), recon_mse=float((r - x).pow(2).mean()),
                recon_l1_head=float(((e * head).flatten(1).sum(1) / head.flatten(1).sum(1).clamp(min=1)).mean()),
                perplexity=u["perplexity"], used=u["used"], dead=u["dead"])


def build_toy_maskgit(out_dir: str | os.PathLike, cfg: MaskGITConfig | None = None, *, seed: int = 0,
                      device: str | torch.device = "cpu", n_classes: int = 10, scene_bias: float = 0.65,
                      progress: bool = False) -> dict:
    """Train (or reuse) the toy MaskGIT and save it to ``out_dir`` (config.json, model.pt, report.json, build.json).

    Cached: when build.json's hash equals :func:`build_key` of these settings nothing runs. Otherwise the tokenizer
    and the prior are trained, each resumable from ``out_dir/train`` (the prior's training grids, ``prior_n_train``
    fresh images encoded once, are cached there too), assembled, saved with :func:`save_maskgit` and reported on.

    Returns:
        dict(dir, config, model (Paths), report (dict: recon L1 / MSE / head L1 on ``n_report`` held-out images,
        codebook perplexity / used / dead, training seconds and final losses, cached)). Read it back with
        :func:`load_maskgit` (``paths["dir"]``).
    """
    cfg = cfg or MaskGITConfig()
    out, train_dir = Path(out_dir), Path(out_dir) / "train"
    paths = dict(dir=out, config=out / "config.json", model=out / "model.pt")
    key = build_key(cfg, seed=seed, n_classes=n_classes, scene_bias=scene_bias)
    if is_built(out, key):
        logger.info("toy MaskGIT: reusing %s (settings hash %s)", out, key)
        return dict(**paths, report=dict(json.loads((out / "report.json").read_text()), cached=True))
    device = torch.device(device)
    tok, tok_stats = train_tokenizer(cfg, seed=seed, device=device, ckpt_dir=train_dir, n_classes=n_classes,
                                     scene_bias=scene_bias, progress=progress)
    t0 = time.perf_counter()
    tok_key = digest(dict(part="maskgit_prior_tokens", v=RECIPE_VERSION, tokenizer=cfg.settings("tokenizer"),
                          n_train=cfg.prior_n_train, seed=int(seed), n_classes=int(n_classes),
                          scene_bias=float(scene_bias)))
    cached = load_state(train_dir / "maskgit_prior_tokens.pt", tok_key)
    if cached is None:
        b = toyworld.sample(cfg.prior_n_train, step_seed(seed, 0, 4), n_classes=n_classes,
                            image_size=cfg.image_size, scene_bias=scene_bias)
        tokens = encode_tokens(tok, toyworld.to_tensor(b.images))
        labels = torch.as_tensor(b.labels, dtype=torch.int64)
        save_torch(dict(key=tok_key, tokens=tokens, labels=labels), train_dir / "maskgit_prior_tokens.pt")
    else:
        tokens, labels = cached["tokens"], cached["labels"]
    encode_seconds = time.perf_counter() - t0
    prior, prior_stats = train_prior(cfg, tokens, labels, n_classes=n_classes, seed=seed, device=device,
                                     ckpt_dir=train_dir, progress=progress)
    vq = MaskGITVQGM(MaskGITNet(tok, prior), cfg, n_classes)
    save_maskgit(vq, out)
    report = dict(_report(vq, seed, cfg.n_report, n_classes, scene_bias), tokenizer_seconds=tok_stats["seconds"],
                  encode_seconds=encode_seconds, prior_seconds=prior_stats["seconds"],
                  tokenizer_steps=tok_stats["steps"], tokenizer_final_loss=tok_stats["final_loss"],
                  prior_steps=prior_stats["steps"], prior_final_loss=prior_stats["final_loss"],
                  prior_n_train=int(tokens.shape[0]), K=vq.K, d=vq.d, m=vq.m, fingerprint=vq.fingerprint(), hash=key)
    save_json(out / "report.json", report)
    save_json(out / "build.json", dict(hash=key, settings=dict(config=config_dict(cfg), seed=int(seed),
                                                                 n_classes=int(n_classes),
                                                                 scene_bias=float(scene_bias))))
    return dict(**paths, report=dict(report, cached=False))


# --------------------------------------------------------------------------------------------
# save / load


def save_maskgit(vqgm: MaskGITVQGM, out_dir: str | os.PathLike) -> dict:
    """Write ``config.json`` (settings) and ``model.pt`` (state dict, with a .sha256 sidecar) atomically."""
    out = Path(out_dir)
    paths = dict(config=out / "config.json", model=out / "model.pt")
    save_json(paths["config"], vqgm.settings())
    save_with_checksum({k: v.detach().cpu() for k, v in vqgm.net.state_dict().items()}, paths["model"])
    return paths


def _flat(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


def load_maskgit(path: str | os.PathLike, device: str | torch.device = "cpu", sampler: dict | None = None
                 ) -> MaskGITVQGM:
    """The model :func:`save_maskgit` wrote to directory ``path``; ``sampler``: sampler defaults (any of steps,
    temperature, top_k, choice_temperature) in place of those saved with it (a profile's). Raises CheckpointError
    (naming the file) if a file is missing, damaged (checksum sidecar / zip CRCs,
    :func:`cortex_nb.io.files.verify_file`) or does not fit."""
    cfg_path, model_path = Path(path) / "config.json", Path(path) / "model.pt"
    fix = f"rebuild the model (cortex_nb.toy.maskgit_training.build_toy_maskgit) into {Path(path)}"
    for p in (cfg_path, model_path):
        if not p.is_file():
            raise CheckpointError(f"MaskGIT model file {p} is missing", fix=fix)
    try:
        spec = json.loads(cfg_path.read_text())
        n_classes = int(spec.pop("n_classes"))
        cfg = MaskGITConfig(**spec)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{cfg_path} is not a MaskGIT config ({_flat(exc)})", fix=fix) from exc
    if sampler:
        unknown = set(sampler) - set(cfg.settings("sampler"))
        if unknown:
            raise ValueError(f"sampler: unknown knob(s) {sorted(unknown)}; one of {sorted(cfg.settings('sampler'))}")
        cfg = dataclasses.replace(cfg, **sampler)    # __post_init__ checks the values
    verify_file(model_path)
    try:
        sd = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a damaged checkpoint
        raise CheckpointError(f"{model_path} cannot be read ({_flat(exc)})", fix=DAMAGED_FIX) from exc
    vq = build_maskgit(cfg, n_classes)
    try:
        vq.net.load_state_dict(sd, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{model_path} does not fit {cfg_path} ({_flat(exc)})", fix=fix) from exc
    return vq.to(device)
