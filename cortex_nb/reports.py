"""The figures and tables of notebooks 00–01: the toy world, the tokenizer's quality, the
synthetic dataset. Each function writes its file(s) and returns what the notebook shows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from .figures import image_grid, save_figure, to_uint8
from .stages import class_names, evaluator_scores, real_toy_images
from .store import TokenStore
from .tables import fmt_ci, write_table

__all__ = ["toyworld_figure", "reconstruction_figure", "quality_table", "prior_samples", "evaluator_training_table", "table1", "training_curves_figure", "fig3", "table2",
           "localisation_table", "token_figure", "table3", "fig4", "fig6",
           "samples_figure", "dataset_table", "generated_accuracy_table"]

def toyworld_figure(cfg: DictConfig, per_class: int = 8):
    """Real toy images, a row per species, with the head/body masks of the first row beside."""
    from . import toyworld

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


def reconstruction_figure(cfg: DictConfig, vqgm, n: int = 10):
    """Real toy images (top row) and their VQGM reconstructions (bottom row)."""
    from . import toyworld

    real = real_toy_images(cfg, n, "report")
    x = toyworld.to_tensor(real.images).to(vqgm.device)
    rec = vqgm.decode(vqgm.encode(x)).cpu()
    fig = image_grid(np.concatenate([real.images, to_uint8(rec)]), n, row_labels=["real", "reconstructed"],
                     title=f"{vqgm.m} x {vqgm.m} tokens, K = {vqgm.K}")
    save_figure(fig, cfg.paths.figures, "reconstructions")
    return fig


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


def prior_samples(cfg: DictConfig, vqgm, per_class: int, seed_offset: int = 7):
    """``per_class`` prior samples per class (tokens, labels, decoded float images), with the
    profile's sampler settings; a fresh seed so it never overlaps the dataset's shards."""
    d = cfg.data
    labels = torch.arange(int(cfg.world.n_classes)).repeat_interleave(per_class)
    toks = vqgm.sample(labels, temperature=float(d.temperature), top_k=d.top_k, top_p=d.top_p,
                       seed=int(cfg.seed) + seed_offset, batch_size=int(d.batch_size))
    images = torch.cat([vqgm.decode(toks[i:i + 64]).cpu() for i in range(0, len(toks), 64)])
    return toks, labels, images


def samples_figure(cfg: DictConfig, images, labels, per_class: int = 8, name: str = "generated_samples",
                   title: str = "Samples of the class-conditional prior, a row per class"):
    """A grid of generated images, a row per class (first ``per_class`` of each)."""
    labels = np.asarray(labels)
    n = int(cfg.world.n_classes)
    rows = min(n, 10)
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(rows)])
    fig = image_grid(to_uint8(images)[idx] if not isinstance(images, np.ndarray) else np.asarray(images)[idx],
                     per_class, row_labels=class_names(cfg)[:rows], title=title)
    save_figure(fig, cfg.paths.figures, name)
    return fig


def dataset_table(cfg: DictConfig, stores: dict[str, TokenStore]) -> pd.DataFrame:
    """Size of each split on disk against the reference's float32 embedding files."""
    rows = []
    for split, st in stores.items():
        tok_bytes = (Path(st.path) / "tokens.npy").stat().st_size
        img = Path(st.path) / "images.npy"
        rows.append({"split": split, "samples": len(st), "per_class": st.meta["n_per_class"],
                     "token_bytes_per_sample": st.tokens[0].nbytes,
                     "tokens_file_MB": tok_bytes / 2**20,
                     "images_file_MB": img.stat().st_size / 2**20 if img.exists() else 0.0,
                     # the reference writes one float32 d x m x m embedding per sample
                     "reference_embedding_MB": len(st) * 4 * st.meta["d"] * st.tokens[0].size / 2**20})
    df = pd.DataFrame(rows)
    write_table(df.round(3), cfg.paths.tables, "dataset_sizes",
                caption="Synthetic dataset: token indices (uint16) on disk vs the reference's float32 embeddings")
    return df


