"""The token atlas from a run (issue #15; ``make atlas``, ``python -m cortex_nb atlas``): what
:func:`cortex_nb.browser.atlas.write_atlas` shows, computed from the cached pipeline.

- the concept tokens of every class for one source (section 06's ranking: eq. 6 over the train split's TSV);
- per concept token: its decoded image, up to ``per_token`` gallery images holding it (its best-ranked class
  first) with its patches boxed, its usage by class, its TSV values against all positions', the change of
  every evaluator's P(true) when its patches are masked in the gallery images of its best-ranked class that
  hold it (the profile's headline fill; all (token, image) pairs in one batched call), and, in the toy world,
  its precision and recall on the head over real toy images (:mod:`cortex_nb.method.token_search`).

The site goes to ``results/<profile>/atlas/`` (not committed; regenerate it with ``make atlas``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from ..browser.atlas import AtlasData, AtlasToken, write_atlas
from ..method.masking import scaled_n
from ..method.saliency import token_class_usage
from .run import Run, class_names, compose, display_name, setup
from .scoring import fill_of, score_masked
from .s06_browser import browser_data, rank_concepts

__all__ = ["atlas_data", "build_atlas", "head_scores"]

log = logging.getLogger("cortex_nb")


def head_scores(cfg: DictConfig, vqgm, n_images: int) -> dict[int, tuple[float, float, int]]:
    """{token: (precision, recall, count)} on the head over ``n_images`` real toy images (the 'report'
    stream) encoded to tokens, each position's part the majority part of its patch."""
    from ..toy import world as toyworld
    from ..method.token_search import position_parts, search_tokens
    from .run import real_toy_images

    real = real_toy_images(cfg, int(n_images), "report")
    tokens = vqgm.encode(toyworld.to_tensor(real.images).to(vqgm.device)).cpu().numpy()
    parts = position_parts(real.masks, int(vqgm.m))
    df = search_tokens(tokens, parts, int(vqgm.K), "head")
    return {int(r.token): (float(r.precision), float(r.recall), int(r.count)) for r in df.itertuples()}


