"""Figures: one style, one saver, and the image grids every notebook shows.

``save_figure(fig, directory, name)`` writes PNG (and PDF) atomically under figures/<profile>/.
Panels for widgets (:mod:`cortex_nb.browser.app`) are drawn without pyplot: :func:`panel_figure`,
:func:`png_bytes`, :func:`message_png`, :func:`stack_pngs`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

import numpy as np

from . import provenance
from .files import atomic_path

__all__ = ["set_style", "save_figure", "image_grid", "to_uint8", "PANEL_DPI", "PANEL_RC", "panel_figure",
           "png_bytes", "message_png", "stack_pngs", "pixel_panel"]

#: widget panels are drawn at this dpi and shown at their own pixel size (cortex_nb.browser.list_view.show_png):
#: 100 dpi makes the panels' 7-9 pt text 10-12 px tall, legible on a laptop screen
PANEL_DPI = 100
#: the style of widget panels, fixed whatever style the notebook set
PANEL_RC = {"savefig.bbox": "standard", "savefig.dpi": "figure", "savefig.facecolor": "white",
            "figure.facecolor": "white", "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8,
            "xtick.labelsize": 7, "ytick.labelsize": 7}


def set_style() -> None:
    """The project's plot style (seaborn 'whitegrid', small fonts, 150 dpi)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


#: under the paper-dry profile (cortex_nb.io.provenance.dry_run: the profile bound by setup or the command line) every
#: saved figure carries this banner
DRY_TITLE = "PAPER-DRY: random weights at the paper's shapes — these numbers are meaningless"


def save_figure(fig, directory: str | Path, name: str, *, pdf: bool = True) -> Path:
    """Save ``fig`` as ``directory/name.png`` (+ ``.pdf``) atomically, byte-reproducibly; returns the PNG path.
    Under the paper-dry profile (:func:`cortex_nb.io.provenance.dry_run`) a red banner at the top says the numbers are
    meaningless."""
    if provenance.dry_run() and not getattr(fig, "_cortex_dry", False):
        fig.text(0.5, 0.999, DRY_TITLE, ha="center", va="top", color="red", fontsize=9, weight="bold")
        fig._cortex_dry = True
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.png"
    for ext in (("png", "pdf") if pdf else ("png",)):
        with atomic_path(directory / f"{name}.{ext}") as tmp:
            # no creation date in the PDF: the same figure gives the same bytes (and SHA-256 in MANIFEST.json) every run
            fig.savefig(tmp, format=ext, **({"metadata": {"CreationDate": None}} if ext == "pdf" else {}))
        provenance.record(directory / f"{name}.{ext}")
    return out


