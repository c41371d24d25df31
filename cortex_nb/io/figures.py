"""Figures: one style, one saver, and the image grids every notebook shows.

``save_figure(fig, directory, name)`` writes PNG (and PDF) atomically under figures/<profile>/.
Panels for widgets (:mod:`cortex_nb.browser.app`) are drawn without pyplot: :func:`panel_figure`,
:func:`png_bytes`, :func:`message_png`, :func:`stack_pngs`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

import numpy as np

from ..errors import UserError
from . import provenance
from .files import atomic_path

__all__ = ["set_style", "save_figure", "image_grid", "layout_defects", "empty_bands", "FigureDefectWarning",
           "FigureDefectError", "to_uint8", "PANEL_DPI", "PANEL_RC", "panel_figure", "png_bytes", "message_png",
           "stack_pngs", "pixel_panel"]

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
    A figure with text over text or a wide empty band (:func:`layout_defects`) is saved with a
    :class:`FigureDefectWarning`; with ``CORTEX_STRICT_FIGURES=1`` (the tests, ``make nbval``) it raises
    :class:`FigureDefectError` instead and nothing is written.
    Under the paper-dry profile (:func:`cortex_nb.io.provenance.dry_run`) a red banner at the top says the numbers are
    meaningless."""
    import io

    if provenance.dry_run() and not getattr(fig, "_cortex_dry", False):
        # above the top edge (the saved box is tight): never over a title
        fig.text(0.5, 1.0, DRY_TITLE, ha="center", va="bottom", color="red", fontsize=9, weight="bold")
        fig._cortex_dry = True
    # render first, check after: the check draws the figure again (a constrained layout may settle differently on a
    # second draw), so the saved bytes are the same whether it runs or not
    rendered = {}
    for ext in (("png", "pdf") if pdf else ("png",)):
        buf = io.BytesIO()
        # no creation date in the PDF: the same figure gives the same bytes (and SHA-256 in MANIFEST.json) every run
        fig.savefig(buf, format=ext, **({"metadata": {"CreationDate": None}} if ext == "pdf" else {}))
        rendered[ext] = buf.getvalue()
    defects = layout_defects(fig)
    if defects:
        msg = f"figure {name}: " + "; ".join(defects)
        if os.environ.get("CORTEX_STRICT_FIGURES", "").strip().lower() in ("1", "true", "yes"):
            raise FigureDefectError(msg)
        warnings.warn(msg, FigureDefectWarning, stacklevel=2)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for ext, data in rendered.items():
        with atomic_path(directory / f"{name}.{ext}", size=len(data)) as tmp:
            tmp.write_bytes(data)
        provenance.record(directory / f"{name}.{ext}")
    return directory / f"{name}.png"


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


#: the gap between grid cells, as a fraction of a cell
GRID_GAP = 0.04


