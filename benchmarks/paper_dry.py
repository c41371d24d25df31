"""Benchmark: the paper's models at their real shapes through the real code path, random weights (issue #17).

What ``benchmarks/paper_scale.py`` extrapolates from a 4-layer slice and FLOP counts, measured end to end here:
taming's cin transformer at its released shapes (1.4 B-parameter GPT, f16 VQGAN with a 16384 x 256 codebook,
Labelator over 1000 classes) built with seeded random weights, written as a Lightning ``last.ckpt`` + config YAML
(:func:`cortex_nb.paper_dry.write_dry_vqgm`), read back by :func:`cortex_nb.vqgm.load_vqgm` (the path the real
files take), then:

- class-conditional sampling of ``--samples`` 16 x 16 grids with the KV-cached sampler (``VQGM.sample``, the
  README recipe top-k 600 / top-p 0.92), seconds per sample;
- decoding them to 256 px and the four evaluators (torchvision, ``weights=None``, the real preprocessing to
  224 px) on the decoded images;
- CE and RE at paper size (72 M / 33 M parameters) on 16 x 16 x 256 token embeddings: one training step of a
  batch of 8, the TSV (SmoothGrad, N = 20) of one image, and one Gumbel token-selection step.

Each with the peak resident memory of the process so far (``ru_maxrss``). Writes results/benchmarks/paper_dry.json
and .md. The checkpoint (5.7 GB) is cached under ``--cache`` (default results/paper-dry/cache/vqgm).
Run: ``python benchmarks/paper_dry.py [--samples 2] [--threads 2]`` (``--quick``: small shapes, for tests).
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import _common as C
import torch

from cortex_nb.paper_dry import DRY_BANNER, dry_imagenet_evaluators, released_cin_config, write_dry_vqgm

QUICK = dict(gpt=dict(n_layer=1, n_head=2, n_embd=64, block_size=16),
             vqgan=dict(n_embed=1024, embed_dim=8, z_channels=8, resolution=16, ch=32, ch_mult=(1, 2, 2),
                        num_res_blocks=1, attn_resolutions=(4,)))


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20      # KiB -> GiB (Linux)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--cache", default=None)
    extra, rest = ap.parse_known_args(argv)
    args = C.parse_args(__doc__.splitlines()[0], rest)
    from cortex_nb.extractors import ExtractorConfig, build_extractor, count_parameters
    from cortex_nb.optimize import central_region, select_tokens
    from cortex_nb.saliency import TokenSaliency
    from cortex_nb.vqgm import load_vqgm

    cache = Path(extra.cache or C.ROOT / "results" / ("paper-dry-quick" if args.quick else "paper-dry") / "cache"
                 / "vqgm")
    config = released_cin_config(**(QUICK if args.quick else {}))
    m_ = {}
    paths, m_["write checkpoint (build + save)"] = timed(lambda: write_dry_vqgm(cache, config, seed=0))
    size_gb = paths["ckpt"].stat().st_size / 1e9
    vq, m_["load through load_vqgm"] = timed(lambda: load_vqgm(paths["config"], paths["ckpt"]))
    mem = {"after load": peak_gib()}
    n = int(extra.samples)
    labels = torch.arange(n) % vq.n_classes
    tokens, m_[f"sample {n} grids (KV cache, top-k 600, top-p 0.92)"] = timed(
        lambda: vq.sample(labels, top_k=600, top_p=0.92, seed=0, batch_size=n))
    mem["after sampling"] = peak_gib()
    with torch.no_grad():
        images, m_[f"decode {n} grids"] = timed(lambda: vq.decode(tokens))
    evs = dry_imagenet_evaluators(["resnet18", "resnet50", "vit_b_16", "vit_b_32"])
    for name, ev in evs.items():
        _, m_[f"{name} on {n} decoded images (224 px)"] = timed(lambda: ev.predict_proba(images))
    mem["after evaluators"] = peak_gib()
    E = vq.embed(tokens).detach()                                            # (n, 256, 16, 16)
    sizes = {}
    for arch in ("CE", "RE"):
        torch.manual_seed(0)
        f = build_extractor(ExtractorConfig(arch=arch, d=vq.d, m=vq.m, n_classes=vq.n_classes,
                                            width=64 if args.quick else 512))
        sizes[arch] = count_parameters(f)
        opt = torch.optim.Adam(f.parameters(), lr=1e-3)
        batch = E.repeat(-(-8 // n), 1, 1, 1)[:8]
        y = torch.arange(8) % vq.n_classes

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(f(batch), y).backward()
            opt.step()

        step()
        _, m_[f"{arch}: training step, batch 8"] = timed(step)
        f.eval()
        ts = TokenSaliency.paper(f, n_samples=20, alpha=0.2)
        _, m_[f"{arch}: TSV of one image (SmoothGrad N = 20)"] = timed(
            lambda: ts.attribute(E[:1], labels[:1], generator=torch.Generator().manual_seed(0)))
        region = central_region(vq.m, 4)
        _, m_[f"{arch}: Gumbel token selection, 2 steps, one image"] = timed(
            lambda: select_tokens(f, tokens[:1], vq.codebook, region, target=1, steps=2))
    mem["peak"] = peak_gib()
    gpt = sum(p.numel() for p in vq.model.transformer.parameters())
    rows = [C.row(name, f"cin GPT {gpt / 1e9:.2f} B" if "sample" in name else "paper shapes", "ours", None, s, None,
                  goal="— (measured)") for name, s in m_.items()]
    per_sample = m_[f"sample {n} grids (KV cache, top-k 600, top-p 0.92)"] / n
    C.write_result(args, "paper_dry", "The paper's models at real shapes, random weights (paper-dry)", rows,
                   extra={"seconds": m_, "peak_gib": mem, "checkpoint_gb": size_gb, "gpt_parameters": gpt,
                          "extractor_parameters": sizes, "sampling_seconds_per_sample": per_sample,
                          "note": DRY_BANNER},
                   notes=[DRY_BANNER, f"checkpoint {size_gb:.2f} GB; GPT {gpt / 1e9:.2f} B parameters; CE "
                          f"{sizes['CE'] / 1e6:.1f} M, RE {sizes['RE'] / 1e6:.1f} M",
                          "peak resident memory (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items())])
    return {"seconds": m_, "peak_gib": mem, "per_sample": per_sample}


if __name__ == "__main__":
    main()
