"""Import-time compatibility shim for ``taming-transformers-rom1504`` 0.0.6.

taming's code was written for Lightning 1.x, transformers 4.x and torch 1.x. Three names it
imports *at import time* no longer exist in the stack we pin (Lightning 2.x, torch 2.x,
transformers absent or recent):

1. ``taming.main`` (imported by ``taming.models.vqgan`` and ``taming.models.cond_transformer``)
   does ``from pytorch_lightning.utilities.distributed import rank_zero_only``. That module was
   removed in Lightning 2.0; the function lives in ``pytorch_lightning.utilities.rank_zero``.
2. ``taming.modules.transformer.mingpt`` does ``from transformers import top_k_top_p_filtering``.
   transformers removed that function, and transformers is not otherwise needed.
   ``sample_with_past`` calls it whenever ``top_k`` is given, so the stand-in is a real
   top-k / nucleus filter: :func:`filter_top_k_top_p` (same semantics as the removed function).
3. ``torch._six`` (removed in torch 2.0) is imported by older taming code paths
   (``taming/data/utils.py`` upstream, taming PRs #202/#211). 0.0.6 no longer imports it on the
   paths we use, but the stand-in costs nothing and protects against an older install.

:func:`taming_import_shims` provides the missing names **only while taming is imported** and
then restores ``sys.modules`` and module attributes exactly as they were, so nothing else in the
process sees a fake ``transformers`` or Lightning module. Names that really exist are never
shadowed, except ``transformers.top_k_top_p_filtering`` itself, which is always our filter
during the import, so that the sampler behaves the same whichever transformers is installed.
Once imported, ``mingpt`` keeps its reference to :func:`filter_top_k_top_p`.

Use :func:`import_taming` (idempotent) to get the taming modules cortex_nb needs.
"""

from __future__ import annotations

import collections.abc
import contextlib
import importlib
import importlib.util
import math
import sys
import types
from typing import Iterator

import torch

__all__ = ["filter_top_k_top_p", "taming_import_shims", "import_taming"]

_MISSING = object()


def filter_top_k_top_p(
    logits: torch.Tensor,
    top_k: int | None = 0,
    top_p: float | None = 1.0,
    filter_value: float = -float("inf"),
    min_tokens_to_keep: int = 1,
) -> torch.Tensor:
    """Top-k and/or nucleus (top-p) filtering of next-token logits.

    Stand-in for the removed ``transformers.top_k_top_p_filtering`` with the same semantics:
    top-k first, then top-p on the (renormalised) survivors.

    Args:
        logits: ``(..., V)`` unnormalised scores; not modified (a filtered copy is returned).
        top_k: keep the ``k`` highest logits (all logits tied with the k-th are kept too);
            ``0`` or ``None`` disables top-k.
        top_p: keep the smallest set of highest-probability tokens whose cumulative
            probability is ``>= top_p``; ``1.0`` or ``None`` disables nucleus filtering.
        filter_value: value written into filtered positions (``-inf``: probability 0).
        min_tokens_to_keep: never keep fewer than this many tokens per row.

    Returns:
        ``(..., V)`` logits with filtered positions set to ``filter_value``.
    """
    if min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be >= 1, got {min_tokens_to_keep}")
    vocab = logits.shape[-1]
    out = logits
    if top_k is not None and top_k != 0:
        if int(top_k) != top_k or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer or None, got {top_k!r}")
        k = min(max(int(top_k), min_tokens_to_keep), vocab)
        kth = torch.topk(out, k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, filter_value)
    if top_p is not None and top_p < 1.0:
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1], got {top_p!r}")
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # mass of strictly better-ranked tokens: a token is dropped once the tokens before it
        # already reach top_p, which keeps the minimal prefix with cumulative prob >= top_p.
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop_sorted[..., :min_tokens_to_keep] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, filter_value)
    return out


def _rank_zero_only():
    """Lightning's own ``rank_zero_only`` from wherever the installed version keeps it."""
    for mod in ("pytorch_lightning.utilities.rank_zero", "lightning_utilities.core.rank_zero"):
        try:
            return getattr(importlib.import_module(mod), "rank_zero_only")
        except (ImportError, AttributeError):
            continue

    def rank_zero_only(fn):  # pragma: no cover - only without any Lightning
        return fn

    rank_zero_only.rank = 0
    return rank_zero_only