def image_grid(images, nrow: int, *, row_labels: Sequence[str] | None = None, title: str | None = None,
               scale: float = 0.9, boxes: Sequence[Sequence[tuple[int, int, int, int]]] | None = None,
               col_labels: Sequence[str] | None = None, col_fontsize: float = 7):
    """A matplotlib figure with ``images`` (uint8 (B,H,W,3) or float [-1,1]) laid out ``nrow``
    per row, optional labels on the left, labels over the columns (``col_labels``, may hold newlines)
    and red boxes ``(x0, y0, w, h)`` (pixels) per image.

    The layout is set in inches: every cell is ``scale`` inches square, the column labels and the
    title get exactly the height their lines need above the grid, so no band of empty space opens
    between the title and the images and the title never runs over the column labels, whatever the
    number of rows."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    imgs = to_uint8(images)
    n = len(imgs)
    rows = (n + nrow - 1) // nrow
    grid_w = scale * (nrow + (nrow - 1) * GRID_GAP)
    grid_h = scale * (rows + (rows - 1) * GRID_GAP)
    line = 1.3 / 72                                              # inches per point of text, with leading
    col_lines = max((str(c).count("\n") + 1 for c in col_labels), default=0) if col_labels else 0
    col_h = col_lines * col_fontsize * line + 0.06 if col_lines else 0.0
    title_size = 10
    title_h = (str(title).count("\n") + 1) * title_size * line + 0.06 if title else 0.0
    height = grid_h + col_h + title_h
    fig, axes = plt.subplots(rows, nrow, figsize=(grid_w, height), squeeze=False)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=grid_h / height, wspace=GRID_GAP, hspace=GRID_GAP)
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
    if col_labels is not None:
        for c, lab in enumerate(col_labels[:nrow]):
            axes[0, c].set_title(lab, fontsize=col_fontsize, pad=3)
    if title:
        fig.suptitle(title, fontsize=title_size, y=(grid_h + col_h + 0.03) / height, va="bottom")
    return fig


# ---------------------------------------------------------------------- layout checks
class FigureDefectWarning(UserWarning):
    """A saved figure has text over other text or a band of empty space (:func:`layout_defects`)."""


class FigureDefectError(UserError, ValueError):
    """The same, refused (``CORTEX_STRICT_FIGURES=1``)."""


#: the narrowest empty band that counts as a defect, in inches (the ordinary gap between two rows of plots is
#: ~0.1-0.2 in; the band an image grid left under its title was 0.6-1.2 in)
MIN_BAND_IN = 0.3


def layout_defects(fig, *, band: float = 0.04, pad_px: float = 1.0) -> list[str]:
    """What a reviewer would reject in ``fig``, measured as it is saved (tight bounding box):

    - two visible texts whose drawn extents overlap (matplotlib's own extents, shrunk by ``pad_px``
      pixels, so texts that merely touch pass), e.g. a title printed over column labels;
    - a horizontal or vertical band with nothing drawn in it, inside the figure, wider than ``band``
      of the figure's height (width) and than :data:`MIN_BAND_IN`, e.g. empty space between a title and an
      image grid.

    Returns one line per defect (empty: none). Empty bands are found on the rendered pixels (a row
    or column of the saved PNG that is all background), so they count whatever drew them."""
    import io

    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # tick labels exist for ticks outside the view too, visible but not drawn: only the drawn ones count
    hidden = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            tol = 1e-10 * max(abs(lo), abs(hi), 1.0)        # matplotlib's own closeness for "inside the view"
            hidden |= {id(x) for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                       if not lo - tol <= tick.get_loc() <= hi + tol for x in (tick.label1, tick.label2)}
    texts = []
    for t in fig.findobj(Text):
        if id(t) in hidden or not t.get_visible() or not t.get_text().strip() or t.get_alpha() == 0:
            continue
        if t.axes is not None and not t.axes.get_visible():
            continue
        box = _text_box(t, renderer, pad_px)
        if box is not None:
            texts.append((t.get_text().strip().replace("\n", " "), box))
    out = []
    if texts:
        # the exact (rotated-rectangle) test only for pairs whose axis-aligned boxes meet, found in one array pass
        lo = np.array([b.min(0) for _, b in texts])
        hi = np.array([b.max(0) for _, b in texts])
        meet = np.triu(((lo[:, None] < hi[None]) & (lo[None] < hi[:, None])).all(-1), 1)
        for i, j in zip(*np.nonzero(meet)):
            (a, ba), (b, bb) = texts[i], texts[j]
            if _boxes_overlap(ba, bb):
                out.append(f"text overlaps text: {a[:40]!r} and {b[:40]!r}")
    buf = io.BytesIO()
    dpi = 60
    fig.savefig(buf, format="png", dpi=dpi)
    import matplotlib.image as mpimg
    from matplotlib.colors import to_rgb

    buf.seek(0)
    return out + empty_bands(mpimg.imread(buf, format="png"), to_rgb(fig.get_facecolor()), band=band,
                             min_px=int(MIN_BAND_IN * dpi))


def empty_bands(pixels: np.ndarray, background=(1.0, 1.0, 1.0), *, band: float = 0.04, min_px: int = 0) -> list[str]:
    """The bands of ``pixels`` (H, W, 3 or 4; floats in [0, 1] or uint8) that hold nothing but ``background``,
    inside the drawing (between its first and last drawn row / column), wider than ``band`` of the image's
    height (width) and than ``min_px`` pixels: one line each."""
    px = np.asarray(pixels)[..., :3]
    px = px.astype(np.float32) / 255.0 if np.issubdtype(px.dtype, np.integer) else px.astype(np.float32)
    empty = np.all(np.abs(px - np.asarray(background, dtype=np.float32)) < 0.02, axis=-1)
    out = []
    for axis, name, side in ((1, "horizontal", "height"), (0, "vertical", "width")):
        blank = empty.all(axis=axis)
        size = len(blank)
        longest = _longest_run(_strip_edges(blank))      # the tight box's own margin (pad_inches) lies at the edges
        if longest / size > band and longest > min_px:
            out.append(f"{name} empty band of {longest / size:.0%} of the figure's {side} ({longest} of {size} px)")
    return out


def _text_box(t, renderer, pad_px: float) -> np.ndarray | None:
    """The four corners (4, 2) of the rectangle text ``t`` is drawn in (display pixels), shrunk by ``pad_px``: for a
    rotated text the rotated rectangle, not its axis-aligned bounding box (tick labels at 35 degrees have
    overlapping bounding boxes and no overlapping letters)."""
    bb = t.get_window_extent(renderer)
    if bb.width <= 0 or bb.height <= 0:
        return None
    theta = np.deg2rad(t.get_rotation() % 180.0)
    if np.isclose(np.sin(theta) * np.cos(theta), 0.0):              # 0 or 90 degrees: the bounding box is the text
        w, h = bb.width, bb.height
        theta = 0.0
    else:
        rot = t.get_rotation()
        t.set_rotation(0)
        flat = t.get_window_extent(renderer)
        t.set_rotation(rot)
        w, h = flat.width, flat.height
    w, h = max(w - 2 * pad_px, 0.0), max(h - 2 * pad_px, 0.0)
    c, s = np.cos(theta), np.sin(theta)
    half = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return half @ np.array([[c, s], [-s, c]]) + np.array([(bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2])


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex quadrilaterals (4, 2) overlap with positive area (separating axis theorem)."""
    for poly in (a, b):
        for k in range(4):
            edge = poly[(k + 1) % 4] - poly[k]
            axis = np.array([-edge[1], edge[0]])
            if not axis.any():
                return False
            pa, pb = a @ axis, b @ axis
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return False
    return True


def _longest_run(flags: np.ndarray) -> int:
    """The length of the longest run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max(initial=0))


def _strip_edges(blank: np.ndarray) -> np.ndarray:
    """``blank`` between its first and last False (what lies inside the drawing)."""
    idx = np.flatnonzero(~blank)
    return blank[:0] if len(idx) == 0 else blank[idx[0]:idx[-1] + 1]


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
