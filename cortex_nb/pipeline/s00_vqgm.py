"""Section 00 (notebook 00_toy_vqgm): the VQGM seen by CORTEX (§2.1) and the evaluators that judge
its images (§4.1) — the toy world, the tokenizer's quality, samples of the prior.

Writes figures/<p>/toyworld, reconstructions, prior_samples and tables/<p>/vqgm_quality,
toy_evaluators (toy profiles). :func:`run` computes everything the notebook shows;
``python -m cortex_nb vqgm-report`` calls it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..io.figures import image_grid, save_figure, to_uint8
from ..io.files import load_cache_json, load_json, save_json
from ..io.tables import mean_ci, write_table
from .keys import cache_path, quality_key
from .run import (SectionResult, class_names, display_name, get_evaluators, get_vqgm, real_toy_images,
                  setup)

__all__ = ["toyworld_figure", "vqgm_report", "quality_table", "reconstruction_figure", "evaluator_training_table",
           "prior_samples", "samples_figure", "evaluator_scores", "run"]


def toyworld_figure(cfg: DictConfig, per_class: int = 8):
    """Real toy images, a row per species, with the head/body masks of the first row beside."""
    from ..toy import world as toyworld

    n = int(cfg.world.n_classes)
    batch = toyworld.render(np.repeat(np.arange(n), per_class), seed=int(cfg.seed) + 99,
                            image_size=int(cfg.world.image_size), scene_bias=float(cfg.world.scene_bias))
    masks = batch.masks[::per_class]  # one per species
    palette = np.array([[40, 40, 40], [90, 160, 230], [250, 200, 40]], np.uint8)  # bg, body, head
    images = np.concatenate([batch.images.reshape(n, per_class, *batch.images.shape[1:]),
                             palette[masks][:, None]], axis=1).reshape(-1, *batch.images.shape[1:])
    fig = image_grid(images, per_class + 1, row_labels=class_names(cfg),
                     title="ToyBirds: rows are species (pairs 0/1, 2/3, ... differ only in the head); "
                           "last column: part mask (blue body, yellow head)")
    save_figure(fig, cfg.paths.figures, "toyworld")
    return fig


def vqgm_report(cfg: DictConfig, vqgm, evaluators: dict) -> dict:
    """How good is the toy tokenizer? On held-out real toy images: reconstruction error,
    codebook usage, and each evaluator's accuracy on the real images vs their reconstructions
    (the gate: reconstructions should be recognised at >= 90 % of the real accuracy), overall
    and within the head-only pairs. Cached under :func:`cortex_nb.pipeline.keys.quality_key`."""
    from ..toy import world as toyworld
    from ..toy.tokenizer import codebook_usage

    key = quality_key(cfg, vqgm, evaluators)
    path = cache_path(cfg, "vqgm", "quality.json")
    cached = load_cache_json(path)
    if isinstance(cached, dict) and cached.get("_key") == key:
        return cached
    real = real_toy_images(cfg, int(cfg.vqgm.n_report), "report")
    x = toyworld.to_tensor(real.images)                                   # (B, 3, H, W) in [-1, 1]
    toks = torch.cat([vqgm.encode(x[i:i + 256].to(vqgm.device)).cpu() for i in range(0, len(x), 256)])
    rec = torch.cat([vqgm.decode(toks[i:i + 256]).cpu() for i in range(0, len(toks), 256)])
    usage = codebook_usage(toks, vqgm.K)
    out = {"n": len(x), "l1": float((rec - x).abs().mean()), "mse": float(((rec - x) ** 2).mean()),
           "perplexity": float(usage["perplexity"]), "used": int(usage["used"]), "dead": int(usage["dead"]),
           "K": int(vqgm.K), "evaluators": {}}
    labels = torch.as_tensor(real.labels)
    partner = torch.as_tensor([b if a == c else a for c in range(int(cfg.world.n_classes))
                               for a, b in toyworld.HEAD_PAIRS if c in (a, b)])
    for name, e in evaluators.items():
        pr, pc = e.predict_proba(x), e.predict_proba(rec)
        acc_real = float((pr.argmax(1) == labels).float().mean())
        acc_rec = float((pc.argmax(1) == labels).float().mean())
        # within-pair: does the head survive? compare only the two species of the image's pair
        pair = torch.stack([labels, partner[labels]], 1)
        pw = pc.gather(1, pair)
        pair_acc = float((pw[:, 0] > pw[:, 1]).float().mean())
        out["evaluators"][display_name(name)] = {"acc_real": acc_real, "acc_recon": acc_rec,
                                                 "ratio": acc_rec / max(acc_real, 1e-9),
                                                 "pair_acc_recon": pair_acc}
    save_json(path, {**out, "_key": key})
    return out


def quality_table(cfg: DictConfig, report: dict) -> pd.DataFrame:
    """The tokenizer's quality report as a table (results/<p>/tables/vqgm_quality.*)."""
    rows = [{"evaluator": name, "acc_real": r["acc_real"], "acc_recon": r["acc_recon"], "ratio": r["ratio"],
             "pair_acc_recon": r["pair_acc_recon"]} for name, r in report["evaluators"].items()]
    df = pd.DataFrame(rows)
    disp = df.copy()
    for c in ("acc_real", "acc_recon", "pair_acc_recon"):
        disp[c] = [f"{100 * v:.1f}%" for v in df[c]]
    disp["ratio"] = [f"{v:.3f}" for v in df["ratio"]]
    disp.columns = ["Evaluator", "Acc real", "Acc reconstructed", "Recon / real", "Within-pair acc (recon)"]
    cap = (f"Toy tokenizer on {report['n']} held-out real images: L1 {report['l1']:.4f}, MSE {report['mse']:.4f}, "
           f"codebook perplexity {report['perplexity']:.0f}, {report['used']}/{report['K']} codes used. "
           "Gate: reconstructions recognised at >= 90% of the real accuracy.")
    write_table(df, cfg.paths.tables, "vqgm_quality", caption=cap, display=disp)
    return disp


