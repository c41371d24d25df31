"""The token browser: T*_concept per class, browsed (CORTEX §3.3, eq. 6).

Eq. 6 reduces a class to k codebook ids — the ids found most often at the n highest-TSV
positions of the class's training images. A table of ids says little; this app shows what each
one *is* and *where it lives*:

- **ranking** — the class's k concept tokens for the chosen source, best first, with the count
  they were ranked by (CE / RE: occurrences at the top-n TSV positions, eq. 6; ``frequency``: the
  paper's Table 2 baseline, occurrences over all positions; ``class-vs-rest``: our tf-idf-like
  control, its log-ratio score);
- **gallery** — the class's gallery images (generated test images) that hold the selected token,
  its patches boxed in red: does the id sit on the bird's head, or on the background?
- **token** — the token decoded on its own (a grid filled with that one id), enlarged;
- **usage** — how often each class uses that id over the training split (``token_class_usage``):
  a concept token that every class uses is not much of an explanation;
- **search** (toy world, ``data.search``) — the ids that sit on a part of the bird (head / body /
  background), within a class or a scene, ranked by precision, recall or count
  (:mod:`cortex_nb.method.token_search`); picking one opens it;
- **intervene** (``intervention=``, :mod:`cortex_nb.browser.intervention`) — edit one gallery image by cells
  (fill or token) or by Gumbel selection toward a class, and see every judge before and after.

Driving it: ``TokenBrowser(browser_data(cfg, vqgm, extractors))`` and ``display(b.widget)`` (or
just ``b`` as a cell's last value). The data and the rankings are :mod:`cortex_nb.browser.model`'s (built by
section 06, :mod:`cortex_nb.pipeline.s06_browser`); this module is the app. Every control is a public
attribute and :meth:`TokenBrowser.state` returns what is selected and rendered, so tests drive it
without a browser.

Why it is built this way (the project notes on ipywidgets): each view is ONE composed PNG sent as bytes
to an ``ipywidgets.Image`` (many small widgets are slow); figures are drawn on
``matplotlib.figure.Figure`` with the Agg canvas (no pyplot state: :func:`cortex_nb.io.figures.png_bytes`);
errors in callbacks are written to the ``output`` widget (a print in a callback is invisible in
JupyterLab) and to the status line, never swallowed; widget state is not saved in executed notebooks, so
:meth:`TokenBrowser.snapshot` gives one static PNG of the current view to display beside it.

Speed: the saliency functions rank every class in one bincount, so the ranking of all classes is
computed once per (source, n) and cached; k only slices it (k is capped at ``k_max``, the k
slider's maximum). Gallery matches are a vectorised comparison over the class's gallery images.
"""
from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Callable

import ipywidgets as W
import numpy as np
import torch

from ..io.figures import message_png, stack_pngs
from ..method.masking import scaled_n
from .model import BASELINES, BrowserData, Ranking, rank_concepts
from ..method.saliency import token_class_usage
from .list_view import ListBox, show_png
from .search_view import SearchRow
from .views import SELECTED, Views

__all__ = ["TokenBrowser"]

log = logging.getLogger("cortex_nb")