def to_uint8(images) -> np.ndarray:
    """Images as uint8 (B, H, W, 3): accepts that already, or float (B, 3, H, W) in [-1, 1]
    (taming's convention) as a torch tensor or array."""
    import torch

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.dtype == torch.uint8:
            images = images.numpy()
        else:
            x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return x.permute(0, 2, 3, 1).numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images if images.shape[-1] == 3 else images.transpose(0, 2, 3, 1)
    x = np.clip((images.astype(np.float32) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def image_grid(images, nrow: int, *, row_labels: Sequence[str] | None = None, title: str | None = None,
               scale: float = 0.9, boxes: Sequence[Sequence[tuple[int, int, int, int]]] | None = None):
    """A matplotlib figure with ``images`` (uint8 (B,H,W,3) or float [-1,1]) laid out ``nrow``
    per row, optional labels on the left and red boxes ``(x0, y0, w, h)`` (pixels) per image."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    imgs = to_uint8(images)
    n = len(imgs)
    rows = (n + nrow - 1) // nrow
    fig, axes = plt.subplots(rows, nrow, figsize=(scale * nrow, scale * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(imgs[i], interpolation="nearest")
        for (x0, y0, w, h) in (boxes[i] if boxes is not None else ()):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, edgecolor="red", linewidth=1.5))
    if row_labels is not None:
        for r, lab in enumerate(row_labels[:rows]):
            axes[r, 0].set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.04, hspace=0.04)
    return fig


# ---------------------------------------------------------------------- widget panels (no pyplot)
def panel_figure(w: float, h: float, *, constrained: bool = False):
    """A ``matplotlib.figure.Figure`` of ``w`` x ``h`` inches in the panel style (no pyplot state);
    ``constrained``: matplotlib's constrained layout fits the titles and tick labels inside it."""
    from matplotlib.figure import Figure

    with matplotlib.rc_context(PANEL_RC):
        fig = Figure(figsize=(w, h), dpi=PANEL_DPI, layout="constrained" if constrained else None)
        if constrained:
            fig.get_layout_engine().set(w_pad=0.03, h_pad=0.03)
        return fig


def pixel_panel(image: np.ndarray, title: str = "", scale: int = 1, boxes=(), labels=()):
    """A panel showing uint8 ``image`` (h, w, 3) upscaled ``scale`` times by repeating pixels, drawn 1:1
    (one image pixel = ``scale`` x ``scale`` screen pixels: square and sharp, no resampling), under a
    one-line ``title``. ``boxes``: red rectangles (x0, y0, w, h) and ``labels``: (x, y, text), both in
    image pixels. Returns the PNG bytes."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    s = max(1, int(scale))
    big = np.repeat(np.repeat(np.asarray(image, np.uint8), s, 0), s, 1)
    band = 16 if title else 0                                         # screen pixels for the title
    need = 6 * len(title) + 8                                         # ~6 px per character at 8 pt, 100 dpi
    if big.shape[1] < need:                                           # white on the right: the title is never cut
        big = np.concatenate([big, np.full((big.shape[0], need - big.shape[1], 3), 255, np.uint8)], axis=1)
    H, W = big.shape[:2]
    fig = panel_figure(W / PANEL_DPI, (H + band) / PANEL_DPI)
    ax = fig.add_axes((0, 0, 1, H / (H + band)))
    ax.imshow(big, interpolation="nearest", extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    ax.set_xlim(-0.5, W - 0.5), ax.set_ylim(H - 0.5, -0.5)
    if len(boxes):
        ax.add_collection(PatchCollection([Rectangle((x0 * s - 0.5, y0 * s - 0.5), w * s, h * s)
                                           for (x0, y0, w, h) in boxes],
                                          facecolor="none", edgecolor="red", linewidth=1.5))
    for x, y, text in labels:
        ax.text(x * s - 0.5, y * s - 1.5, text, fontsize=7, color="#333333", va="bottom", ha="left")
    ax.set_axis_off()
    if title:
        fig.text(3 / W, 1 - (band / 2) / (H + band), title, va="center", ha="left", fontsize=8)
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    """Render a Figure (Agg canvas, no pyplot) to PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with matplotlib.rc_context(PANEL_RC):
        fig.savefig(buf, format="png", dpi=PANEL_DPI)
    return buf.getvalue()


def message_png(text: str, w: float = 5.0, h: float = 0.6) -> bytes:
    """A panel that only says ``text`` (grey, centred), as PNG bytes."""
    fig = panel_figure(w, h)
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#555555", wrap=True)
    return png_bytes(fig)


def stack_pngs(rows: Sequence[Sequence[bytes]]) -> bytes | None:
    """One PNG of PNG ``rows``: each row's images side by side, rows stacked, white 8 px gaps;
    empty rows are skipped. None when every row is empty."""
    import io

    from PIL import Image

    def load(b: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))   # (h, w, 3)

    out = []
    for parts in ([load(b) for b in row] for row in rows):
        if not parts:
            continue
        h = max(p.shape[0] for p in parts)
        out.append(np.concatenate([np.pad(p, ((0, h - p.shape[0]), (0, 8), (0, 0)), constant_values=255)
                                   for p in parts], axis=1))
    if not out:
        return None
    w = max(r.shape[1] for r in out)
    canvas = np.concatenate([np.pad(r, ((0, 8), (0, w - r.shape[1]), (0, 0)), constant_values=255)
                             for r in out], axis=0)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()