def reconstruction_figure(cfg: DictConfig, vqgm, n: int = 10):
    """Real toy images (top row) and their VQGM reconstructions (bottom row)."""
    from ..toy import world as toyworld

    real = real_toy_images(cfg, n, "report")
    x = toyworld.to_tensor(real.images).to(vqgm.device)
    rec = vqgm.decode(vqgm.encode(x)).cpu()
    fig = image_grid(np.concatenate([real.images, to_uint8(rec)]), n, row_labels=["real", "reconstructed"],
                     title=f"{vqgm.m} x {vqgm.m} tokens, K = {vqgm.K}")
    save_figure(fig, cfg.paths.figures, "reconstructions")
    return fig


def evaluator_training_table(cfg: DictConfig) -> pd.DataFrame:
    """Held-out accuracy (real toy images), training time and origin of each toy evaluator: "trained
    here" or shipped (cortex_nb/artifacts: the machine that trained it; its training seconds are that
    machine's)."""
    rep = load_json(Path(cfg.paths.cache) / "evaluators" / "report.json")
    rows = [{"evaluator": display_name(n), "val_acc": r["val_acc"], "train_seconds": r["seconds"],
             "source": r.get("source", "trained here")} for n, r in rep.items() if not n.startswith("_")]
    df = pd.DataFrame(rows)
    disp = pd.DataFrame({"Evaluator": df.evaluator, "Held-out acc (real)": [f"{100 * v:.1f}%" for v in df.val_acc],
                         "Training (s)": [f"{v:.0f}" for v in df.train_seconds], "Weights": df.source})
    write_table(df, cfg.paths.tables, "toy_evaluators", display=disp,
                caption=f"Toy evaluators on {cfg.evaluators.n_val} held-out real toy images")
    return disp


