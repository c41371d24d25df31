"""The one builder of taming's class-conditional ImageNet ("cin") structure (the paper-shape dry run uses it too).

Structure of taming's class-conditional ImageNet config (``configs/*-project.yaml`` shipped
with the ``cin_transformer`` checkpoint), which :func:`cin_config` builds from its three parts
(:func:`first_stage_config`, :func:`transformer_config`, the Labelator's ``n_classes``) for the
toy model (:func:`cortex_nb.toy.vqgm.toy_cin_config`) and, with the released files' quirks, for
tests and benchmarks (:func:`tiny_cin_config`)::

    model:
      base_learning_rate: 4.5e-06
      target: taming.models.cond_transformer.Net2NetTransformer
      params:
        first_stage_key: image
        cond_stage_key: class_label
        transformer_config:
          target: taming.modules.transformer.mingpt.GPT
          params: {vocab_size: 16384, block_size: 257, n_layer: ..., n_head: ..., n_embd: ...}
        first_stage_config:
          target: taming.models.vqgan.VQModel
          params:
            ckpt_path: <path of the VQGAN run, absent on the user's disk>
            embed_dim: 256
            n_embed: 16384
            ddconfig: {double_z: false, z_channels: 256, resolution: 256, in_channels: 3,
                       out_ch: 3, ch: 128, ch_mult: [1, 1, 2, 2, 4], num_res_blocks: 2,
                       attn_resolutions: [16], dropout: 0.0}
            lossconfig:
              target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
              params: {disc_conditional: false, disc_in_channels: 3, disc_start: ...,
                       disc_weight: 0.8, codebook_weight: 1.0}
        cond_stage_config:
          target: taming.modules.util.Labelator
          params: {n_classes: 1000}
    data: {target: main.DataModuleFromConfig, ...}
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from .taming_config import DUMMY_LOSS_TARGET, GPT_TARGET, LABELATOR_TARGET, NET2NET_TARGET, VQMODEL_TARGET

__all__ = ["RELEASED_LOSSCONFIG", "first_stage_config", "transformer_config", "cin_config", "tiny_cin_config"]

#: the lossconfig of taming's ``configs/imagenet_vqgan.yaml``, as released configs carry it
RELEASED_LOSSCONFIG = {
    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 250001,
               "disc_weight": 0.8, "codebook_weight": 1.0},
}


def first_stage_config(
    *, n_embed: int, embed_dim: int, z_channels: int, resolution: int, ch: int,
    ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int] = (),
    lossconfig: Mapping | None = None, ckpt_path: str | None = None,
) -> dict:
    """The ``first_stage_config`` node: a taming ``VQModel`` (codebook K = ``n_embed`` rows of
    d = ``embed_dim``; grid m = resolution / 2**(len(ch_mult) - 1)). ``lossconfig`` None:
    ``DummyLoss``; ``ckpt_path`` None: no such key. ``ch`` and every ``ch * ch_mult`` must be
    multiples of 32 (GroupNorm(32))."""
    params: dict[str, Any] = {
        "embed_dim": embed_dim,
        "n_embed": n_embed,
        "ddconfig": {
            "double_z": False,
            "z_channels": z_channels,
            "resolution": resolution,
            "in_channels": 3,
            "out_ch": 3,
            "ch": ch,
            "ch_mult": list(ch_mult),
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": list(attn_resolutions),
            "dropout": 0.0,
        },
        "lossconfig": (copy.deepcopy(dict(lossconfig)) if lossconfig is not None
                       else {"target": DUMMY_LOSS_TARGET}),
    }
    if ckpt_path is not None:
        params = {"ckpt_path": ckpt_path, **params}
    return {"target": VQMODEL_TARGET, "params": params}


def transformer_config(*, vocab_size: int, block_size: int, n_layer: int, n_head: int,
                       n_embd: int) -> dict:
    """The ``transformer_config`` node: taming's mingpt ``GPT`` over ``vocab_size`` tokens (the
    codes; class tokens share the vocabulary) and ``block_size`` positions (m*m + 1)."""
    return {
        "target": GPT_TARGET,
        "params": {
            "vocab_size": vocab_size,
            "block_size": block_size,
            "n_layer": n_layer,
            "n_head": n_head,
            "n_embd": n_embd,
        },
    }


def cin_config(first_stage: Mapping, transformer: Mapping, n_classes: int,
               data: Mapping | None = None) -> DictConfig:
    """A taming config with the official class-conditional ImageNet structure (module
    docstring): a ``Net2NetTransformer`` over ``first_stage`` (:func:`first_stage_config`) and
    ``transformer`` (:func:`transformer_config`), conditioned by a Labelator on ``n_classes``
    class ids, plus a ``data:`` section when given."""
    cfg: dict[str, Any] = {
        "model": {
            "base_learning_rate": 4.5e-06,
            "target": NET2NET_TARGET,
            "params": {
                "first_stage_key": "image",
                "cond_stage_key": "class_label",
                "transformer_config": copy.deepcopy(dict(transformer)),
                "first_stage_config": copy.deepcopy(dict(first_stage)),
                "cond_stage_config": {
                    "target": LABELATOR_TARGET,
                    "params": {"n_classes": int(n_classes)},
                },
            },
        },
    }
    if data is not None:
        cfg["data"] = copy.deepcopy(dict(data))
    return OmegaConf.create(cfg)


def tiny_cin_config(
    *,
    n_embed: int = 64,
    embed_dim: int = 8,
    z_channels: int = 8,
    resolution: int = 16,
    ch: int = 32,
    ch_mult: Sequence[int] = (1, 2),
    num_res_blocks: int = 1,
    attn_resolutions: Sequence[int] = (),
    n_classes: int = 5,
    n_layer: int = 1,
    n_head: int = 2,
    n_embd: int = 32,
    block_size: int | None = None,
    first_stage_ckpt_path: str | None = "logs/does-not-exist_imagenet_vqgan/checkpoints/last.ckpt",
) -> DictConfig:
    """A toy-sized :func:`cin_config` with what the loader has to cope with in the released
    ``cin_transformer`` project.yaml (tests, benchmarks): the nested first-stage ``ckpt_path``
    pointing at a file that does not exist, the ``VQLPIPSWithDiscriminator`` lossconfig with the
    full parameter block of ``configs/imagenet_vqgan.yaml``, and a ``data:`` section.
    Grid m = resolution / 2**(len(ch_mult) - 1); GPT vocab = n_embed; block_size = m*m + 1.
    """
    m = resolution // 2 ** (len(ch_mult) - 1)
    first_stage = first_stage_config(
        n_embed=n_embed, embed_dim=embed_dim, z_channels=z_channels, resolution=resolution,
        ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
        lossconfig=RELEASED_LOSSCONFIG, ckpt_path=first_stage_ckpt_path)
    transformer = transformer_config(
        vocab_size=n_embed, block_size=block_size if block_size is not None else m * m + 1,
        n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    data = {
        "target": "main.DataModuleFromConfig",
        "params": {
            "batch_size": 4,
            "num_workers": 0,
            "train": {"target": "taming.data.imagenet.ImageNetTrain",
                      "params": {"config": {"size": resolution}}},
        },
    }
    return cin_config(first_stage, transformer, n_classes, data=data)
