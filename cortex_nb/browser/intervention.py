"""The token browser's intervention panel (issue #15): poke one gallery image and watch the judges.

Pick one of the gallery images the browser shows, click grid cells (an m x m grid of toggle buttons; ipywidgets
has no click events on images), choose what replaces them -- ``black`` / ``mean`` fill or a token id -- and
**apply**: the edited image is shown beside the original with every evaluator's P(true class) and P(target
class) and the extractor's prediction, before and after (:func:`cortex_nb.method.intervene.edit_image` and
:func:`~cortex_nb.method.intervene.judge`: the numbers a notebook gets from the same calls). **Edit toward** runs the
Gumbel token selection of §3.4 for that image, the selected cells as its region, with a progress bar, and shows
the tokens it chose. Build it with :class:`Intervention` (the models) and pass it to ``TokenBrowser(...,
intervention=...)``.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any

import ipywidgets as W
import numpy as np
import torch

from ..io.figures import message_png, pixel_panel
from ..method.intervene import MODES, edit_image, edit_toward, judge, swap_tokens
from .list_view import show_png

__all__ = ["Intervention", "InterventionPanel", "intervention_for"]


@dataclass
class Intervention:
    """The models the panel needs: the VQGM, the evaluators ({name: Evaluator}), one information extractor
    and its name, the display names of the evaluators, and the Gumbel settings of ``edit toward``."""
    vqgm: Any
    evaluators: dict
    extractor: Any
    extractor_name: str = "CE"
    display: dict | None = None
    steps: int = 300
    lr: float = 0.01
    tau: float = 1.0


def intervention_for(cfg, composed, arch: str = "CE") -> Intervention:
    """The :class:`Intervention` of a composed run (``compose(cfg)``, evaluators included)."""
    from ..pipeline.run import display_name

    o = cfg.optimization
    return Intervention(vqgm=composed.vqgm, evaluators=composed.evaluators, extractor=composed.extractors[arch],
                        extractor_name=arch, display={e: display_name(e) for e in composed.evaluators},
                        steps=int(o.steps), lr=float(o.lr), tau=float(o.tau))


class InterventionPanel:
    """The panel of one :class:`~cortex_nb.browser.app.TokenBrowser` (``browser.intervention_panel``)."""

    def __init__(self, browser, ctx: Intervention):
        self.browser, self.ctx = browser, ctx
        m, C = browser.m, browser.C
        names = list(browser.data.class_names)
        self.image_select = W.Dropdown(options=[], description="image")
        self.cells = [[W.ToggleButton(value=False, layout=W.Layout(width="26px", height="22px", padding="0"),
                                      tooltip=f"cell ({i}, {j})") for j in range(m)] for i in range(m)]
        self.mode = W.ToggleButtons(options=list(MODES), value="black", description="replace by")
        self.token_id = W.BoundedIntText(value=0, min=0, max=int(ctx.vqgm.K) - 1, description="token id")
        self.target = W.Dropdown(options=list(zip(names, range(C))), value=min(1, C - 1), description="target")
        self.apply_button = W.Button(description="apply", button_style="primary")
        self.toward_button = W.Button(description="edit toward target")
        self.clear_button = W.Button(description="clear cells")
        self.swap_button = W.Button(description="swap token → id in the class's gallery", layout=W.Layout(width="auto"),
                                    tooltip="every position of the browser's token set to the token id, in every "
                                            "gallery image of the class that holds it")
        self.progress = W.IntProgress(value=0, min=0, max=max(1, ctx.steps), description="Gumbel",
                                      layout=W.Layout(visibility="hidden"))
        self.view = W.Image(format="png")
        self.table = W.HTML()
        for w, name in ((self.image_select, "image"), (self.target, "target"), (self.view, "view"),
                        (self.table, "table")):
            w.add_class(f"cortex-intervene-{name}")           # hooks for the browser test
        self.last: dict | None = None
        self.apply_button.on_click(lambda _: browser._guarded(self.apply))
        self.toward_button.on_click(lambda _: browser._guarded(self.toward))
        self.clear_button.on_click(lambda _: browser._guarded(self.clear))
        self.swap_button.on_click(lambda _: browser._guarded(self.swap))
        grid = W.VBox([W.HBox(row, layout=W.Layout(margin="0")) for row in self.cells],
                      layout=W.Layout(margin="0 1em 0 0"))
        self.widget = W.VBox([
            W.HTML("<b>Intervene</b> on one gallery image: click cells, choose what replaces them, apply."),
            W.HBox([self.image_select, self.target]),
            W.HBox([grid, W.VBox([self.mode, self.token_id, W.HBox([self.apply_button, self.clear_button]),
                                  W.HBox([self.toward_button, self.progress]), self.swap_button])]),
            W.HBox([self.view, self.table]),
        ])

    # ------------------------------------------------------------------ state
    def refresh_images(self) -> None:
        """The images to pick from: the ones the browser's gallery shows (the selected token's matches)."""
        _, shown = self.browser._shown()
        labels = self.browser.data.class_names
        gl = np.asarray(self.browser.data.gallery_labels)
        keep = self.image_select.value
        # options and value in ONE message: sent apart, the front end could show the new options' first label
        # while the kernel keeps an image still in the list (the Lab test caught "#50" shown, #52 edited)
        with self.image_select.hold_sync():
            self.image_select.options = [(f"#{int(i)} ({labels[int(gl[i])]})", int(i)) for i in shown]
            self.image_select.value = keep if keep in shown else (int(shown[0]) if len(shown) else None)
        if self.image_select.value is not None and int(self.target.value) == int(gl[self.image_select.value]):
            self.target.value = (int(self.target.value) + 1) % self.browser.C    # a target other than its class
        if self.browser.token is not None:
            self.token_id.value = int(self.browser.token)
        if self.image_select.value != keep or not self.view.value:    # an old edit would show another image
            show_png(self.view, message_png("no gallery image to edit: pick a token the class's images hold"
                                            if self.image_select.value is None else
                                            "click cells, then apply (or edit toward the target)", w=4.2))
            self.table.value = ""

    def selected_cells(self) -> np.ndarray:
        return np.array([[b.value for b in row] for row in self.cells], dtype=bool)

    def set_cells(self, cells: np.ndarray) -> None:
        for row, vals in zip(self.cells, np.asarray(cells, dtype=bool)):
            for b, v in zip(row, vals):
                b.value = bool(v)

    def clear(self) -> None:
        self.set_cells(np.zeros((self.browser.m, self.browser.m), bool))

    def _image(self) -> tuple[int, np.ndarray, np.ndarray, int]:
        i = self.image_select.value
        if i is None:
            raise ValueError("no image selected: pick a token whose gallery is not empty")
        d = self.browser.data
        m = self.browser.m
        return (int(i), np.asarray(d.gallery_tokens)[i].reshape(m, m).astype(np.int64),
                np.asarray(d.gallery_images)[i], int(np.asarray(d.gallery_labels)[i]))

    # ------------------------------------------------------------------ actions
    def apply(self) -> dict:
        """Edit the selected image's selected cells, judge before and after, show both; returns the result
        (also ``self.last``): {"index", "tokens", "image", "before", "after", "seconds"}."""
        t0 = time.perf_counter()
        i, tokens, image, true = self._image()
        cells = self.selected_cells()
        new_t, new_img = edit_image(self.ctx.vqgm, tokens, image, cells, self.mode.value,
                                    token=int(self.token_id.value))
        return self._show(i, tokens, image, new_t, new_img, true, t0, cells, what=f"{self.mode.value}"
                          + (f" {int(self.token_id.value)}" if self.mode.value == "token" else ""))

    def toward(self) -> dict:
        """Gumbel token selection toward the target class in the selected cells (progress bar), then judged
        and shown like :meth:`apply`."""
        t0 = time.perf_counter()
        i, tokens, image, true = self._image()
        cells = self.selected_cells()
        self.progress.max, self.progress.value = self.ctx.steps, 0
        self.progress.layout.visibility = "visible"

        def tick(step, steps):
            self.progress.value = step

        new_t = edit_toward(self.ctx.extractor, self.ctx.vqgm.codebook, tokens, cells, int(self.target.value),
                            steps=self.ctx.steps, lr=self.ctx.lr, tau=self.ctx.tau, progress=tick)
        from ..io.figures import to_uint8

        new_img = to_uint8(self.ctx.vqgm.decode(new_t[None]))[0]
        chosen = new_t[torch.as_tensor(cells)].tolist()
        return self._show(i, tokens, image, new_t, new_img, true, t0, cells,
                          what=f"toward class {int(self.target.value)}: tokens {chosen}")

    def swap(self) -> dict:
        """Swap the browser's selected token for the token id in every gallery image of the class that holds it
        (:func:`cortex_nb.method.intervene.swap_tokens`, then decoded); shows the selected image before and after and,
        in the table, each judge's mean over those images (prediction: the most common). ``self.last`` also
        holds the per-image values (``"per_image"``)."""
        t0 = time.perf_counter()
        old, new = self.browser.token, int(self.token_id.value)
        if old is None:
            raise ValueError("no token selected in the browser")
        hits, _ = self.browser._shown()
        if len(hits) == 0:
            raise ValueError(f"no gallery image of the class holds token {old}")
        d, K = self.browser.data, int(self.ctx.vqgm.K)
        tokens = torch.as_tensor(np.asarray(d.gallery_tokens)[hits].astype(np.int64))   # (n, m, m)
        images = np.asarray(d.gallery_images)[hits]
        labels = np.asarray(d.gallery_labels)[hits].astype(np.int64)
        new_t = swap_tokens(tokens, old, new, K)
        from ..io.figures import to_uint8

        new_imgs = to_uint8(self.ctx.vqgm.decode(new_t))
        target, n = int(self.target.value), len(hits)
        both = judge(self.ctx.evaluators, self.ctx.extractor, self.ctx.vqgm.codebook,
                     np.concatenate([images, new_imgs]), torch.cat([tokens, new_t]),
                     true=np.concatenate([labels, labels]), target=target)

        def summary(part: slice) -> dict:
            return {k: {f: float(np.mean(v[f][part])) for f in ("p_true", "p_target")}
                    | {"pred": int(np.bincount(v["pred"][part]).argmax())} for k, v in both.items()}

        before, after = summary(slice(0, n)), summary(slice(n, 2 * n))
        j = int(np.flatnonzero(hits == self.image_select.value)[0]) if self.image_select.value in hits else 0
        what = f"token {old} → {new} in {n} images; table: means"
        self._render(images[j], new_imgs[j], what)
        self._table(before, after, int(labels[j]), target, f"{n} images of token {old}: {hits.tolist()}", what)
        self.last = {"index": int(hits[j]), "tokens": new_t[j], "image": new_imgs[j], "before": before,
                     "after": after, "what": what, "images": hits.tolist(),
                     "per_image": {k: {f: np.asarray(v[f]) for f in ("p_true", "p_target", "pred")}
                                   for k, v in both.items()},
                     "seconds": time.perf_counter() - t0}
        return self.last

    def _show(self, i, tokens, image, new_t, new_img, true, t0, cells: np.ndarray, what: str) -> dict:
        target = int(self.target.value)
        both = judge(self.ctx.evaluators, self.ctx.extractor, self.ctx.vqgm.codebook, np.stack([image, new_img]),
                     torch.stack([torch.as_tensor(tokens), torch.as_tensor(new_t)]), true=true, target=target)
        before = {k: {f: float(v[f][0]) for f in ("p_true", "p_target")} | {"pred": int(v["pred"][0])}
                  for k, v in both.items()}
        after = {k: {f: float(v[f][1]) for f in ("p_true", "p_target")} | {"pred": int(v["pred"][1])}
                 for k, v in both.items()}
        self._render(image, new_img, what)
        where = ", ".join(f"({a}, {b})" for a, b in np.argwhere(cells).tolist()) or "none"
        self._table(before, after, true, target, f"image #{i} ({self.browser.data.class_names[true]}), "
                    f"cells {where}", what)
        self.last = {"index": i, "cells": np.asarray(cells, bool), "tokens": torch.as_tensor(new_t), "image": new_img,
                     "before": before, "after": after, "what": what, "seconds": time.perf_counter() - t0}
        return self.last

    # ------------------------------------------------------------------ views
    def _render(self, image: np.ndarray, new_img: np.ndarray, what: str) -> None:
        H, W_ = image.shape[:2]
        gap = np.full((H, max(1, H // 16), 3), 255, np.uint8)
        pair = np.concatenate([image, gap, new_img], axis=1)
        show_png(self.view, pixel_panel(pair, f"original | edited ({what})"[:80], max(1, 128 // max(H, W_))))

    def _table(self, before: dict, after: dict, true: int, target: int, subject: str, what: str) -> None:
        """The judges' numbers, under a caption naming what they were computed for (the image, its cells and the
        edit), written by the same call that computed them: the page cannot pair one image's label with another
        image's numbers, however late a widget message arrives."""
        names = self.browser.data.class_names
        disp = self.ctx.display or {}
        rows = []
        for k in before:
            label = f"extractor {self.ctx.extractor_name}" if k == "extractor" else disp.get(k, k)
            b, a = before[k], after[k]
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{b['p_true']:.3f} → <b>{a['p_true']:.3f}</b></td>"
                        f"<td>{b['p_target']:.3f} → <b>{a['p_target']:.3f}</b></td>"
                        f"<td>{html.escape(names[b['pred']])} → {html.escape(names[a['pred']])}</td></tr>")
        self.table.value = (f"<table style='font-size:12px'><caption class='cortex-intervene-subject' "
                            f"style='text-align:left'>{html.escape(subject)} · {html.escape(what)}</caption>"
                            f"<tr><th></th><th>P({html.escape(names[true])})</th>"
                            f"<th>P({html.escape(names[target])})</th><th>prediction</th></tr>{''.join(rows)}</table>")
