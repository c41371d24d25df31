"""Seed replicates (``make seeds``; ``python -m cortex_nb seeds``): the frames every verdict of the
claims ledger rests on, recomputed with other extractor seeds and other noise.

Replicate r (``replicate: r`` in the profile, r = 1 .. ``replicates`` - 1; r = 0 is the headline
run of notebooks 03-05) retrains CE and RE from ``seed + 7919 r`` and redraws the SmoothGrad noise,
the random baselines, the Gumbel noise and the random-token control from it; the VQGM, the dataset
and the evaluators stay those of ``seed`` (:func:`cortex_nb.pipeline.keys.replicate_seed`). So the
spread across replicates is what the extractor's training and the noise add -- the same kind of
perturbation a different CPU's float rounding causes in extractor training, which is how verdicts
flipped between machines.

Each replicate writes only the long frames the claims ledger reads (no figures), under
``results/<profile>/seeds/r<r>/tables/``: fig3_image_level (headline fill, equal area),
table1_extractor_accuracy, table2_concept_level, table2_paired, table3_optimization_all,
table3_paired (central region, final state; token selection, embedding optimisation and the
random-token / step-0 controls), faithfulness_auc (the TSV and the random control, headline fill; no captum
rivals) and faithfulness_sanity (no permuted-label retraining), and on the toy world bias_summary (the scene
extractor retrained from the replicate's seed). Every step is cached like the headline run's, so an interrupted
``make seeds`` resumes.
"""
from __future__ import annotations

import logging

import pandas as pd
from omegaconf import DictConfig

from ..io.tables import write_table
from .run import compose, get_tsv, setup

__all__ = ["replicate_profiles", "run_replicate", "run"]

log = logging.getLogger("cortex_nb")


def replicate_profiles(cfg: DictConfig, overrides: dict | None = None) -> list[DictConfig]:
    """The profiles of replicates 1 .. ``replicates`` - 1 of ``cfg``'s profile (same overrides)."""
    from ..io.config import load_profile

    return [load_profile(cfg.name, **{**(overrides or {}), "replicate": r}) for r in range(1, int(cfg.replicates))]


def run_replicate(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """One replicate's frames (written under its tables directory); returns them by name."""
    from .s02_extractors import extractor_accuracy
    from .s03_image_level import image_level
    from .s04_concept_level import concept_frames
    from .s05_editing import run_edits, score_edits, with_controls

    setup(cfg)
    composed = compose(cfg)
    vqgm, extractors, evaluators = composed.vqgm, composed.extractors, composed.evaluators
    out = {"table1_extractor_accuracy": extractor_accuracy(cfg, composed.fits, vqgm)}
    tsv_test = {arch: get_tsv(cfg, arch, f, vqgm, "test") for arch, f in extractors.items()}
    out["fig3_image_level"] = image_level(cfg, tsv_test, evaluators, vqgm)
    tsv_train = {arch: get_tsv(cfg, arch, f, vqgm, "train") for arch, f in extractors.items()}
    fr = concept_frames(cfg, tsv_train, evaluators, vqgm, fills=False)
    out["table2_concept_level"], out["table2_paired"] = fr["table2"], fr["paired"]
    edits = run_edits(cfg, extractors, vqgm, tsv_test, regions=("central",),
                      methods={"central": ("embedding", "token")})
    scores, paired = score_edits(cfg, with_controls(cfg, edits, vqgm), evaluators, vqgm, paired=True)
    out["table3_optimization_all"], out["table3_paired"] = scores, paired
    out.update(_faithfulness_frames(cfg, extractors, evaluators, vqgm))
    for name, df in out.items():
        write_table(df, cfg.paths.tables, name, caption=f"replicate {int(cfg.replicate)}: {name}")
    if cfg.vqgm.source == "toy":   # notebook 08 is the toy world's; its summary writes itself
        out["bias_summary"] = _bias_frame(cfg, vqgm)
    return out


def _faithfulness_frames(cfg: DictConfig, extractors: dict, evaluators: dict, vqgm) -> dict[str, pd.DataFrame]:
    """Notebook 07's frames the ledger reads: deletion / insertion areas of the TSV and the random control
    (no captum rivals: ``faithfulness.archs`` emptied for the replicate) and the sanity checks (cascading and
    independent randomisation, no permuted-label retraining)."""
    from omegaconf import OmegaConf

    from .s07_faithfulness import attribution_maps, auc_frame, curves, faith_batch
    from .s07_sanity import sanity_checks

    fcfg = OmegaConf.merge(cfg, {"faithfulness": {"archs": [], "permuted": []}})
    batch = faith_batch(fcfg, vqgm)
    maps, _ = attribution_maps(fcfg, extractors, vqgm, batch)
    _, areas = curves(fcfg, maps, evaluators, vqgm, batch)
    return {"faithfulness_auc": auc_frame(fcfg, areas),
            "faithfulness_sanity": sanity_checks(fcfg, extractors, vqgm, batch, {})}


def _bias_frame(cfg: DictConfig, vqgm) -> pd.DataFrame:
    """Notebook 08's summary (the scene extractor retrained from the replicate's seed, the bootstraps redrawn;
    the generated and real images are the headline run's)."""
    from .s08_bias import bias_results, bias_summary

    models, _, results = bias_results(cfg, vqgm)
    return bias_summary(cfg, results, models["accuracy"], name="bias_summary")


def run(cfg: DictConfig, overrides: dict | None = None) -> list[str]:
    """Every replicate r = 1 .. replicates - 1 of the profile, in turn; returns their tables directories."""
    done = []
    for rc in replicate_profiles(cfg, overrides):
        log.info("seed replicate %d of %d (seed %d + 7919 r)", int(rc.replicate), int(rc.replicates) - 1, int(rc.seed))
        run_replicate(rc)
        done.append(str(rc.paths.tables))
    return done
