"""A keyboard-friendly list box for the token browser, and PNG views shown at their own pixel size.

``ListBox`` replaces ``ipywidgets.Select`` for the browser's long lists (the concept tokens, the search
results). In JupyterLab a focused ``<select>`` is not an editable element, so the notebook's command-mode
shortcuts take the arrow keys (ArrowDown moves the cell cursor) and the selection never moves (issue #15).
Lumino stops looking for a shortcut at an element carrying ``data-lm-suppress-shortcuts``; ipywidgets cannot
set attributes from Python, so the list is an `anywidget <https://anywidget.dev>`_ whose few lines of
JavaScript draw a native ``<select size=rows>`` that is such an element (the focused element itself
must carry it: it already matches the notebook's ``... :focus`` selector). The Python side keeps the
``Select`` interface the browser uses: ``options`` as (label, value) pairs, ``value`` (None: nothing chosen),
``observe(..., names="value")``, ``add_class``.

``show_png`` sets an ``ipywidgets.Image`` to PNG bytes and fixes its layout to the PNG's pixel size, so a
chart is never stretched by its row (a flex row stretches its children to the tallest one: charts drawn
184 px tall were shown 542 px tall) nor squeezed by a wide neighbour.
"""
from __future__ import annotations

import struct
from typing import Any

import anywidget
import traitlets

__all__ = ["ListBox", "png_size", "show_png"]

_ESM = r"""
function render({ model, el }) {
  el.classList.add("cortex-listbox");
  const label = document.createElement("label");
  const sel = document.createElement("select");
  // Lumino (JupyterLab) matches shortcuts from the focused element up and stops at an element with this
  // attribute; the focused <select> itself matches the notebook's command-mode selector (".. :focus"), so it
  // must carry it: the arrow keys then move the selection instead of the notebook's cell cursor.
  sel.setAttribute("data-lm-suppress-shortcuts", "true");
  const fill = () => {
    label.textContent = model.get("description");
    label.style.display = model.get("description") ? "" : "none";
    sel.size = Math.max(2, model.get("rows"));
    sel.replaceChildren(...model.get("options").map(([text, value]) => {
      const o = document.createElement("option");
      o.textContent = text;
      o.value = String(value);
      return o;
    }));
    pick();
  };
  const pick = () => {
    const v = model.get("value");
    sel.value = v === null ? "" : String(v);
    if (v === null) sel.selectedIndex = -1;
  };
  const changed = () => {
    const opt = model.get("options").find(([, value]) => String(value) === sel.value);
    model.set("value", opt === undefined ? null : opt[1]);
    model.save_changes();
  };
  sel.addEventListener("change", changed);
  model.on("change:options", fill);
  model.on("change:rows", fill);
  model.on("change:description", fill);
  model.on("change:value", pick);
  fill();
  el.append(label, sel);
  return () => {
    sel.removeEventListener("change", changed);
    model.off("change:options", fill);
    model.off("change:rows", fill);
    model.off("change:description", fill);
    model.off("change:value", pick);
  };
}
export default { render };
"""

_CSS = """
.cortex-listbox { display: flex; align-items: flex-start; gap: 6px; }
.cortex-listbox label { width: var(--jp-widgets-inline-label-width, 80px); text-align: right;
                        font-size: var(--jp-widgets-font-size, 13px); padding-top: 2px; flex-shrink: 0; }
.cortex-listbox select { flex: 1 1 auto; min-width: 0; font-family: var(--jp-code-font-family, monospace);
                         font-size: var(--jp-widgets-font-size, 13px); }
"""


class ListBox(anywidget.AnyWidget):
    """A list of (label, value) options, one selectable; the arrow keys move the selection in JupyterLab.

    >>> lb = ListBox(options=[("#1 token 7", 7), ("#2 token 3", 3)], value=7, description="token")
    >>> lb.options[1], lb.value
    (('#2 token 3', 3), 7)
    """
    _esm = _ESM
    _css = _CSS
    options = traitlets.Any(()).tag(sync=True)
    value = traitlets.Any(None, allow_none=True).tag(sync=True)
    rows = traitlets.Int(10).tag(sync=True)
    description = traitlets.Unicode("").tag(sync=True)

    @traitlets.validate("options")
    def _valid_options(self, proposal: dict) -> tuple:
        out = []
        for opt in proposal["value"]:
            if not (isinstance(opt, (tuple, list)) and len(opt) == 2):
                raise traitlets.TraitError(f"options must be (label, value) pairs, got {opt!r}")
            out.append((str(opt[0]), opt[1]))
        return tuple(out)

    @traitlets.validate("value")
    def _valid_value(self, proposal: dict) -> Any:
        v = proposal["value"]
        if v is not None and v not in [value for _, value in self.options]:
            raise traitlets.TraitError(f"value {v!r} is not one of the options' values")
        return v

    @traitlets.observe("options")
    def _options_changed(self, change: dict) -> None:
        if self.value is not None and self.value not in [value for _, value in change["new"]]:
            self.value = None


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels of PNG bytes, read from the IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not PNG bytes")
    return struct.unpack(">II", png[16:24])


def show_png(view, png: bytes) -> None:
    """Show ``png`` in the ``ipywidgets.Image`` ``view`` at its own pixel size (no stretching, no blur)."""
    w, h = png_size(png)
    view.value = png
    view.layout.width, view.layout.height = f"{w}px", f"{h}px"
    view.layout.min_width, view.layout.flex = f"{w}px", "0 0 auto"