def generated_accuracy_table(cfg: DictConfig, evaluators: dict, test: TokenStore) -> pd.DataFrame:
    """Evaluators' accuracy and mean true-class probability on the generated test images
    (the Acc and P columns of the paper's Table 2), with 95 % bootstrap intervals."""
    df = evaluator_scores(evaluators, np.asarray(test.images), test.labels, seed=int(cfg.seed))
    disp = pd.DataFrame({"Evaluator": df.evaluator,
                         "Acc": [fmt_ci(a, lo, hi, pct=True) for a, lo, hi in zip(df.acc, df.acc_lo, df.acc_hi)],
                         "P": [fmt_ci(a, lo, hi) for a, lo, hi in zip(df.p, df.p_lo, df.p_hi)]})
    write_table(df, cfg.paths.tables, "generated_test_accuracy", display=disp,
                caption=f"Evaluators on the {len(test)} generated test images (chance: {1 / cfg.world.n_classes:.0%})")
    return disp


def evaluator_training_table(cfg: DictConfig) -> pd.DataFrame:
    """Held-out accuracy (real toy images) and training time of each toy evaluator."""
    from .stages import DISPLAY
    from .files import load_json

    rep = load_json(Path(cfg.paths.cache) / "evaluators" / "report.json")
    rows = [{"evaluator": DISPLAY.get(n, n), "val_acc": r["val_acc"], "train_seconds": r["seconds"]}
            for n, r in rep.items() if not n.startswith("_")]
    df = pd.DataFrame(rows)
    disp = pd.DataFrame({"Evaluator": df.evaluator, "Held-out acc (real)": [f"{100 * v:.1f}%" for v in df.val_acc],
                         "Training (s)": [f"{v:.0f}" for v in df.train_seconds]})
    write_table(df, cfg.paths.tables, "toy_evaluators", display=disp,
                caption=f"Toy evaluators on {cfg.evaluators.n_val} held-out real toy images")
    return disp


