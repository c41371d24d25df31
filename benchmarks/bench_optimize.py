"""Benchmark 3: token-selection optimisation (CORTEX eq. 7-9) — batched vs one image at a time.

Contenders, on the same images (token grids), codebook, extractor, targets and per-image seeds:
- ours: ``cortex_nb.method.optimize.select_tokens`` on all B images at once (seed s: image b uses s + b).
- per-image: the same function called B times with one image and ``seed = s + b`` — what the
  authors' script does (one image at a time), with our implementation of each step.

Toy size: K = 512, d = 64, m = 8, CE extractor (width 64, 10 classes, random weights, eval mode),
the central 2 x 2 region, B = 500 images (the toy protocol's edit batch: 5 pairs x 2 directions x
50 test images, optimised in one run), 10 Adam steps (the per-step cost is what differs; the toy
protocol runs 300), float32. Goal: ≥ 10x.

Agreement: ``select_tokens`` is built so that image b of a batch follows exactly the run of that
image alone with seed s + b (see its docstring). In float64 that is exact: checked on a subset
(every selected token identical, asserted). In float32 the batched forward pass rounds
differently (~1e-8), which can flip a near-tie of a Gumbel argmax; the fraction of images whose
selected tokens are identical is measured on the timed runs and must be ≥ 0.8.
Run: ``python benchmarks/bench_optimize.py [--quick] [--threads 2]``.
"""
from __future__ import annotations

import _common as C
import torch

from cortex_nb.method.extractors import ExtractorConfig, build_extractor
from cortex_nb.method.optimize import central_region, select_tokens

K, D, M, N_CLASSES, SEED = 512, 64, 8, 10, 100
MIN_SAME_F32 = 0.8


def world(B: int, dtype: torch.dtype):
    torch.manual_seed(0)
    f = build_extractor(ExtractorConfig(arch="CE", d=D, m=M, n_classes=N_CLASSES, width=64)).eval().to(dtype)
    g = torch.Generator().manual_seed(1)
    codebook = torch.randn(K, D, generator=g, dtype=dtype)
    tokens = torch.randint(0, K, (B, M, M), generator=g)
    target = torch.randint(0, N_CLASSES, (B,), generator=g)
    return f, codebook, tokens, target


def batched(f, codebook, tokens, region, target, steps):
    return select_tokens(f, tokens, codebook, region, target, steps=steps, seed=SEED).tokens


def per_image(f, codebook, tokens, region, target, steps):
    return torch.cat([select_tokens(f, tokens[b:b + 1], codebook, region, int(target[b]), steps=steps,
                                    seed=SEED + b).tokens for b in range(len(tokens))])


def main(argv=None) -> dict:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    B, steps, repeats, B64, steps64 = (4, 5, 1, 2, 3) if args.quick else (500, 10, 3, 8, 20)
    region = central_region(M)

    # float64: batched == per-image, exactly
    f, codebook, tokens, target = world(B64, torch.float64)
    a, b = batched(f, codebook, tokens, region, target, steps64), per_image(f, codebook, tokens, region, target, steps64)
    assert torch.equal(a, b), "float64: batched select_tokens differs from one image at a time"

    f, codebook, tokens, target = world(B, torch.float32)
    res = C.compare(
        {"ours": lambda: batched(f, codebook, tokens, region, target, steps),
         "per-image": lambda: per_image(f, codebook, tokens, region, target, steps)},
        repeats=repeats,
        warmup_calls={"ours": lambda: batched(f, codebook, tokens, region, target, 2),
                      "per-image": lambda: per_image(f, codebook, tokens, region, target, 2)})
    a, b = res["first"]["ours"], res["first"]["per-image"]
    same_images = float((a == b).flatten(1).all(1).float().mean())
    same_positions = float((a == b)[:, region].float().mean())
    assert same_images >= MIN_SAME_F32, f"float32: only {same_images:.0%} of images select identical tokens"
    changed = float((a != tokens)[:, region].float().mean())
    rows = [C.row("token selection: batched vs per-image", f"toy K={K} d={D} m={M} CE, 2×2 region, "
                  f"B={B}, {steps} steps", "ours", "per-image", res["median"]["ours"], res["median"]["per-image"],
                  goal="≥ 10×", goal_min=10.0,
                  agreement=(f"float64 (B={B64}, {steps64} steps): identical; float32: {same_images:.0%} of images, "
                             f"{same_positions:.0%} of region tokens identical (need ≥ {MIN_SAME_F32:.0%} images)"),
                  repeats=repeats, times=res["times"], float32_same_images=same_images,
                  float32_same_positions=same_positions, region_changed=changed)]
    notes = [
        "ours = select_tokens on all B images (seed s → image b uses s + b); per-image = the same function "
        "called B times with one image and seed s + b (the authors' script also runs one image at a time).",
        "The warm-up round runs 2 steps of each contender (same shapes); timed rounds run the full steps.",
        f"Fraction of region tokens that differ from the input after the run: {changed:.0%} "
        "(the optimisation moved).",
    ]
    C.write_result(args, "optimize", "Token-selection optimisation (eq. 7-9)", rows, notes=notes)
    return {"rows": rows}


if __name__ == "__main__":
    main()
