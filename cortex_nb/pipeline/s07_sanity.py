"""Section 07's sanity checks (Adebayo et al. 2018; issue #14): does CORTEX's token saliency change when the
information extractor is destroyed? Split from :mod:`cortex_nb.pipeline.s07_faithfulness` (the deletion /
insertion curves and rival attributions), which runs both and re-exports these names.

- :func:`permuted_extractors` -- extractors retrained on permuted labels (``faithfulness.permuted``);
- :func:`sanity_checks` -- cascading and independent randomisation of CE and RE (one step per block,
  :func:`cortex_nb.method.sanity.randomisable_blocks`) and the permuted-label extractors, scored by Spearman's ρ of the
  TSV maps and the Jaccard overlap of T*_concept with the trained extractor's; the frequency baseline, which
  reads no model, is the negative control that must come out unchanged;
- :func:`sanity_table`, :func:`fig_sanity` -- the table in brief and the degradation plot.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..io.figures import save_figure
from ..method.saliency import concept_tokens, frequency_baseline, top_n_positions
from ..method.sanity import cascading_randomisation, independent_randomisation, jaccard, rank_correlation
from ..io.tables import mean_ci, write_table
from .keys import replicate_seed
from .run import embed_fn, get_extractors, saliency_of
from .s04_concept_level import concept_rank_scores

__all__ = ["permuted_extractors", "sanity_checks", "sanity_table", "fig_sanity"]


def permuted_extractors(cfg: DictConfig, vqgm) -> dict:
    """{arch: model} for the extractors of ``faithfulness.permuted``, trained (once, cached) on permuted
    labels by :func:`cortex_nb.pipeline.run.get_extractors`; their best validation top-1 is chance."""
    archs = list(cfg.faithfulness.permuted)
    return {a: r.model for a, r in get_extractors(cfg, vqgm, archs=archs, permuted=True).items()} if archs else {}


def sanity_checks(cfg: DictConfig, extractors: dict, vqgm, batch: dict, permuted: dict | None = None) -> pd.DataFrame:
    """For each extractor: the TSV maps of the batch and T*_concept computed from them (eq. 6 on the
    batch: top-n positions per image, k ids per class, n and k as in section 04) under every step of
    the cascading and independent randomisation (one block at a time) and, for ``permuted``
    ({arch: model trained on permuted labels}), under that model; each compared with the trained
    extractor's by Spearman's rank correlation per image and Jaccard overlap per class. The TSV noise
    is drawn from the same seed every time, so only the model differs. The frequency baseline goes
    through the same loop as the negative control (it reads no model). One row per (extractor, check,
    step, method); step 0 is the trained extractor. For scale: 'two random initialisations' (two fully
    randomised copies against each other: what architecture and input alone make maps share), 'CE vs
    RE' (two trained extractors) and 'random map (floor)' (uniform noise against the first extractor)."""
    from ..method import masking

    dev = cfg.device
    tokens, labels = batch["tokens"], batch["labels"]
    E = embed_fn(vqgm.codebook.to(dev))(tokens.to(dev))
    t = labels.to(dev)
    C, K, m = int(cfg.world.n_classes), int(vqgm.K), int(vqgm.m)
    n = masking.scaled_n(int(cfg.saliency.n_concept), m)
    k = masking.scaled_n(int(cfg.saliency.k_concept), m)
    seed = int(cfg.seed)

    def tsv(model) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device=dev).manual_seed(replicate_seed(cfg) + 29)
        s = saliency_of(cfg, model).attribute(E, t, generator=gen).detach().cpu().double()
        return s, concept_tokens(tokens, labels, top_n_positions(s, n), C, K, k)

    def frequency(model) -> tuple[torch.Tensor, torch.Tensor]:            # the control: no model read
        sets = frequency_baseline(tokens, labels, C, K, k)
        return concept_rank_scores(sets, labels, tokens, K).double(), sets

    methods = {"TSV": tsv, "frequency (control)": frequency}
    rows = []

    def row(arch, check, step, layer, method, ref, new, **extra):
        rho = rank_correlation(ref[0], new[0]).numpy()
        rho = rho[np.isfinite(rho)]
        ci = mean_ci(rho, seed=seed) if len(rho) else {"mean": np.nan, "lo": np.nan, "hi": np.nan}
        jac = mean_ci(jaccard(ref[1], new[1]).numpy(), seed=seed)
        rows.append({"extractor": arch, "check": check, "step": step, "layer": layer, "method": method,
                     "spearman": ci["mean"], "spearman_lo": ci["lo"], "spearman_hi": ci["hi"], "n_images": len(rho),
                     "jaccard": jac["mean"], "jaccard_lo": jac["lo"], "jaccard_hi": jac["hi"], **extra})

    trained = {arch: {name: fn(f) for name, fn in methods.items()} for arch, f in extractors.items()}
    for arch, f in extractors.items():
        ref = trained[arch]
        for name in methods:
            row(arch, "trained", 0, "none", name, ref[name], ref[name])
        for check, steps in (("cascading", cascading_randomisation(f, seed=seed, blocks=True)),
                             ("independent", independent_randomisation(f, seed=seed, blocks=True))):
            for i, (layer, g) in enumerate(steps, start=1):
                g.eval()
                for name, fn in methods.items():
                    row(arch, check, i, layer, name, ref[name], fn(g))
        if permuted and arch in permuted:
            for name, fn in methods.items():
                row(arch, "permuted labels", 1, "all (retrained)", name, ref[name], fn(permuted[arch]))
        # for scale: the fully randomised extractor against a second, independent randomisation -- what
        # the architecture and the input alone make two maps share
        *_, (_, r1) = cascading_randomisation(f, seed=seed, blocks=True)
        *_, (_, r2) = cascading_randomisation(f, seed=seed + 1000, blocks=True)
        row(arch, "two random initialisations", 1, "all (two draws)", "TSV", tsv(r1.eval()), tsv(r2.eval()))
    archs = list(extractors)
    if len(archs) >= 2:
        a, b = archs[:2]
        row(f"{a} vs {b}", "two trained extractors", 0, "none", "TSV", trained[a]["TSV"], trained[b]["TSV"])
    gen = torch.Generator().manual_seed(replicate_seed(cfg) + 31)
    noise = torch.rand(len(labels), m, m, generator=gen, dtype=torch.float64)
    rand = (noise, concept_tokens(tokens, labels, top_n_positions(noise, n), C, K, k))
    row(archs[0], "random map (floor)", 0, "none", "TSV", trained[archs[0]]["TSV"], rand)
    return pd.DataFrame(rows)