def prior_samples(cfg: DictConfig, vqgm, per_class: int | None = None, seed_offset: int = 7):
    """``per_class`` prior samples per class (default ``vqgm.n_samples``) of every class of the run: tokens
    (B, m, m), labels (B,) and decoded float images (B, 3, H, W), with the profile's sampler
    settings; a fresh seed so it never overlaps the dataset's shards."""
    from .run import class_ids

    per_class = per_class if per_class is not None else int(cfg.vqgm.n_samples)
    d = cfg.data
    labels = torch.from_numpy(class_ids(cfg)).repeat_interleave(per_class)
    toks = vqgm.sample(labels, temperature=float(d.temperature), top_k=d.top_k, top_p=d.top_p,
                       seed=int(cfg.seed) + seed_offset, batch_size=int(d.batch_size))
    images = torch.cat([vqgm.decode(toks[i:i + 64]).cpu() for i in range(0, len(toks), 64)])
    return toks, labels, images


def samples_figure(cfg: DictConfig, images, labels, per_class: int = 8, name: str = "generated_samples",
                   title: str = "Samples of the class-conditional prior, a row per class"):
    """A grid of generated images, a row per class (first ``per_class`` of each)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)[:10]                                   # the first ten classes the images hold
    per = int(min(per_class, max(np.sum(labels == c) for c in classes)))
    idx = np.concatenate([np.flatnonzero(labels == c)[:per] for c in classes])
    names = class_names(cfg)
    fig = image_grid(to_uint8(images)[idx] if not isinstance(images, np.ndarray) else np.asarray(images)[idx],
                     per, row_labels=[names[int(c)] for c in classes], title=title)
    save_figure(fig, cfg.paths.figures, name)
    return fig


def evaluator_scores(evaluators: dict, images, labels, *, seed: int = 0) -> pd.DataFrame:
    """Per evaluator: accuracy and mean true-class probability on ``images`` with 95 % bootstrap
    intervals (the Acc and P columns of the paper's Table 2)."""
    labels_t = torch.as_tensor(np.asarray(labels))
    rows = []
    for name, e in evaluators.items():
        proba = e.predict_proba(images)                                 # (B, n_classes)
        correct = (proba.argmax(1) == labels_t).float().numpy()
        p_true = proba.gather(1, labels_t[:, None]).squeeze(1).numpy()
        acc, p = mean_ci(correct, seed=seed), mean_ci(p_true, seed=seed)
        rows.append({"evaluator": display_name(name), "n": len(labels_t),
                     "acc": acc["mean"], "acc_lo": acc["lo"], "acc_hi": acc["hi"],
                     "p": p["mean"], "p_lo": p["lo"], "p_hi": p["hi"]})
    return pd.DataFrame(rows)


def run(cfg: DictConfig) -> SectionResult:
    """Everything notebook 00 shows, in its order: the toy world, the VQGM, the evaluators, the
    tokenizer's quality (toy), the prior's samples and how the evaluators score them."""
    setup(cfg)
    out = SectionResult("vqgm-report")
    toy = cfg.vqgm.source == "toy"
    if toy:
        out.figures["toyworld"] = toyworld_figure(cfg)
    vqgm = get_vqgm(cfg)
    evaluators = get_evaluators(cfg)
    if cfg.evaluators.source == "toy":
        out.tables["toy_evaluators"] = evaluator_training_table(cfg)
    if toy:
        out.values["quality"] = report = vqgm_report(cfg, vqgm, evaluators)
        out.tables["vqgm_quality"] = quality_table(cfg, report)
        out.figures["reconstructions"] = reconstruction_figure(cfg, vqgm)
    toks, labels, images = prior_samples(cfg, vqgm)
    out.figures["prior_samples"] = samples_figure(cfg, images, labels, name="prior_samples")
    out.tables["prior_samples_scores"] = evaluator_scores(evaluators, images, labels, seed=cfg.seed)
    return out
