"""Benchmark 6: deletion curves (issue #14, notebook 07) — ours batched vs Quantus's RegionPerturbation.

The task: the deletion curve of one attribution over every position of an 8 x 8 token grid (64 steps, most
relevant first, black fill) on B toy images, judged by the four toy evaluators (ResNet18/34, ViT patch 4/8 on
32 x 32 images; untrained weights: timing and agreement do not depend on training).

- ours: ``cortex_nb.method.faithfulness.perturbation_curve`` with a score that masks the uint8 batch once per step
  (``masking.mask_images``) and shows it to every evaluator (``predict_proba``), as section 07 does;
- Quantus 0.6 ``RegionPerturbation(patch_size=4, regions_evaluation=64, perturb_baseline=-1.0)`` (black in
  taming's [-1, 1] convention, which the evaluators take), called once per evaluator, as its API asks.
  Row 1 gives it the whole batch per call (``batch_size=B``: Quantus 0.6 is batched over images); row 2
  gives it one image per call (``batch_size=1``), the per-image loop of earlier Quantus versions and of the
  pixel-flipping runs the issue cites.

Agreement: Quantus returns P_0 − P_k per image and step; ours must give the same to 1e-4 (absolute).
Goal (issue #14): ≥ 10x. Run: ``python benchmarks/bench_faithfulness.py [--quick] [--threads 2]``.
"""
from __future__ import annotations

import _common as C
import numpy as np
import torch

from cortex_nb.method.faithfulness import default_steps, perturbation_curve, rank_positions
from cortex_nb.method.masking import mask_images
from cortex_nb.toy.evaluators import build_toy_evaluator

TOL = 1e-4
M, P = 8, 4


def inputs(B: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (B, M, M, 3)).repeat(P, 1).repeat(P, 2)
    images = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, B)
    scores = torch.from_numpy(rng.random((B, M, M)))
    return images, labels, scores


def ours(evaluators: dict, images, labels, scores) -> dict:
    rows = np.arange(len(labels))

    def score(mask):
        x = mask_images(images, mask, "black")
        return np.stack([ev.predict_proba(x, batch_size=len(x))[rows, labels].numpy() for ev in evaluators.values()])

    _, curve = perturbation_curve(score, rank_positions(scores), M, default_steps(M))   # (65, E, B)
    return {name: (curve[0, j][None] - curve[1:, j]).T for j, name in enumerate(evaluators)}   # (B, 64)


def quantus_curves(evaluators: dict, images, labels, scores, batch_size: int) -> dict:
    import quantus

    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).numpy()       # taming's [-1, 1]
    a = scores.repeat_interleave(P, 1).repeat_interleave(P, 2)[:, None].expand(-1, 3, -1, -1).float().numpy()
    out = {}
    for name, ev in evaluators.items():
        metric = quantus.RegionPerturbation(patch_size=P, order="morf", regions_evaluation=M * M, normalise=False,
                                            abs=False, perturb_baseline=-1.0, disable_warnings=True)
        out[name] = np.asarray(metric(model=ev, x_batch=x, y_batch=labels, a_batch=a, channel_first=True,
                                      softmax=True, device="cpu", batch_size=batch_size))
    return out


def run(evaluators, B, batch_size, repeats, size, goal, goal_min) -> dict:
    images, labels, scores = inputs(B)
    res = C.compare({"ours": lambda: ours(evaluators, images, labels, scores),
                     "quantus": lambda: quantus_curves(evaluators, images, labels, scores, batch_size)},
                    repeats=repeats)
    a, b = res["first"]["ours"], res["first"]["quantus"]
    err = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert err <= TOL, f"{size}: curves differ by {err:.2e} > {TOL}"
    return C.row("deletion curves: batched, all evaluators per mask vs Quantus RegionPerturbation", size, "ours",
                 f"Quantus {_version()} (batch_size={batch_size})", res["median"]["ours"], res["median"]["quantus"],
                 goal=goal, goal_min=goal_min, agreement=f"P_0 − P_k max abs diff {err:.1e} (tol {TOL:g})",
                 repeats=repeats, times=res["times"])


def _version() -> str:
    import quantus

    return quantus.__version__


def main(argv=None) -> dict:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    if args.quick:
        names, B, B_loop, repeats = ("resnet18", "vit_p8"), 8, 4, 1
    else:
        names, B, B_loop, repeats = ("resnet18", "resnet34", "vit_p4", "vit_p8"), 100, 10, 2
    evaluators = {}
    for name in names:
        torch.manual_seed(0)
        evaluators[name] = build_toy_evaluator(name, n_classes=10, image_size=32).eval()
    n = len(names)
    rows = [run(evaluators, B, B, repeats, f"{B} images, {n} evaluators, 64 steps", "≥ 10×", 10.0),
            run(evaluators, B_loop, 1, repeats, f"{B_loop} images, {n} evaluators, 64 steps", "— (reported)", None)]
    notes = [
        "Same images, attribution, evaluators and black fill on both sides; every one of the 64 steps scored.",
        "Quantus 0.6's RegionPerturbation is batched over images (one forward per step per call), so row 1 "
        "compares like with like: ours saves the per-evaluator repetition of the masking and Quantus's "
        "per-image, per-step bookkeeping (copies, padding, a no-change check per image).",
        "Row 2: Quantus with one image per call, the per-image loop of the evaluation libraries.",
        "Untrained evaluator weights: timing and agreement do not depend on training.",
    ]
    C.write_result(args, "faithfulness", "Deletion curves (notebook 07) vs Quantus", rows, notes=notes)
    return {"rows": rows}


if __name__ == "__main__":
    main()
