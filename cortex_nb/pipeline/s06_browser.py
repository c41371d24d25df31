"""Section 06 (notebook 06_token_browser): the data behind the token browser — T*_concept per class
(CORTEX §3.3, eq. 6), ranked for each source, over the train split, with the test split's
generated images as the gallery. The app itself is :class:`cortex_nb.browser.app.TokenBrowser`.

- :func:`browser_data` builds :class:`~cortex_nb.browser.model.BrowserData` (everything the browser shows, as plain
  arrays) from the pipeline (train TSVs cached on disk); :func:`search_index` the search panel's ground truth.
- :class:`~cortex_nb.browser.model.BrowserData`, :class:`~cortex_nb.browser.model.Ranking` and
  :func:`~cortex_nb.browser.model.rank_concepts` live in :mod:`cortex_nb.browser.model` (the app and this
  section both read them) and are re-exported here.

The section writes no table or figure (the notebook shows a static snapshot of the app), so it
has no CLI command; :func:`run` builds what the notebook shows. This module imports the pipeline
lazily, so ``cortex_nb.browser.app`` imports without torch models, stores or caches.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..browser.model import BASELINES, BrowserData, Ranking, rank_concepts  # noqa: F401  (public here too)

__all__ = ["BASELINES", "BrowserData", "browser_data", "search_index", "Ranking", "rank_concepts", "run"]


def browser_data(cfg, vqgm, extractors: dict) -> BrowserData:
    """Build :class:`BrowserData` from the pipeline: train tokens and each extractor's train TSV
    (:func:`cortex_nb.pipeline.run.get_tsv`, cached on disk), the test split's generated images as
    the gallery, and ``token_image`` decoding a grid filled with one id (``lru_cache``: each id
    decoded once).

    ``extractors`` maps arch → model (or anything with a ``.model``, as
    :func:`~cortex_nb.pipeline.run.get_extractors` returns). Imports the pipeline when called.
    """
    from ..io.figures import to_uint8
    from . import run

    train = run.load_split(cfg, "train", vqgm)
    test = run.load_split(cfg, "test", vqgm)
    if test.images is None:
        raise ValueError(f"the test split at {test.path} stores no images: regenerate it (generate_dataset)")
    tsv = {}
    for arch, f in extractors.items():
        model = f if isinstance(f, torch.nn.Module) else getattr(f, "model", f)
        tsv[arch] = np.asarray(run.get_tsv(cfg, arch, model, vqgm, "train"))
    m, C = int(vqgm.m), int(cfg.world.n_classes)

    @lru_cache(maxsize=None)
    def token_image(t: int) -> np.ndarray:
        grid = torch.full((1, m, m), int(t), dtype=torch.long)
        return to_uint8(vqgm.decode(grid))[0]                           # (H, W, 3) uint8

    return BrowserData(class_names=list(run.class_names(cfg))[:C], K=int(vqgm.K), m=m,
                       train_tokens=np.asarray(train.tokens), train_labels=np.asarray(train.labels),
                       train_tsv=tsv, gallery_tokens=np.asarray(test.tokens),
                       gallery_labels=np.asarray(test.labels), gallery_images=np.asarray(test.images),
                       token_image=token_image,
                       search=search_index(cfg, vqgm) if cfg.vqgm.source == "toy" else None)


def search_index(cfg, vqgm, n_images: int | None = None) -> dict:
    """The search panel's ground truth: ``n_images`` (default ``saliency.n_localisation``) real toy
    images (the 'report' stream) encoded to tokens, with the part of every position
    (:func:`cortex_nb.method.token_search.position_parts`), the species and the scene of every image."""
    from ..toy import world as toyworld
    from ..method.token_search import position_parts
    from .run import real_toy_images

    real = real_toy_images(cfg, int(n_images or cfg.saliency.n_localisation), "report")
    tokens = vqgm.encode(toyworld.to_tensor(real.images).to(vqgm.device)).cpu().numpy()
    return {"tokens": tokens, "parts": position_parts(real.masks, int(vqgm.m)),
            "labels": np.asarray(real.labels), "scenes": np.asarray(real.scenes)}


def run(cfg, composed=None):
    """What notebook 06 shows: the browser on CE (``values["browser"]``), a static snapshot of its
    views (PNG bytes) and its state. ``composed``: a :func:`~cortex_nb.pipeline.run.compose`
    result holding the fits (built here when not given)."""
    from ..browser.app import TokenBrowser
    from . import run as pipeline

    pipeline.setup(cfg)
    composed = composed or pipeline.compose(cfg, evaluators=False)
    browser = TokenBrowser(browser_data(cfg, composed.vqgm, composed.fits), source="CE")
    return pipeline.SectionResult("browser", values={"browser": browser, "snapshot": browser.snapshot(),
                                                     "state": browser.state()})
