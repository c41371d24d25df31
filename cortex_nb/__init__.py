"""cortex-nb: the reproducible, Jupyter-first companion to CORTEX (Concept-Oriented Token
Explanation in Vector-Quantized Generative Models).

Everything is a function of a profile (``load_profile``). Folders by concern (README "Layout"):

- ``method/`` the paper's method, profile-free (tensors in, tensors out): token saliency and concept tokens (§3.3),
  masking (§4.3), Gumbel token selection (§3.4), the extractors (§3.2), the judges (§4.1), and the checks beyond
  the paper;
- ``vqgm/`` the models CORTEX looks at: the VQGM protocol (:mod:`cortex_nb.vqgm.protocol`) and taming's model
  through it; ``toy/`` the embedded toy world and its models; ``engine/`` training and inference plumbing;
  ``browser/`` the token browser and atlas; ``io/`` profiles, files, stores, tables, figures, provenance;
- ``pipeline/`` the run composed once and one module per notebook / section that computes its results and writes
  its tables and figures.

The API is ``__all__`` below: notebooks import only these names, ``from cortex_nb import ...``
(the section modules themselves are ``cortex_nb.pipeline.sNN_*``, for the CLI and tests).
Importing the package has no side effects and imports none of its modules: a name is imported on
first use (module ``__getattr__``), so `make all` records for each notebook only the modules it used
(:mod:`cortex_nb.io.deps`, registered by ``setup``, which every section calls), and a process that needs
one corner of the package does not pay for torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the lazy names below, for linters and editors
    from .io.config import PROFILES, ProfileError, load_profile
    from .method.extractors import ExtractorConfig, build_extractor, paper_sizes
    from .method.optimize import OptimResult, central_region, optimize_embeddings, select_tokens
    from .method.saliency import (TokenSaliency, class_vs_rest_baseline, concept_tokens, frequency_baseline,
                                  top_n_positions)
    from .vqgm import VQGM, load_vqgm
    from .vqgm.protocol import VQGMProtocol
    from .pipeline.run import (Run, SectionResult, class_names, compose, generate_dataset, get_evaluators,
                               get_extractors, get_tsv, get_vqgm, load_split, saliency_of, setup)
    from .pipeline.s00_vqgm import (evaluator_scores, evaluator_training_table, prior_samples, quality_table,
                                    reconstruction_figure, samples_figure, toyworld_figure, vqgm_report)
    from .pipeline.s01_dataset import dataset_table, generated_accuracy_table
    from .pipeline.s02_extractors import extractor_accuracy, table1, training_curves_figure
    from .pipeline.s03_image_level import (fig2, fig3, fig3_fills, fig5, fill_check, fill_levels, fills_frame,
                                           image_level, masked_counts, random_baseline, token_examples, token_figure)
    from .pipeline.s04_concept_level import (concept_frames, concept_level, concept_sets, fig_area, fills_table,
                                             localisation, localisation_table, paired_table, table2)
    from .pipeline.s05_editing import (controls_table, edit_batch, fig4, fig6, pairs_of, regions_of, run_edits,
                                       score_edits, table3, table3_frame, with_controls)
    from .pipeline.ledger import ledger_frame, ledger_view
    from .pipeline.s06_browser import BrowserData, browser_data
    from .pipeline.s07_faithfulness import (attribution_maps, auc_display, auc_table, cost_table, curves,
                                            faith_batch, faithfulness_fills_table, fig_auc, fig_curves, fig_sanity,
                                            other_fills, permuted_extractors, rival_localisation,
                                            rival_localisation_table, sanity_checks, sanity_table)
    from .pipeline.s08_bias import (bias_summary, bias_table, bias_worlds, examine, fig_bias, scene_models,
                                    token_check)
    from .browser.app import TokenBrowser
    from .browser.intervention import Intervention, intervention_for

#: public names -> the module (under cortex_nb) that defines them, imported on first use: `import cortex_nb` itself
#: imports nothing (not even torch), so a process that needs one corner of the package -- a stage's notebook runner,
#: the ledger or the manifest -- starts without the whole of it
_LAZY = {
    "io.config": ("PROFILES", "ProfileError", "load_profile"),
    "method.extractors": ("ExtractorConfig", "build_extractor", "paper_sizes"),
    "method.optimize": ("OptimResult", "central_region", "optimize_embeddings", "select_tokens"),
    "method.saliency": ("TokenSaliency", "concept_tokens", "frequency_baseline", "class_vs_rest_baseline",
                        "top_n_positions"),
    "vqgm": ("VQGM", "load_vqgm"),
    "vqgm.protocol": ("VQGMProtocol",),
    "pipeline.run": ("setup", "compose", "Run", "SectionResult", "get_vqgm", "get_evaluators", "generate_dataset",
                     "load_split", "get_extractors", "saliency_of", "get_tsv", "class_names"),
    "pipeline.s00_vqgm": ("toyworld_figure", "vqgm_report", "quality_table", "reconstruction_figure",
                          "evaluator_training_table", "prior_samples", "samples_figure", "evaluator_scores"),
    "pipeline.s01_dataset": ("dataset_table", "generated_accuracy_table"),
    "pipeline.s02_extractors": ("extractor_accuracy", "table1", "training_curves_figure"),
    "pipeline.s03_image_level": ("image_level", "random_baseline", "fig3", "fills_frame", "fig3_fills", "fill_check",
                                 "fill_levels",
                                 "masked_counts", "token_examples", "token_figure", "fig2", "fig5"),
    "pipeline.s04_concept_level": ("concept_sets", "concept_level", "concept_frames", "table2", "paired_table",
                                   "fig_area", "fills_table", "localisation", "localisation_table"),
    "pipeline.s05_editing": ("pairs_of", "regions_of", "edit_batch", "run_edits", "with_controls", "score_edits",
                             "table3", "controls_table", "table3_frame", "fig4", "fig6"),
    "pipeline.ledger": ("ledger_frame", "ledger_view"),
    "pipeline.s06_browser": ("BrowserData", "browser_data"),
    "pipeline.s07_faithfulness": ("faith_batch", "attribution_maps", "curves", "auc_table", "auc_display",
                                  "cost_table", "fig_curves", "fig_auc", "other_fills", "faithfulness_fills_table",
                                  "rival_localisation", "rival_localisation_table", "permuted_extractors",
                                  "sanity_checks", "sanity_table", "fig_sanity"),
    "pipeline.s08_bias": ("scene_models", "bias_worlds", "examine", "token_check", "bias_summary", "bias_table",
                          "fig_bias"),
    "browser.app": ("TokenBrowser",),
    "browser.intervention": ("Intervention", "intervention_for"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    # profiles
    "load_profile", "PROFILES", "ProfileError",
    # paper layer
    "VQGM", "VQGMProtocol", "load_vqgm", "ExtractorConfig", "build_extractor", "paper_sizes",
    "TokenSaliency", "top_n_positions", "concept_tokens", "frequency_baseline", "class_vs_rest_baseline",
    "select_tokens", "optimize_embeddings", "central_region", "OptimResult",
    # the run (pipeline.run)
    "setup", "compose", "Run", "SectionResult", "get_vqgm", "get_evaluators", "generate_dataset", "load_split",
    "get_extractors", "saliency_of", "get_tsv", "class_names",
    # 00 the VQGM
    "toyworld_figure", "vqgm_report", "quality_table", "reconstruction_figure", "evaluator_training_table",
    "prior_samples", "samples_figure", "evaluator_scores",
    # 01 the dataset, 02 Table 1
    "dataset_table", "generated_accuracy_table", "extractor_accuracy", "table1", "training_curves_figure",
    # 03 Fig. 3, 2, 5; 04 Table 2
    "image_level", "random_baseline", "fig3", "fills_frame", "fig3_fills", "fill_check", "fill_levels", "masked_counts",
    "token_examples", "token_figure", "fig2", "fig5",
    "concept_sets", "concept_level", "concept_frames", "table2", "paired_table", "fig_area", "fills_table",
    "localisation", "localisation_table",
    # 05 Table 3, Fig. 4, 6, the claims ledger; 06 the token browser
    "pairs_of", "regions_of", "edit_batch", "run_edits", "with_controls", "score_edits", "table3", "controls_table",
    "table3_frame", "fig4", "fig6", "ledger_frame", "ledger_view",
    "BrowserData", "browser_data", "TokenBrowser", "Intervention", "intervention_for",
    # 07 faithfulness beyond the paper
    "faith_batch", "attribution_maps", "curves", "auc_table", "auc_display", "cost_table", "fig_curves", "fig_auc",
    "other_fills", "faithfulness_fills_table", "rival_localisation", "rival_localisation_table",
    "permuted_extractors", "sanity_checks", "sanity_table", "fig_sanity",
    # 08 bias detection (toy world)
    "scene_models", "bias_worlds", "examine", "token_check", "bias_summary", "bias_table", "fig_bias",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import a public name on first use (then it is a plain module attribute)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cortex_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
