"""cortex-nb: the reproducible, Jupyter-first companion to CORTEX (Concept-Oriented Token
Explanation in Vector-Quantized Generative Models).

Everything is a function of a profile (``load_profile``). The modules, one paper concept each:
``config`` (profiles), ``toyworld`` (the embedded ToyBirds world), ``vqgm`` (the VQGM seen by
CORTEX, §2.1), ``toyvqgm`` (training the toy VQGM), ``store`` (the token store, §4.1.1),
``train`` (the fit loop), ``evaluators`` (the judging classifiers), ``stages`` (what notebooks
and the CLI run), ``reports``/``tables``/``figures`` (outputs).
"""
from .config import PROFILES, ProfileError, load_profile
from . import stages, reports  # noqa: E402  (stages import torch; notebooks use both)

__all__ = ["load_profile", "PROFILES", "ProfileError", "stages", "reports"]
__version__ = "0.1.0"