def atlas_data(cfg: DictConfig, composed: Run, source: str = "CE", per_token: int = 6,
               n_tsv: int = 4000) -> AtlasData:
    """Everything the atlas shows for ``source``'s concept tokens (see the module docstring)."""
    vqgm, evaluators = composed.vqgm, composed.evaluators
    bd = browser_data(cfg, vqgm, composed.fits)
    C, K, m = len(bd.class_names), int(bd.K), int(bd.m)
    n, k = scaled_n(int(cfg.saliency.n_concept), m), scaled_n(int(cfg.saliency.k_concept), m)
    tokens = torch.from_numpy(np.asarray(bd.train_tokens).astype(np.int64))
    labels = torch.from_numpy(np.asarray(bd.train_labels).astype(np.int64))
    if source not in bd.train_tsv:
        raise ValueError(f"source must be one of {sorted(bd.train_tsv)}, got {source!r}")
    tsv = np.asarray(bd.train_tsv[source], dtype=np.float32)
    ranking = rank_concepts(tokens, labels, C, K, k, source, tsv=tsv, n=n)
    usage = token_class_usage(tokens, labels, C, K).numpy()                        # (C, K)
    ids = ranking.ids

    ranks: dict[int, dict[int, int]] = {}
    for c in range(C):
        for r, t in enumerate(ids[c], start=1):
            if t >= 0:
                ranks.setdefault(int(t), {})[c] = r
    best_class = {t: min(rs, key=lambda c: (rs[c], c)) for t, rs in ranks.items()}

    gal_tokens = np.asarray(bd.gallery_tokens).reshape(len(bd.gallery_labels), m, m)
    gal_labels = np.asarray(bd.gallery_labels)
    gal_images = np.asarray(bd.gallery_images)
    flat_tokens = np.asarray(bd.train_tokens).reshape(-1)
    flat_tsv = tsv.reshape(-1)
    rng = np.random.default_rng(int(cfg.seed))
    tsv_all = flat_tsv[rng.choice(flat_tsv.size, size=min(n_tsv, flat_tsv.size), replace=False)]

    # ΔP: every (token, class it is a concept token of, gallery image of that class holding it), masked in
    # one batched call
    holds = {t: (gal_tokens == t).any((1, 2)) for t in ranks}
    triples = [(t, c, i) for t, rs in ranks.items() for c in rs for i in np.flatnonzero((gal_labels == c) & holds[t])]
    names = list(evaluators)
    delta: dict[tuple[int, int], dict[str, list]] = {(t, c): {e: [] for e in names} for t, rs in ranks.items()
                                                      for c in rs}
    if triples and names:
        idx = np.array([i for _, _, i in triples])
        masks = torch.from_numpy(np.stack([gal_tokens[i] == t for t, _, i in triples]))
        fill = fill_of(cfg)
        base = score_masked(cfg, evaluators, gal_images[idx], gal_labels[idx], torch.zeros_like(masks), fill=fill,
                            tokens=torch.from_numpy(gal_tokens[idx]), vqgm=vqgm)
        shown = score_masked(cfg, evaluators, gal_images[idx], gal_labels[idx], masks, fill=fill,
                             tokens=torch.from_numpy(gal_tokens[idx]), vqgm=vqgm)
        for e in names:
            d = shown[e]["p_true"] - base[e]["p_true"]
            for (t, c, _), v in zip(triples, d):
                delta[(t, c)][e].append(float(v))

    heads = head_scores(cfg, vqgm, int(cfg.saliency.n_localisation)) if cfg.vqgm.source == "toy" else {}
    pages = {}
    for t, rs in ranks.items():
        c0 = best_class[t]
        hold = np.flatnonzero(holds[t])
        order = sorted(hold, key=lambda i: (gal_labels[i] != c0, i))[:per_token]   # its best class first
        at = flat_tokens == t
        sample = flat_tsv[at]
        if sample.size > n_tsv:
            sample = sample[rng.choice(sample.size, size=n_tsv, replace=False)]
        h = heads.get(t)
        pages[t] = AtlasToken(
            token=t, image=np.asarray(bd.token_image(t)), ranks=rs, usage=usage[:, t],
            examples=[(gal_images[i], gal_tokens[i] == t, int(gal_labels[i])) for i in order],
            tsv_token=sample, tsv_all=tsv_all,
            delta_p={c: {display_name(e): (float(np.mean(v)) if v else float("nan"), len(v))
                         for e, v in delta[(t, c)].items()} for c in rs},
            # never seen on real images: no precision, recall 0
            precision=h[0] if h else None, recall=h[1] if h else (0.0 if heads else None),
            count_real=h[2] if h else (0 if heads else None))
    notes = [f"profile {cfg.name}; source {source}; n = {n} top TSV positions per training image, k = {k} tokens "
             f"per class (the paper's 20 and 100 scaled by m²/256); ΔP under the {fill_of(cfg)} fill",
             f"{len(pages)} concept tokens over {C} classes; gallery: the generated test split"]
    return AtlasData(title=f"Token atlas · {cfg.name} · {source}", source=source,
                     class_names=list(class_names(cfg))[:C], concepts=ids, counts=ranking.freq, tokens=pages,
                     evaluators=[display_name(e) for e in names], notes=notes, ledger=_ledger_rows(cfg))


def _ledger_rows(cfg: DictConfig) -> list[dict]:
    """The recorded claims ledger (``tables/ledger.csv``, written by `make all`) as rows; [] before it exists."""
    from ..io.tables import read_table

    df = read_table(cfg.paths.tables, "ledger")
    if df is None:
        return []
    df["notebook"] = df.notebook.astype(str).str.zfill(2)   # "02", which the CSV reader made 2
    return df.fillna("").to_dict("records")


def build_atlas(cfg: DictConfig, composed: Run | None = None, out: str | Path | None = None,
                source: str = "CE") -> Path:
    """Compute and write the atlas (default ``results/<profile>/atlas``); returns index.html's path."""
    setup(cfg)
    composed = composed or compose(cfg)
    out = Path(out) if out is not None else Path(cfg.paths.results) / "atlas"
    index = write_atlas(atlas_data(cfg, composed, source=source), out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("token atlas: %s (%d files, %.1f MB)", index, sum(1 for _ in out.rglob("*")), size / 1e6)
    return index