def table1(cfg: DictConfig, acc: pd.DataFrame, ks=(1, 3, 5, 10)) -> pd.DataFrame:
    """Table 1 in the paper's layout (accuracy in %), with 95 % bootstrap intervals, written as
    results/<profile>/tables/table1_extractor_accuracy.{csv,md,tex}."""
    disp = pd.DataFrame({"Model": acc.extractor})
    for k in ks:
        disp[f"Top {k}"] = [f"{100 * v:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                            for v, lo, hi in zip(acc[f"top{k}"], acc[f"top{k}_lo"], acc[f"top{k}_hi"])]
    n = int(cfg.world.n_classes)
    cap = (f"Table 1: information extractor prediction accuracy (%) on the generated test split "
           f"({cfg.data.n_test} per class, {n} classes; 95% bootstrap intervals)"
           + (f". With {n} classes, top-{n} is 100% by construction." if n <= max(ks) else ""))
    write_table(acc, cfg.paths.tables, "table1_extractor_accuracy", display=disp, caption=cap)
    return disp


def training_curves_figure(cfg: DictConfig, results: dict):
    """Training / validation loss and top-1 accuracy per epoch for each extractor."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for arch, res in results.items():
        h = res.history
        for ax, col in zip(axes, ("loss", "acc")):
            line, = ax.plot(h.epoch, h[f"train_{col}"], label=f"{arch} train")
            ax.plot(h.epoch, h[f"val_{col}"], "--", color=line.get_color(), label=f"{arch} val")
            ax.axvline(res.best_epoch, color=line.get_color(), alpha=0.25)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    axes[1].set(xlabel="epoch", ylabel="top-1 accuracy", title="accuracy (vertical: best epoch)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, "extractor_training_curves")
    return fig


# --------------------------------------------------------------------------------------
# saliency (notebooks 03-04)
# --------------------------------------------------------------------------------------

METHOD_LABEL = {"CE": "CORTEX (CE)", "RE": "CORTEX (RE)", "random": "random", "frequency": "frequency baseline",
                "class-vs-rest": "class-vs-rest baseline"}


def fig3(cfg: DictConfig, df: pd.DataFrame, name: str = "fig3_image_level"):
    """Fig. 3: mean true-class probability vs n masked tokens, a panel per evaluator, CE, RE and
    random with 95 % bands; the CSV beside the figure in results/<profile>/tables/."""
    import matplotlib.pyplot as plt

    evs = list(dict.fromkeys(df.evaluator))
    fig, axes = plt.subplots(1, len(evs), figsize=(3.1 * len(evs), 2.8), squeeze=False, sharey=True)
    base = df[df.method == "unmasked"].set_index("evaluator")
    for ax, ev in zip(axes[0], evs):
        for method, style in (("CE", "-o"), ("RE", "-s"), ("random", "--^")):
            d = df[(df.evaluator == ev) & (df.method == method)].sort_values("n")
            if d.empty:
                continue
            line, = ax.plot(d.n, d.p, style, ms=3, label=METHOD_LABEL[method])
            ax.fill_between(d.n, d.p_lo, d.p_hi, color=line.get_color(), alpha=0.2)
        ax.axhline(base.loc[ev, "p"], color="grey", lw=0.8, ls=":", label="unmasked")
        ax.set(title=ev, xlabel="masked tokens n")
    axes[0, 0].set_ylabel("mean true-class probability")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    write_table(df, cfg.paths.tables, name, caption="Fig. 3 data: true-class probability vs masked tokens")
    return fig


def table2(cfg: DictConfig, df: pd.DataFrame, name: str = "table2_concept_level") -> pd.DataFrame:
    """Table 2 in the paper's layout: per evaluator Acc, P, then n, ΔA, ΔP for each token set."""
    methods = list(dict.fromkeys(df.method))
    rows = []
    for ev, g in df.groupby("evaluator", sort=False):
        g = g.set_index("method")
        first = g.iloc[0]
        row = {"Evaluator": ev, "Acc": f"{100 * first.acc:.1f}%", "P": f"{first.p:.3f}"}
        for mth in methods:
            r = g.loc[mth]
            lab = METHOD_LABEL.get(mth, mth)
            row[f"{lab}: n"] = f"{r.n_masked:.2f}"
            row[f"{lab}: ΔA"] = f"{100 * r.dA:+.1f}% [{100 * r.dA_lo:+.1f}, {100 * r.dA_hi:+.1f}]"
            row[f"{lab}: ΔP"] = f"{r.dP:+.3f} [{r.dP_lo:+.3f}, {r.dP_hi:+.3f}]"
        rows.append(row)
    disp = pd.DataFrame(rows)
    m2 = None if df.empty else df.n_masked.iloc[0] / df.masked_fraction.iloc[0]
    cap = ("Table 2: concept-level evaluation (Acc, P unmasked; n = mean masked patches of "
           f"{m2:.0f}; ΔA, ΔP with 95% bootstrap intervals)" if m2 else "Table 2")
    write_table(df, cfg.paths.tables, name, display=disp, caption=cap)
    return disp


def localisation_table(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    disp = pd.DataFrame({"Method": [METHOD_LABEL.get(m, m) for m in df.method], "n": df.n,
                         "Share of top-n positions on the head": [fmt_ci(a, lo, hi, pct=True) for a, lo, hi in
                                                                  zip(df.head_share, df.lo, df.hi)]})
    write_table(df, cfg.paths.tables, "localisation", display=disp,
                caption="Ground-truth localisation on real toy images (beyond the paper)")
    return disp


def token_figure(cfg: DictConfig, examples: list[dict], vqgm, name: str = "fig2_token_visualisation", per_row: int = 6):
    """Fig. 2 / 5: a row per class, images with a red box on the same concept token."""
    test_images = None
    from .stages import load_split

    test = load_split(cfg, "test", vqgm)
    test_images = np.asarray(test.images)
    p = test_images.shape[1] // vqgm.m
    blank = np.full_like(test_images[0], 255)
    imgs, boxes, labels = [], [], []
    names = class_names(cfg)
    for ex in examples:
        row = [test_images[i] for i in ex["images"]] + [blank] * (per_row - len(ex["images"]))
        bx = [[(c * p, r * p, p, p)] for r, c in ex["positions"]] + [[]] * (per_row - len(ex["images"]))
        imgs += row
        boxes += bx
        labels.append(f"{names[ex['class']]}\ntoken {ex['token']}")
    fig = image_grid(np.stack(imgs), per_row, row_labels=labels, boxes=boxes, scale=1.1,
                     title="Red box: the same high-TSV concept token in each image of the row")
    save_figure(fig, cfg.paths.figures, name)
    return fig


# --------------------------------------------------------------------------------------
# optimisation (notebook 05)
# --------------------------------------------------------------------------------------

def table3(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Table 3 (final state, central region) in the paper's layout, plus the same for the
    reference's best-of-checkpoints protocol and the saliency-guided region when present."""
    from .editing import table3_frame

    write_table(df, cfg.paths.tables, "table3_optimization_all",
                caption="All optimisation results (both protocols and regions), one row per evaluator x setting")
    disp = table3_frame(df, "final", "central")
    write_table(disp, cfg.paths.tables, "table3_optimization",
                caption=(f"Table 3: ΔP_Orig / ΔP_Targ after editing the central region of {int(df.n.iloc[0])} test "
                         f"images toward their paired class ({cfg.optimization.steps} steps, final state; "
                         "95% bootstrap intervals)"))
    return disp


def fig4(cfg: DictConfig, edits: dict, vqgm, batch: dict, arch: str = "CE", region: str = "central",
         per_pair: int = 1, n_steps: int = 6):
    """Fig. 4: editing sequences (token selection): decoded images at several checkpoints, a row
    per source class of each pair (first image of the class)."""
    from .editing import edit_region

    r = edits[(arch, "token", region)]
    S = len(r["steps"])
    pick = np.unique(np.linspace(0, S - 1, n_steps).round().astype(int))
    rows, labels = [], []
    names = class_names(cfg)
    src, tgt = batch["source"].numpy(), batch["target"].numpy()
    for s in dict.fromkeys(src.tolist()):
        i = int(np.flatnonzero(src == s)[0])
        toks = torch.cat([batch["tokens"][i:i + 1], r["checkpoints"][pick, i]])  # original, then checkpoints
        rows.append(vqgm.decode(toks.to(vqgm.device)).cpu())
        labels.append(f"{names[s]} →\n{names[tgt[i]]}")
    images = torch.cat(rows)
    m, p = vqgm.m, vqgm.image_size // vqgm.m
    reg = torch.nonzero(edit_region(cfg, "central", m))
    box = [(int(reg[:, 1].min()) * p, int(reg[:, 0].min()) * p, (int(reg[:, 1].max()) - int(reg[:, 1].min()) + 1) * p,
            (int(reg[:, 0].max()) - int(reg[:, 0].min()) + 1) * p)] if region == "central" else []
    fig = image_grid(images, len(pick) + 1, row_labels=labels, boxes=[box] * len(images), scale=1.0,
                     title=f"Token selection ({arch}): original, then argmax P after steps "
                           + ", ".join(str(int(r['steps'][j])) for j in pick))
    save_figure(fig, cfg.paths.figures, "fig4_editing")
    return fig


def fig6(cfg: DictConfig, vqgm):
    """Fig. 6: the pairing design — each pair's two classes, one generated test image each."""
    from .editing import pairs_of
    from .stages import load_split

    test = load_split(cfg, "test", vqgm)
    names = class_names(cfg)
    pairs = pairs_of(cfg)
    imgs = [np.asarray(test.images)[np.flatnonzero(test.labels == c)[0]] for row in (0, 1) for c in (p[row] for p in pairs)]
    fig = image_grid(np.stack(imgs), len(pairs), row_labels=["source / target", "target / source"], scale=1.2,
                     title="Pairs: each column is a pair; each class is edited toward the other")
    for ax, (a, b) in zip(fig.axes[:len(pairs)], pairs):
        ax.set_title(f"{names[a]}\n↕\n{names[b]}", fontsize=6)
    save_figure(fig, cfg.paths.figures, "fig6_pairs")
    return fig