def _spec_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def taming_import_shims() -> Iterator[None]:
    """Provide the three missing names while taming modules are imported; undo on exit.

    ``sys.modules`` entries and module attributes touched here are restored to exactly their
    previous state (absent stays absent), whether the body succeeds or raises.
    """
    saved_modules: dict[str, object] = {}
    saved_attrs: list[tuple[object, str, object]] = []

    def put_module(name: str, module: types.ModuleType) -> None:
        saved_modules.setdefault(name, sys.modules.get(name, _MISSING))
        sys.modules[name] = module

    def put_attr(obj: object, attr: str, value: object) -> None:
        saved_attrs.append((obj, attr, getattr(obj, attr, _MISSING)))
        setattr(obj, attr, value)

    try:
        # 1. pytorch_lightning.utilities.distributed.rank_zero_only (gone in Lightning 2.x)
        if _spec_exists("pytorch_lightning") and not _spec_exists(
            "pytorch_lightning.utilities.distributed"
        ):
            stub = types.ModuleType("pytorch_lightning.utilities.distributed")
            stub.__doc__ = "cortex_nb stand-in (Lightning 1.x name) for the taming import only"
            stub.rank_zero_only = _rank_zero_only()
            put_module("pytorch_lightning.utilities.distributed", stub)

        # 2. transformers.top_k_top_p_filtering (removed from transformers)
        real = sys.modules.get("transformers")
        if real is not None:  # already imported by someone else: patch the attribute only
            put_attr(real, "top_k_top_p_filtering", filter_top_k_top_p)
        else:  # not imported (maybe not installed): a stand-in module, never the real import
            stub = types.ModuleType("transformers")
            stub.__doc__ = "cortex_nb stand-in for the taming import only"
            stub.top_k_top_p_filtering = filter_top_k_top_p
            put_module("transformers", stub)

        # 3. torch._six (removed in torch 2.0)
        if not _spec_exists("torch._six"):
            six = types.ModuleType("torch._six")
            six.string_classes = (str, bytes)
            six.int_classes = (int,)
            six.inf = math.inf
            six.nan = math.nan
            six.container_abcs = collections.abc
            six.PY3 = six.PY37 = True
            put_module("torch._six", six)

        yield
    finally:
        for obj, attr, old in reversed(saved_attrs):
            if old is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(obj, attr)
            else:
                setattr(obj, attr, old)
        for name, old in saved_modules.items():
            stub = sys.modules.get(name)
            if old is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
            # the import system may have bound a stand-in on its parent package
            parent, _, child = name.rpartition(".")
            holder = sys.modules.get(parent) if parent else None
            if holder is not None and getattr(holder, child, None) is stub:
                if old is _MISSING:
                    delattr(holder, child)
                else:
                    setattr(holder, child, old)


_TAMING_MODULES = (
    "taming.main",
    "taming.models.vqgan",
    "taming.models.cond_transformer",
    "taming.modules.transformer.mingpt",
    "taming.modules.util",
    "taming.modules.losses.vqperceptual",
)


_cache: types.SimpleNamespace | None = None


def import_taming() -> types.SimpleNamespace:
    """Import (once, under :func:`taming_import_shims`) and return the taming modules we use.

    Returns a namespace with ``main``, ``vqgan``, ``cond_transformer``, ``mingpt``, ``util`` and
    ``vqperceptual``. Raises ImportError naming the package if taming itself is missing.
    """
    global _cache
    if _cache is not None and all(
        sys.modules.get(name) is getattr(_cache, name.rsplit(".", 1)[-1])
        for name in _TAMING_MODULES
    ):
        return _cache
    if not _spec_exists("taming"):
        raise ImportError(
            "taming-transformers is not installed: pip install taming-transformers-rom1504==0.0.6 "
            "(the PyPI 'taming-transformers' 0.0.1 lacks Labelator/sample_with_past)"
        )
    # Heavy dependencies first, outside the shims, so that nothing they import can ever see a
    # stand-in module (only taming's own modules are imported with the shims active).
    for dep in ("pytorch_lightning", "torchvision", "omegaconf", "einops"):
        importlib.import_module(dep)
    mods = {}
    with taming_import_shims():
        for name in _TAMING_MODULES:
            mods[name.rsplit(".", 1)[-1]] = importlib.import_module(name)
    if not hasattr(mods["mingpt"], "sample_with_past") or not hasattr(mods["util"], "Labelator"):
        raise ImportError(
            f"the installed taming ({mods['mingpt'].__file__}) lacks sample_with_past/Labelator: "
            "install taming-transformers-rom1504==0.0.6"
        )
    _cache = types.SimpleNamespace(**mods)
    return _cache
