"""The VQGM protocol: exactly what CORTEX uses of a vector-quantized generative model.

CORTEX (PAPER.md §2.1) sees a VQGM through a codebook ``C`` in R^{K x d}, a tokenizer that maps an H x H image to an
m x m grid of codebook ids and back, and a class-conditional prior over token grids. :class:`VQGMProtocol` writes that
down; the method layer and the pipeline use nothing else of a model. :class:`cortex_nb.vqgm.VQGM` (taming's VQGAN +
autoregressive transformer) implements it, and so can any model: README "Your own model" shows one in a few dozen
lines, and ``vqgm.family: python`` with ``vqgm.factory: "module:function"`` in a profile runs the whole pipeline on it.

Vocabulary (shared by every implementation):
    ``tokens``   int64 tensor (B, m, m) of codebook ids in [0, K)
    ``E``        float tensor (B, d, m, m): the token-based embedding (codebook rows on the grid)
    ``images``   float tensor (B, 3, H, H) in [-1, 1], H = ``image_size``

Who calls what (the pipeline's sections are ``cortex_nb/pipeline/s0N_*``):
    K, d, m, image_size  token stores' meta and cache keys (keys.store_meta), regions and masks (s03-s05), the
                         browser and atlas (s06, atlas), search and intervention
    n_classes            run.check_n_classes (the profile's world.n_classes must match)
    codebook             the extractors' input embedding (run.embed_fn: one lookup per token), Gumbel token
                         selection and the embedding baseline (s05), token search, the bias section
    device               where tokens and embeddings are put before decoding or encoding
    fingerprint()        stamped in every token store (a store made with another codebook is refused)
    identity()           every cache key below the model (keys.vqgm_key: config and weights)
    encode()             real images -> tokens: the quality report (s00), the bias section, the atlas' heads,
                         token search, localisation (s04, s07)
    embed()              tokens -> E (users and tests; the pipeline embeds with ``codebook`` directly)
    decode()             tokens -> images: every masked / edited / sampled image the evaluators judge (s00-s08)
    decode_embeddings()  E -> images without quantising (the embedding-optimisation baseline's decoder)
    quantize()           E -> tokens, nearest code (the baseline's "quantise after")
    sample()             class-conditional tokens: the generated dataset (run.generate_dataset), s00's samples,
                         the bias section's sampled images
    with_prior()         the same tokenizer with another prior: the bias section's retrained-prior control
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import UserError

__all__ = ["VQGMProtocol", "SHAPE_ATTRIBUTES", "check_vqgm", "TokenRangeError", "TokenDtypeError", "as_index_tensor"]

#: the integer sizes every implementation exposes as attributes
SHAPE_ATTRIBUTES = ("K", "d", "m", "image_size", "n_classes")


@runtime_checkable
class VQGMProtocol(Protocol):
    """A class-conditional VQ generative model as CORTEX sees it (see the module docstring for who calls what)."""

    K: int            #: codebook size
    d: int            #: embedding dimension of a code
    m: int            #: token grid side: an image is m x m tokens
    image_size: int   #: image side H in pixels
    n_classes: int    #: class labels the prior is conditioned on

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live."""

    @property
    def codebook(self) -> torch.Tensor:
        """(K, d) float, detached: row t is token t's embedding."""

    def to(self, device: str | torch.device) -> "VQGMProtocol":
        """Move the model to ``device`` and return it."""

    def fingerprint(self) -> str:
        """A short digest of the codebook: token stores are stamped with it."""

    def identity(self) -> dict:
        """Plain data naming the whole model (configuration and a digest of all weights): every cache computed with
        the model is keyed on it, so two models that differ anywhere never share a cache."""

    def encode(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """Images (B, 3, H, H) in [-1, 1] -> tokens (B, m, m)."""

    def embed(self, tokens: Any) -> torch.Tensor:
        """Tokens (B, m, m) -> E (B, d, m, m): the codebook rows of the tokens on the grid."""

    def decode_embeddings(self, E: Any, batch_size: int = 64, clamp: bool = True) -> torch.Tensor:
        """Any E (B, d, h, w) -> images, without quantising; differentiable in ``E`` under the caller's grad mode."""

    def decode(self, tokens: Any, batch_size: int = 64) -> torch.Tensor:
        """Tokens (B, m, m) -> images (B, 3, H, H) in [-1, 1]."""

    def quantize(self, E: Any) -> torch.Tensor:
        """E (B, d, h, w) -> tokens (B, h, w): the code each position quantises to."""

    def sample(self, labels: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Class-conditional tokens (B, m, m) for ``labels`` (B,): the filtering knobs as taming names them
        (a family may take more keyword knobs of its own), deterministic for a given ``seed``."""

    def with_prior(self, prior: torch.nn.Module) -> "VQGMProtocol":
        """The same tokenizer and decoder with another prior (the model itself is left as it was)."""


def check_vqgm(model: Any, where: str) -> Any:
    """``model`` if it implements :class:`VQGMProtocol` with positive integer sizes and a (K, d) codebook; else a
    UserError naming ``where`` (the profile key or factory that made it) and what is missing."""
    missing = [name for name in (*SHAPE_ATTRIBUTES, "device", "codebook", "to", "fingerprint", "identity", "encode",
                                 "embed", "decode_embeddings", "decode", "quantize", "sample", "with_prior")
               if not hasattr(model, name)]
    if missing:
        raise UserError(f"{where} returned a {type(model).__name__}, which lacks {', '.join(missing)} of the VQGM "
                        f"protocol (cortex_nb.vqgm.protocol.VQGMProtocol)")
    bad = [f"{n}={getattr(model, n)!r}" for n in SHAPE_ATTRIBUTES
           if isinstance(getattr(model, n), bool) or not isinstance(getattr(model, n), int) or getattr(model, n) < 1]
    if bad:
        raise UserError(f"{where}: the VQGM's sizes must be integers >= 1, got {', '.join(bad)}")
    shape = tuple(getattr(model.codebook, "shape", ()))
    if shape != (model.K, model.d):
        raise UserError(f"{where}: the codebook has shape {shape}, not (K, d) = ({model.K}, {model.d})")
    return model


# ---------------------------------------------------------------------- token ids, as every model checks them
class TokenRangeError(UserError, ValueError):
    """Token ids outside [0, K), or a token grid that is not (B, m, m)."""


class TokenDtypeError(UserError, TypeError):
    """Token ids (or class labels) given as floats, complex numbers or bools."""


def as_index_tensor(x: Any, what: str) -> torch.Tensor:
    """Any integer array / tensor (uint16 numpy, int16, int32 ...) -> int64 tensor; floats, complex numbers and
    bools are refused (:class:`TokenDtypeError`): ids are never rounded."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TokenDtypeError(f"{what} must be an integer tensor, got dtype {x.dtype}",
                                  fix=f"pass {what} as integer ids (e.g. .long())")
        return x.to(torch.int64)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TokenDtypeError(f"{what} must be integers, got dtype {arr.dtype}",
                              fix=f"pass {what} as integer ids (e.g. .astype(np.int64))")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
