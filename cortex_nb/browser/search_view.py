"""The token browser's search row (issue #15): codebook ids ranked for a ground-truth query, and opening one.

A mixin of :class:`cortex_nb.browser.app.TokenBrowser` (split from it by concept): ``_build_search`` makes the
controls -- part (head / body / background), class, scene, rank by (precision / recall / count) -- and the
results list; picking a result opens the token in the browser (:meth:`SearchRow.open_token`). The ranking is
:func:`cortex_nb.method.token_search.search_tokens` over ``data.search`` (real toy images encoded to tokens, their part
masks); without it (outside the toy world) the row is hidden.
"""
from __future__ import annotations

from typing import Any

import ipywidgets as W
import numpy as np

from ..method.token_search import PARTS, RANK_BY, search_tokens
from .list_view import ListBox
from ..toy.world import SCENES

__all__ = ["SearchRow"]


class SearchRow:
    """The search row's controls and callbacks; the host (TokenBrowser) provides ``data``, ``K``, ``C``,
    ``usage``, ``class_index``, ``token_select``, ``_gal_tokens``, ``_gal_labels``, ``_busy``, ``_guarded``,
    ``_refresh_concept`` and ``_refresh_token``."""

    def _build_search(self, labels: list[str], data) -> None:
        # "no choice" is a value of its own ("" / -1): a Dropdown whose value is None shows an empty box
        self.search_part = W.Dropdown(options=[("—", "")] + [(p, p) for p in PARTS], value="", description="search")
        self.search_class = W.Dropdown(options=[("any class", -1)] + list(zip(labels, range(len(labels)))), value=-1,
                                       description="in")
        self.search_scene = W.Dropdown(options=[("any scene", -1)] + [(sc, i) for i, sc in enumerate(SCENES)],
                                       value=-1, description="scene")
        self.search_rank = W.ToggleButtons(options=list(RANK_BY), value="precision", description="rank by")
        self.search_results = ListBox(options=[], rows=8, description="found", layout=W.Layout(width="460px"))
        self.search_min_count = 5       # a token seen a handful of times on the head has precision 1
        self.search_top = 50
        self.search_box = W.VBox([W.HBox([self.search_part, self.search_class, self.search_scene]),
                                  self.search_rank, self.search_results],
                                 layout=W.Layout(display=None if data.search is not None else "none"))
        for w in (self.search_part, self.search_class, self.search_scene, self.search_rank):
            w.observe(self._on_search, names="value")
        self.search_results.observe(self._on_search_pick, names="value")
        self.search_results.add_class("cortex-search-results")
        self.search_part.add_class("cortex-search-part")

    def search(self) -> Any:
        """The current query's ranked table (:func:`cortex_nb.method.token_search.search_tokens`, ids seen at least
        ``search_min_count`` times, the best ``search_top``), or None when no part is chosen or the data
        has no ground truth."""
        sd, part = self.data.search, self.search_part.value
        if sd is None or not part:
            return None
        return search_tokens(sd["tokens"], sd["parts"], self.K, part, labels=sd["labels"], scenes=sd["scenes"],
                             cls=self._search_class(), scene=self._search_scene(),
                             rank_by=self.search_rank.value, min_count=self.search_min_count, top=self.search_top)

    def open_token(self, t: int, class_index: int | None = None) -> None:
        """Show token t (in ``class_index``, default the current class): selected in the token list (added on
        top, marked 'search', when it is not one of the class's concept tokens), every view redrawn."""
        self._busy = True
        try:
            if class_index is not None and class_index != self.class_index:
                self.class_dropdown.value = int(class_index)
                self._busy = False
                self._refresh_concept()
                self._busy = True
            if int(t) not in [v for _, v in self.token_select.options]:
                self.token_select.options = [(f"search: token {int(t)}", int(t)), *self.token_select.options]
            self.token_select.value = int(t)
        finally:
            self._busy = False
        self._refresh_token()

    def _refresh_search(self) -> None:
        df = self.search()
        self._busy = True
        try:
            self.search_results.options = [] if df is None else [
                (f"token {int(r.token)}  precision {r.precision:.0%}  recall {r.recall:.1%}  n {int(r.count)}",
                 int(r.token)) for r in df.itertuples()]
            self.search_results.value = None
        finally:
            self._busy = False

    def _on_search(self, change: dict) -> None:
        if not self._busy:
            self._guarded(self._refresh_search)

    def _search_class(self) -> int | None:
        v = self.search_class.value
        return None if v is None or int(v) < 0 else int(v)

    def _search_scene(self) -> int | None:
        v = self.search_scene.value
        return None if v is None or int(v) < 0 else int(v)

    def best_class_for(self, t: int) -> int:
        """The class whose gallery images hold token t most often (ties: the larger training usage, then
        the smaller index): where opening t shows the most."""
        hold = (self._gal_tokens == int(t)).any(1)                          # (G,) gallery images holding t
        counts = np.bincount(self._gal_labels[hold], minlength=self.C)
        return int(max(range(self.C), key=lambda c: (counts[c], self.usage[c, int(t)], -c)))

    def _on_search_pick(self, change: dict) -> None:
        if not self._busy and change["new"] is not None:
            t = int(change["new"])
            c = self._search_class()
            self._guarded(lambda: self.open_token(t, self.best_class_for(t) if c is None else c))