class TokenBrowser(SearchRow, Views):
    """Browse each class's concept tokens (T*_concept, CORTEX §3.3 eq. 6) and where they occur.

    Args:
        data: :class:`BrowserData` (``browser_data(cfg, vqgm, extractors)`` builds it).
        n: top-n TSV positions per training image (default: the paper's 20 scaled by m²/256).
        k: concept tokens listed per class (default: the paper's 100 scaled by m²/256).
        source: ``"CE"``/``"RE"`` (a key of ``data.train_tsv``), ``"frequency"`` or ``"class-vs-rest"``.
        class_name: the class shown first (default: the first).
        per_page: gallery images per page.
        k_max: the k slider's maximum (default max(64, k), at most K); rankings are cached to k_max.

    Controls (public, drive them by setting ``.value``): ``class_dropdown`` (value = class index),
    ``source_toggle``, ``n_slider`` (disabled for the baselines), ``k_slider``, ``token_select``
    (value = token id), ``page_slider``. Views (``ipywidgets.Image``, PNG bytes): ``ranking_view``,
    ``gallery_view``, ``token_view``, ``usage_view``; ``status`` (HTML); ``output`` (errors).

    Example::

        >>> b = TokenBrowser(browser_data(cfg, vqgm, extractors), source="CE")
        >>> b                                  # the app (a cell's last value)
        >>> b.class_dropdown.value = 3; b.state()["ranked"][:5]
        >>> b.show_snapshot()      # static copy (widget state is not saved), following the app
    """

    def __init__(self, data: BrowserData, *, n: int | None = None, k: int | None = None, source: str = "CE",
                 class_name: str | None = None, per_page: int = 12, k_max: int | None = None,
                 intervention: Any = None):
        data.check()
        self.data = data
        C, m, K = len(data.class_names), int(data.m), int(data.K)
        self.C, self.m, self.K = C, m, K
        self.per_page = int(per_page)
        self.sources = [*data.train_tsv.keys(), *BASELINES]
        if source not in self.sources:
            raise ValueError(f"source must be one of {self.sources}, got {source!r}")
        n = scaled_n(20, m) if n is None else int(n)
        k = scaled_n(100, m) if k is None else int(k)
        self.k_max = min(K, max(64, k) if k_max is None else int(k_max))
        if not 1 <= n <= m * m:
            raise ValueError(f"n must be in [1, m·m = {m * m}], got {n}")
        if not 1 <= k <= self.k_max:
            raise ValueError(f"k must be in [1, {self.k_max}], got {k}")
        # default: the first class the gallery shows (ImageNet runs study a few of 1000 classes)
        c0 = (int(np.min(data.gallery_labels)) if len(data.gallery_labels) else 0) if class_name is None \
            else list(data.class_names).index(class_name)

        # data as the saliency functions want it, converted once
        self._train_tokens = torch.from_numpy(np.asarray(data.train_tokens).astype(np.int64))   # (N, m, m)
        self._train_labels = torch.from_numpy(np.asarray(data.train_labels).astype(np.int64))  # (N,)
        self._gal_tokens = np.asarray(data.gallery_tokens).reshape(len(data.gallery_labels), m * m)  # (G, m²)
        self._gal_labels = np.asarray(data.gallery_labels).astype(np.int64)                     # (G,)
        self._gal_by_class = {c: np.flatnonzero(self._gal_labels == c) for c in range(C)}
        self.p = int(np.shape(data.gallery_images)[1]) // m                                     # patch side
        self._rankings: dict[tuple[str, int | None], Ranking] = {}
        self._usage: np.ndarray | None = None                                                   # (C, K)
        self._busy = False
        self._last_redraw = 0.0
        self.last_error: str | None = None
        self._gallery_message: str | None = None
        self._snapshot_handle = None                                    # set by show_snapshot

        # controls
        names = list(data.class_names)
        labels = [nm if names.count(nm) == 1 else f"{nm} ({i})" for i, nm in enumerate(names)]
        self.class_dropdown = W.Dropdown(options=list(zip(labels, range(C))), value=c0, description="class")
        self.source_toggle = W.ToggleButtons(options=self.sources, value=source, description="source")
        self.n_slider = W.IntSlider(value=n, min=1, max=m * m, description="n (top TSV)",
                                    continuous_update=False)
        self.k_slider = W.IntSlider(value=k, min=1, max=self.k_max, description="k (tokens)",
                                    continuous_update=False)
        self.token_select = ListBox(options=[], rows=12, description="token", layout=W.Layout(width="320px"))
        self.page_slider = W.IntSlider(value=1, min=1, max=1, description="page", continuous_update=False,
                                       disabled=True)   # 1-based gallery page
        # views
        self.ranking_view = W.Image(format="png")
        self.gallery_view = W.Image(format="png")
        self.token_view = W.Image(format="png")
        self.usage_view = W.Image(format="png")
        self.status = W.HTML()
        self.output = W.Output(layout=W.Layout(max_height="240px", overflow="auto"))

        self._build_search(labels, data)     # the search row (cortex_nb.browser.search_view)

        for w in (self.class_dropdown, self.source_toggle, self.n_slider, self.k_slider):
            w.observe(self._on_concept, names="value")
        self.token_select.observe(self._on_token, names="value")
        self.page_slider.observe(self._on_page, names="value")
        # stable hooks for browser tests and page styles (the search row adds another <select>)
        self.class_dropdown.add_class("cortex-class-select")
        self.token_select.add_class("cortex-token-select")

        self.widget = W.VBox([
            W.HBox([self.class_dropdown, self.source_toggle]),
            W.HBox([self.n_slider, self.k_slider]),
            self.search_box,
            # a wrapping row, children at the top: a wide ranking (k = 64) moves the usage chart to the next
            # line instead of squeezing the token list; no chart is stretched to the tallest one
            W.HBox([W.VBox([self.token_select, self.token_view]), self.ranking_view, self.usage_view],
                   layout=W.Layout(flex_flow="row wrap", align_items="flex-start", grid_gap="8px")),
            self.page_slider, self.gallery_view, self.status, self.output,
        ])
        # the intervention panel (cortex_nb.browser.intervention), when the models are given
        self.intervention_panel = None
        if intervention is not None:
            from .intervention import InterventionPanel

            self.intervention_panel = InterventionPanel(self, intervention)
            self.widget.children = (*self.widget.children[:-2], self.intervention_panel.widget,
                                    *self.widget.children[-2:])
        self._guarded(self._refresh_concept, raise_errors=True)

    # ------------------------------------------------------------------ display
    def _ipython_display_(self) -> None:
        """Display the app (the widget view, with a one-line summary as its text/plain)."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        """The widget's own bundle, its text/plain replaced by a summary of the selection."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle or {})
        bundle["text/plain"] = f"TokenBrowser({self._status_text()})"
        return bundle

    # ------------------------------------------------------------------ computing
    @property
    def usage(self) -> np.ndarray:
        """(C, K) int64: positions of each class's training images holding each id (computed once)."""
        if self._usage is None:
            self._usage = token_class_usage(self._train_tokens, self._train_labels, self.C, self.K).numpy()
        return self._usage

    def ranking(self, source: str, n: int | None) -> Ranking:
        """Every class's ranked ids for ``source`` (n is used for TSV sources only), to k_max; cached."""
        key = (source, n if source in self.data.train_tsv else None)
        if key not in self._rankings:
            if source not in self.sources:
                raise ValueError(f"unknown source {source!r}; one of {self.sources}")
            self._rankings[key] = rank_concepts(self._train_tokens, self._train_labels, self.C, self.K, self.k_max,
                                                source, tsv=self.data.train_tsv.get(source), n=n,
                                                usage=lambda: self.usage)
        return self._rankings[key]

    def gallery_matches(self, c: int, t: int) -> np.ndarray:
        """Indices of class-c gallery images holding id t, ascending."""
        idx = self._gal_by_class.get(c, np.empty(0, np.int64))
        return idx[(self._gal_tokens[idx] == t).any(1)]

    def boxes(self, i: int, t: int) -> list[tuple[int, int, int, int]]:
        """Pixel boxes (x0, y0, w, h) of the patches of gallery image i holding id t (row-major),
        the convention of ``figures.image_grid``."""
        p, m = self.p, self.m
        return [(int(f % m) * p, int(f // m) * p, p, p) for f in np.flatnonzero(self._gal_tokens[i] == t)]

    # ------------------------------------------------------------------ current selection
    @property
    def class_index(self) -> int:
        return int(self.class_dropdown.value)

    @property
    def source(self) -> str:
        return str(self.source_toggle.value)

    @property
    def n_used(self) -> int | None:
        """n, or None for the baselines (which ignore it)."""
        return int(self.n_slider.value) if self.source in self.data.train_tsv else None

    def _ranked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The current class's valid ranked ids (≤ k), their values and counts."""
        r = self.ranking(self.source, self.n_used)
        c, k = self.class_index, int(self.k_slider.value)
        ids, value, freq = r.ids[c, :k], r.value[c, :k], r.freq[c, :k]
        ok = ids >= 0
        return ids[ok], value[ok], freq[ok]

    @property
    def token(self) -> int | None:
        v = self.token_select.value
        return None if v is None else int(v)

    def _shown(self) -> tuple[np.ndarray, np.ndarray]:
        """(all matches, the ones on the current page)."""
        t = self.token
        if t is None:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        hits = self.gallery_matches(self.class_index, t)
        a = (int(self.page_slider.value) - 1) * self.per_page
        return hits, hits[a:a + self.per_page]

    def state(self) -> dict:
        """The current selection and what is rendered (plain Python values)."""
        ids, value, freq = self._ranked()
        t = self.token
        hits, shown = self._shown()
        return {
            "class": self.data.class_names[self.class_index], "class_index": self.class_index,
            "source": self.source, "n": int(self.n_slider.value), "n_used": self.n_used,
            "n_enabled": not self.n_slider.disabled, "k": int(self.k_slider.value),
            "ranked": ids.tolist(), "values": value.tolist(), "freqs": freq.tolist(),
            "token": t, "gallery": hits.tolist(), "gallery_shown": shown.tolist(),
            "page": int(self.page_slider.value), "pages": int(self.page_slider.max),
            "boxes": {int(i): self.boxes(int(i), t) for i in shown} if t is not None else {},
            "gallery_message": self._gallery_message,
            "usage": self.usage[:, t].tolist() if t is not None else None,
            "redraw_s": self._last_redraw, "error": self.last_error,
            "search": {"part": self.search_part.value or None, "class_index": self._search_class(),
                       "scene": self._search_scene(), "rank_by": self.search_rank.value,
                       "results": [int(v) for _, v in self.search_results.options]},
        }

    # ------------------------------------------------------------------ callbacks
    def _report_error(self, where: str, exc: BaseException) -> None:
        """Errors never vanish: traceback into ``output``, a red line in ``status``, ``last_error``."""
        self.last_error = f"{where}: {type(exc).__name__}: {exc}"
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.output.append_stderr(f"[token browser] error in {where}\n{tb}")
        log.debug("token browser: error in %s", where, exc_info=exc)

    def _guarded(self, fn: Callable[[], None], *, raise_errors: bool = False) -> None:
        """Run a callback, timed; an exception is reported (or raised: used at construction, where
        a ranking that cannot be computed means bad data — a view that fails to draw is still
        only reported)."""
        t0 = time.perf_counter()
        self.last_error = None
        try:
            fn()
        except Exception as exc:   # noqa: BLE001 — reported in the Output widget, see _report_error
            if raise_errors:
                raise
            self._report_error(fn.__name__.lstrip("_"), exc)
        self._last_redraw = time.perf_counter() - t0
        try:
            self.status.value = self._status_html()
            self._update_snapshot()
        except Exception as exc:   # noqa: BLE001
            self._report_error("status", exc)

    def _on_concept(self, change: dict) -> None:
        if not self._busy:
            self._guarded(self._refresh_concept)

    def _on_token(self, change: dict) -> None:
        if not self._busy:
            self._guarded(self._refresh_token)

    def _on_page(self, change: dict) -> None:
        if not self._busy:
            self._guarded(self._render_gallery)
            if self.intervention_panel is not None:
                self.intervention_panel.refresh_images()

    def _view(self, name: str, render: Callable[[], None]) -> None:
        """Render one view; a failure is reported and the view shows it, the others still render."""
        try:
            render()
        except Exception as exc:   # noqa: BLE001
            self._report_error(name, exc)
            show_png(getattr(self, name), message_png(f"{name}: {type(exc).__name__} (see the error log below)"))

    def _refresh_concept(self) -> None:
        """Class / source / n / k changed: re-rank, refill the token list (top token selected)."""
        self.n_slider.disabled = self.source not in self.data.train_tsv
        ids, value, freq = self._ranked()
        width = len(str(len(ids)))
        is_score = self.source == "class-vs-rest"
        opts = [(f"#{r + 1:<{width}}  token {int(t)}  (" + (f"score {v:.2f}, " if is_score else "")
                 + f"freq {int(f)})", int(t)) for r, (t, v, f) in enumerate(zip(ids, value, freq))]
        self._busy = True
        try:
            self.token_select.options = opts
            self.token_select.value = opts[0][1] if opts else None
        finally:
            self._busy = False
        self._refresh_token()

    def _refresh_token(self) -> None:
        """Token changed: back to page 1, redraw every view."""
        hits, _ = self._shown()
        self._busy = True
        try:
            self.page_slider.value = 1
            self.page_slider.max = max(1, -(-len(hits) // self.per_page))
            self.page_slider.disabled = self.page_slider.max == 1
        finally:
            self._busy = False
        self._view("ranking_view", self._render_ranking)
        self._view("gallery_view", self._render_gallery)
        self._view("token_view", self._render_token)
        self._view("usage_view", self._render_usage)
        if self.intervention_panel is not None:
            self.intervention_panel.refresh_images()

    # ------------------------------------------------------------------ status / static copy
    def _status_text(self) -> str:
        name = self.data.class_names[self.class_index]
        n_txt = f"n={self.n_used} " if self.n_used is not None else ""
        s = f"class {name} · {self.source} · {n_txt}k={int(self.k_slider.value)}"
        t = self.token
        if t is not None:
            hits, _ = self._shown()
            s += f" · token {t} in {len(hits)}/{len(self._gal_by_class.get(self.class_index, ()))} gallery images"
        return s + f" · redraw {self._last_redraw:.2f} s"

    def _status_html(self) -> str:
        import html

        s = html.escape(self._status_text())
        if self.last_error:
            s += f' · <span style="color:{SELECTED}">error: {html.escape(self.last_error)} (log below)</span>'
        return s

    def show_snapshot(self) -> None:
        """Display :meth:`snapshot` as a static image that follows the app: every redraw replaces it (IPython's
        ``display_id``), so the copy a saved notebook keeps, and nbviewer shows, is the view last seen, not
        the first one."""
        from IPython.display import Image, display

        self._snapshot_handle = display(Image(self.snapshot()), display_id=True)

    def _update_snapshot(self) -> None:
        if self._snapshot_handle is not None:
            from IPython.display import Image

            self._snapshot_handle.update(Image(self.snapshot()))

    def snapshot(self) -> bytes:
        """One static PNG of the current views (ranking, token, usage above; gallery below), for a
        notebook to display beside the widget, whose state executed notebooks do not keep."""
        top = [v.value for v in (self.token_view, self.ranking_view, self.usage_view) if v.value]
        bottom = [self.gallery_view.value] if self.gallery_view.value else []
        return stack_pngs([top, bottom]) or message_png("nothing rendered")
