"""cortex-nb: the reproducible, Jupyter-first companion to CORTEX (Concept-Oriented Token
Explanation in Vector-Quantized Generative Models).

Everything is a function of a profile (``load_profile``). Modules, one paper concept each:

- ``config`` profiles · ``toyworld`` the embedded ToyBirds world · ``vqgm`` the VQGM seen by
  CORTEX (§2.1) · ``toyvqgm`` training the toy VQGM · ``store`` the token store (§4.1.1)
- ``extractors`` CE / RE (§3.2, A.1) · ``train`` the fit loop (A.1.3) · ``evaluators`` the judging
  classifiers (§4.1)
- ``saliency`` TSV, T*_image, T*_concept (§3.3, eq. 4–6) · ``masking`` patch masking (§4.3) ·
  ``optimize`` Gumbel token selection (§3.4, eq. 7–9, A.2)
- ``stages`` / ``evaluation`` / ``editing`` what notebooks and the CLI run · ``reports``,
  ``tables``, ``figures`` outputs · ``widgets`` the token browser
"""
from .config import PROFILES, ProfileError, load_profile
from . import stages, reports  # noqa: E402  (stages import torch; every notebook uses both)
from .extractors import ExtractorConfig, build_extractor
from .optimize import OptimResult, central_region, optimize_embeddings, select_tokens
from .saliency import TokenSaliency, concept_tokens, frequency_baseline, class_vs_rest_baseline, top_n_positions
from .vqgm import VQGM, load_vqgm
from .deps import record_on_exit as _record_stage_deps

_record_stage_deps()  # only under `make all` (CORTEX_STAGE_DEPS): see cortex_nb.deps

__all__ = [
    "load_profile", "PROFILES", "ProfileError", "stages", "reports",
    "VQGM", "load_vqgm", "ExtractorConfig", "build_extractor",
    "TokenSaliency", "top_n_positions", "concept_tokens", "frequency_baseline", "class_vs_rest_baseline",
    "select_tokens", "optimize_embeddings", "central_region", "OptimResult",
]
__version__ = "0.1.0"
