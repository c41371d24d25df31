"""Benchmark: how long one token-browser interaction takes at the toy profile's sizes
(N 10 000 training grids, m 8, K 512, 10 classes, 500 gallery images of 32 x 32; synthetic data).
Writes results/benchmarks/widgets_redraw.json. Run: `python benchmarks/widgets_redraw.py`."""
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cortex_nb.widgets import BrowserData, TokenBrowser


def toy_size_data(seed: int = 0) -> BrowserData:
    rng = np.random.default_rng(seed)
    N, m, K_, C_, G = 10_000, 8, 512, 10, 500
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


def main() -> dict:
    torch.set_num_threads(1)
    b = TokenBrowser(toy_size_data())
    times = {"init": b.state()["redraw_s"]}
    steps = {"class": lambda: (b.class_dropdown, 3), "token": lambda: (b.token_select, b.token_select.options[2][1]),
             "n (new)": lambda: (b.n_slider, 9), "k": lambda: (b.k_slider, 40),
             "source frequency": lambda: (b.source_toggle, "frequency")}
    for name, step in steps.items():
        w, v = step()
        t0 = time.perf_counter()
        w.value = v
        times[name] = round(time.perf_counter() - t0, 3)
        assert b.state()["error"] is None, b.state()["error"]
    out = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)",
           "redraw_seconds": times}
    path = Path(__file__).resolve().parents[1] / "results" / "benchmarks" / "widgets_redraw.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