def sanity_table(cfg: DictConfig, df: pd.DataFrame, name: str = "faithfulness_sanity") -> pd.DataFrame:
    """The checks in brief: per extractor and method, the output block alone, the whole extractor
    randomised (cascading, last step), the independent steps' range, the permuted labels, two random
    initialisations against each other; then the reference rows ('CE vs RE' trained, a random map)
    in the column 'reference'; every step in the CSV."""
    out = []
    per_model = df[~df.check.isin(["two trained extractors", "random map (floor)"])]
    for (arch, method), g in per_model.groupby(["extractor", "method"], sort=False):
        def cell(r):
            return f"{r.spearman:.2f} / {r.jaccard:.2f}"
        casc, ind = g[g.check == "cascading"], g[g.check == "independent"]
        perm = g[g.check == "permuted labels"]
        two = g[g.check == "two random initialisations"]
        out.append({"extractor": arch, "method": method,
                    "output block randomised": cell(casc.iloc[0]) if len(casc) else "",
                    "all blocks (cascading)": cell(casc.iloc[-1]) if len(casc) else "",
                    "one block at a time (min ρ .. max ρ)": f"{ind.spearman.min():.2f} .. {ind.spearman.max():.2f}"
                    if len(ind) else "",
                    "permuted labels": cell(perm.iloc[0]) if len(perm) else "",
                    "two random initialisations": cell(two.iloc[0]) if len(two) else ""})
    for check in ("two trained extractors", "random map (floor)"):
        for r in df[df.check == check].itertuples():
            out.append({"extractor": r.extractor if check != "random map (floor)" else f"random vs {r.extractor}",
                        "method": f"{r.method} ({check})", "reference": f"{r.spearman:.2f} / {r.jaccard:.2f}"})
    disp = pd.DataFrame(out).fillna("")
    write_table(df, cfg.paths.tables, name, display=disp,
                caption="Sanity checks (Adebayo et al. 2018): Spearman ρ of the TSV maps / Jaccard of T*_concept "
                        "against the trained extractor's, mean over images / classes (1 = unchanged). A "
                        "faithful method falls towards 0; the frequency control must stay at 1")
    return disp


def fig_sanity(cfg: DictConfig, df: pd.DataFrame, name: str = "faithfulness_sanity"):
    """The degradation plot: Spearman ρ and Jaccard against the number of blocks randomised from the
    output (cascading), the independent steps, and the permuted-label extractor as a dotted line."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    colours = dict(zip(dict.fromkeys(df.extractor), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (arch, method), g in df[df.extractor.isin([a for a in colours if " vs " not in a])].groupby(
            ["extractor", "method"], sort=False):
        ls = "-" if method == "TSV" else ":"
        lab = f"{arch} {method}"
        base = g[g.check == "trained"]
        for ax, col in zip(axes[:2], ("spearman", "jaccard")):
            c = pd.concat([base, g[g.check == "cascading"]])
            ax.plot(c.step, c[col], ls, marker=".", color=colours[arch], label=lab)
            ax.fill_between(c.step, c[f"{col}_lo"], c[f"{col}_hi"], color=colours[arch], alpha=0.15, lw=0)
            p = g[g.check == "permuted labels"]
            if len(p) and method == "TSV":
                ax.axhline(float(p[col].iloc[0]), color=colours[arch], ls="--", lw=0.8,
                           label=f"{arch} permuted labels")
        ind = g[g.check == "independent"]
        axes[2].plot(ind.step, ind.spearman, ls, marker=".", color=colours[arch], label=lab)
    for r in df[df.check == "random map (floor)"].itertuples():
        for ax, col in zip(axes[:2], ("spearman", "jaccard")):
            ax.axhline(getattr(r, col), color="grey", ls=":", lw=1, label="random map")
    axes[0].set(title="cascading randomisation", xlabel="blocks randomised (from the output)",
                ylabel="Spearman ρ with the trained TSV")
    axes[1].set(title="cascading randomisation", xlabel="blocks randomised (from the output)",
                ylabel="Jaccard with the trained T*_concept")
    axes[2].set(title="independent randomisation", xlabel="block randomised alone (1 = output)",
                ylabel="Spearman ρ with the trained TSV")
    for ax in axes:
        ax.set_ylim(-0.1, 1.05)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, cfg.paths.figures, name)
    return fig
