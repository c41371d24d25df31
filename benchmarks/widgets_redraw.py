"""Benchmark: how long one token-browser interaction takes at the toy profile's sizes
(N 10 000 training grids, m 8, K 512, 10 classes, 500 gallery images of 32 x 32; synthetic data).

No contender: the number is the wall time of each widget change (class, token, n, k, source) on a
fresh ``TokenBrowser``, the whole sequence repeated on new browsers (median per interaction, the
first sequence uncounted). ``make bench`` reports the slowest interaction; every one is in the JSON.
Writes results/benchmarks/widgets_redraw.json.
Run: ``python benchmarks/widgets_redraw.py [--quick] [--threads 2]``.
"""
from __future__ import annotations

import statistics
import time

import _common as C
import numpy as np

from cortex_nb.browser.app import BrowserData, TokenBrowser


def toy_size_data(seed: int = 0, N: int = 10_000, G: int = 500) -> BrowserData:
    rng = np.random.default_rng(seed)
    m, K_, C_ = 8, 512, 10
    p = 1.0 / np.arange(1, K_ + 1)
    order = np.stack([rng.permutation(K_) for _ in range(C_)])         # (C, K) each class's favourite ids

    def draw(labels):
        ranks = rng.choice(K_, size=(len(labels), m, m), p=p / p.sum())
        return order[labels[:, None, None], ranks].astype(np.uint16)

    labels, g_labels = np.repeat(np.arange(C_), N // C_), np.repeat(np.arange(C_), G // C_)
    return BrowserData(
        class_names=[f"species {i}" for i in range(C_)], K=K_, m=m,
        train_tokens=draw(labels), train_labels=labels,
        train_tsv={a: rng.random((N, m, m), dtype=np.float32) for a in ("CE", "RE")},
        gallery_tokens=draw(g_labels), gallery_labels=g_labels,
        gallery_images=rng.integers(0, 256, (G, 32, 32, 3), dtype=np.uint8),
        token_image=lambda t: np.full((32, 32, 3), t % 256, np.uint8))


def one_sequence(data: BrowserData) -> dict[str, float]:
    t0 = time.perf_counter()
    b = TokenBrowser(data)
    times = {"init": time.perf_counter() - t0}
    steps = {"class": lambda: (b.class_dropdown, 3), "token": lambda: (b.token_select, b.token_select.options[2][1]),
             "n (new)": lambda: (b.n_slider, 9), "k": lambda: (b.k_slider, 40),
             "source frequency": lambda: (b.source_toggle, "frequency")}
    for name, step in steps.items():
        w, v = step()
        t0 = time.perf_counter()
        w.value = v
        times[name] = time.perf_counter() - t0
        assert b.state()["error"] is None, b.state()["error"]
    return times


def toy_models():
    """The intervention panel's models at toy size: the shipped toy VQGM (real weights, no training) and
    untrained toy evaluators and CE (timing does not depend on training)."""
    import torch

    from cortex_nb.method.extractors import ExtractorConfig, build_extractor
    from cortex_nb.browser.intervention import Intervention
    from cortex_nb.toy.evaluators import build_toy_evaluator
    from cortex_nb.vqgm import load_vqgm

    art = C.ROOT / "cortex_nb" / "artifacts" / "toy-vqgm"
    vqgm = load_vqgm(art / "config.yaml", art / "model.ckpt")
    torch.manual_seed(0)
    evs = {n: build_toy_evaluator(n, n_classes=10, image_size=32).eval()
           for n in ("resnet18", "resnet34", "vit_p4", "vit_p8")}
    f = build_extractor(ExtractorConfig(arch="CE", width=32, d=vqgm.d, m=vqgm.m, n_classes=10)).eval()
    return Intervention(vqgm=vqgm, evaluators=evs, extractor=f, steps=300)


def intervention_sequence(data: BrowserData, ctx) -> dict[str, float]:
    """Click-to-result of the intervention panel: two cells, then apply with each fill and a token."""
    b = TokenBrowser(data, intervention=ctx)
    p = b.intervention_panel
    p.cells[3][3].value = p.cells[3][4].value = True
    times = {}
    for mode in ("black", "mean", "token"):
        p.mode.value = mode
        t0 = time.perf_counter()
        p.apply_button.click()
        times[f"apply {mode}"] = time.perf_counter() - t0
        assert b.state()["error"] is None, b.state()["error"]
    p.token_id.value = 7
    t0 = time.perf_counter()
    p.swap_button.click()
    times["apply swap (token -> 7 in the class's gallery images)"] = time.perf_counter() - t0
    assert b.state()["error"] is None, b.state()["error"]
    t0 = time.perf_counter()
    p.toward_button.click()
    times[f"edit toward ({ctx.steps} Gumbel steps, on demand)"] = time.perf_counter() - t0
    return times


def main(argv=None) -> dict:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    N, G, repeats = (1_000, 100, 1) if args.quick else (10_000, 500, 3)
    data = toy_size_data(N=N, G=G)
    one_sequence(data)                                                  # warm-up (imports, matplotlib caches)
    runs = [one_sequence(data) for _ in range(repeats)]
    times = {k: [r[k] for r in runs] for k in runs[0]}
    med = {k: statistics.median(v) for k, v in times.items()}
    slowest = max((k for k in med if k != "init"), key=med.get)
    rows = [C.row("token browser: one interaction", f"toy N={N}, m 8, K 512, {G} gallery images", "ours", None,
                  med[slowest], None, goal="— (reported)", agreement=f"slowest: {slowest!r}; no errors",
                  repeats=repeats, times=times)]
    ctx = toy_models()
    if args.quick:
        ctx.steps = 5
    intervention_sequence(data, ctx)                                    # warm-up
    iruns = [intervention_sequence(data, ctx) for _ in range(repeats)]
    itimes = {k: [r[k] for r in iruns] for k in iruns[0]}
    imed = {k: statistics.median(v) for k, v in itimes.items()}
    clicks = {k: v for k, v in imed.items() if k.startswith("apply")}
    worst = max(clicks, key=clicks.get)
    rows.append(C.row("intervention panel: click to result", "toy VQGM (shipped), 4 toy evaluators + CE, one image",
                      "ours", None, clicks[worst], None, goal="< 0.5 s", goal_min=None,
                      agreement=f"slowest: {worst!r}; edit toward {imed[[k for k in imed if 'toward' in k][0]]:.2f} s "
                                f"(on demand, not in the budget); no errors", repeats=repeats, times=itimes,
                      met=bool(clicks[worst] < 0.5)))
    C.write_result(args, "widgets_redraw", "Token browser redraw", rows, extra={"redraw_seconds": med,
                                                                              "intervention_seconds": imed},
                   notes=["Median wall seconds per widget change on a fresh browser; 'init' builds the browser.",
                          "Intervention: the shipped toy VQGM decodes and encodes, untrained evaluators and CE judge."])
    return {"redraw_seconds": med, "intervention_seconds": imed}


if __name__ == "__main__":
    main()
