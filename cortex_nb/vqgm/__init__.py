"""The models CORTEX looks at: the VQGM protocol every model implements (:mod:`.protocol`), taming's VQGAN
transformer through it (:mod:`.taming`, its config / checkpoint / compatibility IO and the KV sampler), the
paper-shape dry run, and the shipped pretrained artifacts."""
from .taming import VQGM, TokenDtypeError, TokenRangeError, load_vqgm

__all__ = ["VQGM", "load_vqgm", "TokenRangeError", "TokenDtypeError"]
