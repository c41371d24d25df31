"""Benchmark 2: masked-image evaluation (CORTEX Fig. 3 / Table 2) — batched vs one image at a time.

Contenders, on the same uint8 images, labels and masks, with the same classifier weights:
- ours: ``cortex_nb.method.masking.evaluate_masked(evaluator.predict_proba, images, labels, masks,
  batch_size=256)``: masks applied to whole batches of tensors, batched preprocessing and forward.
- reference: ``evaluate_masked_reference`` (``benchmarks/reference.py``): per image a PIL image, black
  rectangles, PIL resize, ToTensor + Normalize, one forward pass of a batch of one (the scripts).

Toy rows: the four toy evaluators (``cortex_nb.toy.evaluators.build_toy_evaluator``: ResNet18/34 and
ViT patch 4/8 on 32 x 32 images; untrained weights: the timing and the agreement do not depend on
training), 8 x 8 token grids, 13 random positions masked (the paper's n = 50 of 256, scaled).
They take 32 x 32 directly, so neither path resizes and the preprocessing is identical: the
per-image probabilities must agree to 1e-4 (absolute). Goal: ≥ 10x.

Paper-like row (reported, no goal): torchvision's ResNet18 (1000 classes, untrained) with the
scripts' preprocessing ``Resize((224, 224))`` on 256 x 256 images, 16 x 16 grid, 50 positions.
There PIL resizes uint8 images (and rounds to uint8) while ours resizes float tensors
(``antialias=True``), so they agree only to a looser tolerance, stated in the row.
Run: ``python benchmarks/bench_masking.py [--quick] [--threads 2]``.
"""
from __future__ import annotations

import _common as C
import numpy as np
import torch
import torchvision

from cortex_nb.method.evaluators import Evaluator, imagenet_spec
from cortex_nb.method.masking import evaluate_masked, mask_random
from cortex_nb.toy.evaluators import build_toy_evaluator
from reference import evaluate_masked_reference  # benchmarks/reference.py (benchmarks/ is sys.path[0])

TOL_TOY = 1e-4        # absolute, per-image true-class probability (same preprocessing)
TOL_RESIZE = 1e-2     # relative to the largest probability (PIL uint8 resize vs float antialias resize)


def inputs(B: int, H: int, m: int, n: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # smooth-ish images (blocks of colour plus noise), so masking changes what the model sees
    base = rng.integers(0, 256, (B, m, m, 3)).repeat(H // m, 1).repeat(H // m, 2)
    images = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    labels = rng.integers(0, n_classes, B)
    masks = mask_random(B, m, n, generator=torch.Generator().manual_seed(seed))
    return images, labels, masks


def run(ev: Evaluator, images, labels, masks, repeats: int, tol: float, relative: bool, size: str,
        goal: str, goal_min: float | None) -> dict:
    ev.eval()
    res = C.compare({
        "ours": lambda: evaluate_masked(ev.predict_proba, images, labels, masks, batch_size=256),
        "reference": lambda: evaluate_masked_reference(ev, images, labels, masks),
    }, repeats=repeats)
    a, b = res["first"]["ours"], res["first"]["reference"]
    diff = float(np.abs(a["p_true"] - b["p_true"]).max())
    err = diff / float(np.abs(b["p_true"]).max()) if relative else diff
    what = "rel" if relative else "abs"
    assert err <= tol, f"{size}: per-image probabilities differ by {err:.2e} ({what}) > {tol}"
    assert np.array_equal(a["n_masked"], b["n_masked"])
    same_argmax = float(np.mean(a["correct"] == b["correct"]))
    return C.row("masked evaluation: batched vs per-image PIL", size, "ours", "reference",
                 res["median"]["ours"], res["median"]["reference"], goal=goal, goal_min=goal_min,
                 agreement=f"p_true max {what} diff {err:.1e} (tol {tol:g}); correct identical {same_argmax:.0%}",
                 repeats=repeats, times=res["times"])


def main(argv=None) -> dict:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    if args.quick:
        names, B, B_paper, repeats = ("resnet18", "vit_p8"), 8, 2, 1
    else:
        names, B, B_paper, repeats = ("resnet18", "resnet34", "vit_p4", "vit_p8"), 200, 24, 3
    rows = []
    images, labels, masks = inputs(B, 32, 8, 13, 10)
    for name in names:
        torch.manual_seed(0)
        ev = build_toy_evaluator(name, n_classes=10, image_size=32)
        rows.append(run(ev, images, labels, masks, repeats, TOL_TOY, False,
                        f"toy {name}, {B} images 32×32, 13/64 masked", "≥ 10×", 10.0))

    torch.manual_seed(0)
    ev = Evaluator(torchvision.models.resnet18(weights=None, num_classes=1000),
                   imagenet_spec("resnet18", preprocess="reference"))
    images, labels, masks = inputs(B_paper, 256, 16, 50, 1000, seed=1)
    rows.append(run(ev, images, labels, masks, repeats, TOL_RESIZE, True,
                    f"paper-like ResNet18, {B_paper} images 256→224, 50/256 masked",
                    "— (reported)", None))
    notes = [
        "ours = masking.evaluate_masked(ev.predict_proba, ..., batch_size=256); reference = "
        "benchmarks/reference.py's evaluate_masked_reference (PIL, one image per forward pass).",
        "Toy evaluators take 32×32 directly: no resize on either path, identical preprocessing.",
        "Paper-like row: PIL resizes uint8 (and rounds), ours resizes float tensors with antialias, "
        f"so the agreement there is relative to the largest probability (tol {TOL_RESIZE:g}).",
        "Untrained weights: timing and agreement do not depend on training.",
    ]
    C.write_result(args, "masking", "Masked-image evaluation (Fig. 3, Table 2)", rows, notes=notes)
    return {"rows": rows}


if __name__ == "__main__":
    main()
