"""The token browser's views (split from :mod:`cortex_nb.browser.app` by concept): the ranking, gallery, token and usage
panels, each ONE PNG drawn on a ``matplotlib.figure.Figure`` (Agg, no pyplot) and shown at its own pixel size
(:func:`cortex_nb.browser.list_view.show_png`). A mixin of :class:`cortex_nb.browser.app.TokenBrowser`, which provides
``data``, ``C``, ``m``, ``p``, ``usage``, ``token``, ``class_index``, ``source``, ``n_used``, the sliders,
``gallery_matches``, ``boxes``, ``_ranked``, ``_shown``, ``_gal_tokens``, ``_gal_by_class`` and ``per_page``.
"""
from __future__ import annotations

import numpy as np

from ..io.figures import message_png, panel_figure, pixel_panel, png_bytes
from .list_view import show_png

__all__ = ["Views", "SELECTED", "OTHER", "shrink_images"]

SELECTED, OTHER = "#d62728", "#9aa5b1"      # the selected bar, the others


def shrink_images(images: np.ndarray, f: int) -> np.ndarray:
    """uint8 images (b, H, W, 3) area-averaged by the integer factor ``f`` (edges that do not fill a block are
    dropped); f <= 1: unchanged."""
    if f <= 1:
        return images
    b, H, W = images.shape[:3]
    x = images[:, :H - H % f, :W - W % f].reshape(b, H // f, f, W // f, f, 3).astype(np.float32)
    return x.mean((2, 4)).round().astype(np.uint8)


class Views:
    """The four panels of the token browser."""

    def _render_ranking(self) -> None:
        ids, value, _ = self._ranked()
        t, name = self.token, self.data.class_names[self.class_index]
        if len(ids) == 0:
            show_png(self.ranking_view, message_png(f"no concept tokens for class {name}"))
            return
        fig = panel_figure(max(3.4, 1.0 + 0.12 * len(ids)), 2.6, constrained=True)
        ax = fig.add_subplot()
        x = np.arange(len(ids))
        ax.bar(x, value, color=[SELECTED if i == t else OTHER for i in ids], width=0.8)
        step = max(1, len(ids) // 32)
        ax.set_xticks(x[::step], [str(i) for i in ids[::step]], rotation=90)
        ax.set_xlim(-0.6, len(ids) - 0.4)
        what = {"class-vs-rest": "log-ratio score", "frequency": "count, all positions"}.get(
            self.source, f"count at top-{self.n_used} TSV")
        ax.set_ylabel(what)
        ax.set_xlabel("token id (best first)")
        n_txt = f" n={self.n_used}" if self.n_used is not None else ""
        ax.set_title(f"{name}: {self.source}{n_txt} k={int(self.k_slider.value)}", loc="left")
        show_png(self.ranking_view, png_bytes(fig))

    def _render_gallery(self) -> None:
        t, name = self.token, self.data.class_names[self.class_index]
        hits, shown = self._shown()
        if t is None or len(shown) == 0:
            n_cls = len(self._gal_by_class.get(self.class_index, ()))
            self._gallery_message = (f"no gallery image of class {name} holds token {t}" if t is not None
                                     else f"class {name} has no concept tokens")
            if n_cls == 0:
                self._gallery_message = f"the gallery holds no image of class {name}"
            show_png(self.gallery_view, message_png(self._gallery_message, w=6.0))
            return
        self._gallery_message = None
        imgs = np.asarray(self.data.gallery_images)[shown]             # (b, H, W, 3)
        shrink = -(-max(imgs.shape[1:3]) // 128)                       # 256 px (imagenet): 2, area-averaged
        imgs = shrink_images(imgs, shrink)
        b, H, Wd = imgs.shape[:3]
        cols = min(b, 6, self.per_page)
        rows = -(-b // cols)
        scale = max(1, 112 // max(H, Wd))                              # integer upscaling: square, sharp pixels
        gap, band = max(1, H // 16), int(np.ceil(12 / scale))          # image pixels; band holds "#index"
        mosaic = np.full((rows * (H + band + gap) + gap, cols * (Wd + gap) + gap, 3), 255, np.uint8)
        boxes, labels = [], []
        for j, i in enumerate(shown):
            y, x = (j // cols) * (H + band + gap) + band, (j % cols) * (Wd + gap) + gap
            mosaic[y:y + H, x:x + Wd] = imgs[j]
            boxes += [(x + x0 / shrink, y + y0 / shrink, w / shrink, h / shrink)
                      for (x0, y0, w, h) in self.boxes(int(i), t)]
            labels.append((x, y, f"#{int(i)}"))
        pages = int(self.page_slider.max)
        page = f", page {int(self.page_slider.value)}/{pages}" if pages > 1 else ""
        title = f"{name}: token {t} in {len(hits)}/{len(self._gal_by_class[self.class_index])} gallery images{page}"
        show_png(self.gallery_view, pixel_panel(mosaic, title, scale, boxes, labels))

    def token_examples(self, t: int, n: int = 4) -> tuple[list[np.ndarray], list[int]]:
        """Up to ``n`` crops of 3 x 3 patches centred on an occurrence of id t in the gallery (one per image,
        the current class's images first), with the gallery indices they come from."""
        p, m = self.p, self.m
        first = self.gallery_matches(self.class_index, t)
        others = np.flatnonzero((self._gal_tokens == t).any(1))
        order = list(dict.fromkeys([*first.tolist(), *others.tolist()]))[:n]
        imgs = np.asarray(self.data.gallery_images)
        crops = []
        for i in order:
            f = int(np.flatnonzero(self._gal_tokens[i] == t)[0])
            r, c = f // m, f % m
            pad = np.pad(imgs[i], ((p, p), (p, p), (0, 0)), constant_values=255)
            crops.append(pad[r * p:r * p + 3 * p, c * p:c * p + 3 * p])   # (3p, 3p, 3), the token in the middle
        return crops, order

    def _render_token(self) -> None:
        """The token decoded alone (a grid filled with it, 3 x 3 patches of it) and where it occurs: crops of
        gallery images around an occurrence, the token's patch boxed."""
        t = self.token
        if t is None:
            show_png(self.token_view, message_png("no token selected", w=2.0))
            return
        img = np.asarray(self.data.token_image(t))
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"token_image({t}) must be uint8 (h, w, 3), got {img.dtype} {img.shape}")
        p = self.p
        h, w = img.shape[:2]
        r0, c0 = max(0, (h - 3 * p) // 2), max(0, (w - 3 * p) // 2)
        alone = np.full((3 * p, 3 * p, 3), 255, np.uint8)                # the middle 3 x 3 patches (white
        mid = img[r0:r0 + 3 * p, c0:c0 + 3 * p]                         # where the decoded image is smaller)
        alone[:mid.shape[0], :mid.shape[1]] = mid
        crops, where = self.token_examples(t)
        gap = np.full((3 * p, max(1, p // 2), 3), 255, np.uint8)
        parts, boxes, x = [alone], [], 3 * p
        for crop in crops:
            parts += [gap, crop]
            x += gap.shape[1]
            boxes.append((x + p, p, p, p))
            x += 3 * p
        row = np.concatenate(parts, axis=1)
        scale = max(1, 84 // (3 * p))
        where_txt = f" | in gallery #{', #'.join(map(str, where))}" if where else " | not in the gallery"
        show_png(self.token_view, pixel_panel(row, f"token {t}: alone{where_txt}", scale, boxes))

    def _render_usage(self) -> None:
        t, c = self.token, self.class_index
        if t is None:
            show_png(self.usage_view, message_png("no token selected", w=3.0))
            return
        row = self.usage[:, t]                                          # (C,)
        cls = np.arange(self.C)
        if self.C > 30:                                                 # the 29 heaviest users + the class
            keep = np.argsort(-row, kind="stable")[:29]
            cls = np.sort(np.union1d(keep, [c]))
        fig = panel_figure(3.6, 0.9 + 0.16 * len(cls), constrained=True)
        ax = fig.add_subplot()
        y = np.arange(len(cls))
        ax.barh(y, row[cls], color=[SELECTED if i == c else OTHER for i in cls], height=0.75)
        ax.set_yticks(y, [self.data.class_names[i] for i in cls])
        ax.set_ylim(len(cls) - 0.4, -0.6)                               # first class on top
        ax.set_xlabel("positions in training images")
        total = int(row.sum())
        share = f"{row[c] / total:.0%}" if total else "0%"
        ax.set_title(f"token {t} by class: {share} of {total}\nuses are {self.data.class_names[c]}", loc="left")
        show_png(self.usage_view, png_bytes(fig))
