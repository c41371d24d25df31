"""The token atlas (issue #15): a static HTML site of the concept tokens, readable without a kernel.

One page per class (its concept tokens, ranked) and one per concept token: the token decoded on its own,
the gallery images that hold it with its patches boxed, which classes use it, the distribution of its
token saliency values against all positions', the drop of every evaluator's P(true) when it is masked,
and -- in the toy world, where the part masks are known -- how precisely it sits on the head. Plain files
with relative links: it opens from ``file://`` and works offline (no script, no external resource).

This module only writes: :class:`AtlasData` holds everything as plain numbers and uint8 images;
:func:`cortex_nb.pipeline.atlas.atlas_data` computes it from a run. Images are PNG files written with
Pillow (upscaled by an integer factor, nearest neighbour: pixel art stays sharp, and the pages say
``image-rendering: pixelated`` to the browser too); charts are inline SVG and HTML, so nothing is drawn
by matplotlib and a page costs milliseconds.
"""
from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["AtlasToken", "AtlasData", "write_atlas", "boxed", "in_context", "upscale", "png"]

#: the box around a patch: a black outer and a white inner line, visible on any colour (the toy birds'
#: heads are red, so a red box would vanish on exactly the patches that matter)
BOX_OUTER, BOX_INNER = np.array([0, 0, 0], np.uint8), np.array([255, 255, 255], np.uint8)


@dataclass
class AtlasToken:
    """One concept token's page."""
    token: int
    image: np.ndarray                      # (h, w, 3) uint8: the token decoded on its own
    ranks: dict[int, int]                  # {class: rank (1 = best)} where it is a concept token
    usage: np.ndarray                      # (C,) positions of each class's training images holding it
    examples: list[tuple[np.ndarray, np.ndarray, int]]   # [(image (H, W, 3), mask (m, m) bool, class)]
    tsv_token: np.ndarray                  # TSV values at its positions (a sample), for the histogram
    tsv_all: np.ndarray                    # TSV values at all positions (a sample), the reference
    # {class it is a concept token of: {evaluator: (mean ΔP, n images)}}: its patches masked in that class's
    # gallery images that hold it
    delta_p: dict[int, dict[str, tuple[float, int]]] = field(default_factory=dict)
    precision: float | None = None         # share of its positions on the head (real toy images)
    recall: float | None = None            # share of head positions holding it
    count_real: int | None = None          # its positions in those real images


@dataclass
class AtlasData:
    """Everything the atlas shows."""
    title: str
    source: str                            # whose concept tokens ("CE", ...)
    class_names: list[str]
    concepts: np.ndarray                   # (C, k) token ids best first, -1 padding
    counts: np.ndarray                     # (C, k) the count each was ranked by
    tokens: dict[int, AtlasToken]          # one page per id in ``concepts``
    evaluators: list[str]                  # display names, in the ΔP columns' order
    notes: list[str] = field(default_factory=list)   # lines for the index page (settings, provenance)
    scale: int = 4                         # upscaling factor of the images
    # the claims ledger (tables/ledger.csv rows: check, claim, notebook, verdict, numbers, seeds): its own page
    ledger: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------- images
def upscale(img: np.ndarray, s: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (H, W, 3) by the integer s."""
    return np.repeat(np.repeat(np.asarray(img), s, axis=0), s, axis=1)


def _outline(big: np.ndarray, y0: int, x0: int, p: int) -> None:
    for d, colour in ((0, BOX_OUTER), (1, BOX_INNER)):
        a, b = y0 + d, x0 + d
        q = p - 2 * d
        if q <= 0:
            return
        big[a, b:b + q] = big[a + q - 1, b:b + q] = colour
        big[a:a + q, b] = big[a:a + q, b + q - 1] = colour


def boxed(img: np.ndarray, mask: np.ndarray, s: int) -> np.ndarray:
    """``img`` (H, W, 3) upscaled by s with a 2-pixel outline (black outside, white inside) around every
    patch of ``mask`` (m, m); the input is not modified."""
    big = upscale(img, s).copy()
    m = mask.shape[0]
    p = big.shape[0] // m
    for i, j in zip(*np.nonzero(mask)):
        _outline(big, i * p, j * p, p)
    return big


def in_context(img: np.ndarray, mask: np.ndarray, s: int, radius: int = 1) -> np.ndarray:
    """The (2·radius + 1)² patches around the first masked position of ``img`` (patches outside the image
    white), upscaled by s, the centre patch outlined: the token up close, in its surroundings."""
    m = mask.shape[0]
    p = img.shape[0] // m
    i, j = (int(v[0]) for v in np.nonzero(mask))
    w = (2 * radius + 1) * p
    out = np.full((w, w, 3), 255, np.uint8)
    y0, x0 = (i - radius) * p, (j - radius) * p
    ys, xs = slice(max(0, y0), min(img.shape[0], y0 + w)), slice(max(0, x0), min(img.shape[1], x0 + w))
    out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = img[ys, xs]
    big = upscale(out, s)
    _outline(big, radius * p * s, radius * p * s, p * s)
    return big


def png(img: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (Pillow, optimised)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _strip(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images of one height side by side on white, ``gap`` pixels apart."""
    h = max(i.shape[0] for i in images)
    w = sum(i.shape[1] for i in images) + gap * (len(images) - 1)
    out = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for im in images:
        out[:im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


# ---------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:70em;padding:0 1em;color:#222}
img{image-rendering:pixelated;image-rendering:crisp-edges}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:middle}th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#4c72b0;height:.8em;display:inline-block}.bar.sel{background:#d62728}
img+img{margin-top:.3em}
.thumbs a{display:inline-block;margin:2px;text-align:center;font-size:.75em;color:#333;text-decoration:none}
.muted{color:#777;font-size:.9em}nav{margin-bottom:1em}
"""


def _page(title: str, body: str, nav: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<nav>{nav}</nav>\n<h1>{html.escape(title)}</h1>\n{body}\n"
            "</body></html>\n")


def _e(x) -> str:
    return html.escape(str(x))


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{100 * x:.1f} %" if pct else f"{x:+.3f}"


def _histogram_svg(values: np.ndarray, reference: np.ndarray, bins: int = 20, w: int = 320, h: int = 90) -> str:
    """Two step histograms (density) on shared bins as inline SVG: the token's TSV values (red) and every
    position's (grey)."""
    both = np.concatenate([np.asarray(values, float).ravel(), np.asarray(reference, float).ravel()])
    if both.size == 0:
        return "<p class=muted>no values</p>"
    lo, hi = float(both.min()), float(both.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)

    def path(v, colour):
        d, _ = np.histogram(v, edges, density=True) if len(v) else (np.zeros(bins), edges)
        top = max(1e-12, dens_max)
        pts = [f"{i * w / bins:.1f},{h - d[i] / top * (h - 4):.1f} {(i + 1) * w / bins:.1f},{h - d[i] / top * (h - 4):.1f}"
               for i in range(bins)]
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(pts)}"/>'

    dens_max = max(float(np.histogram(v, edges, density=True)[0].max()) if len(v) else 0.0
                   for v in (values, reference))
    return (f'<svg width="{w}" height="{h + 16}" role="img" aria-label="TSV histogram">'
            f'<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="#999"/>{path(reference, "#999")}{path(values, "#d62728")}'
            f'<text x="0" y="{h + 13}" font-size="10">{lo:.3g}</text>'
            f'<text x="{w}" y="{h + 13}" font-size="10" text-anchor="end">{hi:.3g}</text></svg>')


#: a verdict's colour on the ledger page
VERDICT_COLOUR = {"holds": "#1a7f37", "fails": "#cf222e"}


def _ledger_body(rows: list[dict]) -> str:
    """The ledger page: a row per check, its verdict coloured, the numbers it used, what the seeds say."""
    out = []
    for r in rows:
        colour = VERDICT_COLOUR.get(str(r["verdict"]), "#9a6700")
        out.append(f"<tr><td><code>{_e(r['check'])}</code></td><td>{_e(r['claim'])}</td><td class=num>{_e(r['notebook'])}"
                   f"</td><td style=\"color:{colour};font-weight:bold\">{_e(r['verdict'])}</td>"
                   f"<td class=muted>{_e(r['numbers'])}</td><td class=muted>{_e(r['seeds'])}</td></tr>")
    return ("<p>Each claim as a check over this run's tables and its seed and machine replicates: a case holds when "
            "its 95 % interval lies wholly on the claimed side, fails when wholly on the other, is inconclusive when "
            "it overlaps; a check holds when every case holds. A verdict that differs between replicates is "
            "inconclusive (seed-sensitive). <code>make verify</code> fails when a check recorded as holding no longer "
            "holds.</p><table><tr><th>check</th><th>claim</th><th>notebook</th><th>verdict</th><th>this run: estimate "
            "[95 % interval] per case</th><th>seeds and machines</th></tr>" + "".join(out) + "</table>")


def _usage_table(usage: np.ndarray, names: list[str], ranks: dict[int, int]) -> str:
    total = max(1, int(np.sum(usage)))
    rows = []
    for c in np.argsort(-np.asarray(usage), kind="stable"):
        share = usage[c] / total
        sel = " sel" if c in ranks else ""
        rank = f"concept token, rank {ranks[c]}" if c in ranks else ""
        rows.append(f"<tr><td><a href=\"class_{c}.html\">{_e(names[c])}</a></td><td class=num>{int(usage[c])}</td>"
                    f"<td><span class=\"bar{sel}\" style=\"width:{200 * share:.1f}px\"></span> "
                    f"{100 * share:.1f} %</td><td class=muted>{rank}</td></tr>")
    return ("<table><tr><th>class</th><th>positions (train)</th><th>share</th><th></th></tr>"
            + "".join(rows) + "</table>")


def write_atlas(data: AtlasData, out: str | os.PathLike) -> Path:
    """Write the site under ``out`` (index.html, class_<c>.html, token_<t>.html, img/); returns the
    index path. Existing pages of the same names are replaced; nothing else in ``out`` is touched."""
    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    names, s = list(data.class_names), int(data.scale)
    C, k = np.shape(data.concepts)
    missing = {int(t) for t in np.asarray(data.concepts).ravel() if t >= 0} - set(data.tokens)
    if missing:
        raise ValueError(f"no page data for concept tokens {sorted(missing)[:10]}")

    for t, tok in data.tokens.items():
        (out / "img" / f"token_{t}.png").write_bytes(png(upscale(tok.image, s)))
        ex = [boxed(img, mask, s) for img, mask, _ in tok.examples]
        if ex:
            (out / "img" / f"examples_{t}.png").write_bytes(png(_strip(ex)))
            close = [in_context(img, mask, 2 * s) for img, mask, _ in tok.examples if mask.any()]
            (out / "img" / f"close_{t}.png").write_bytes(png(_strip(close)))
        # the thumbnail: the token in its first image's context (a decoded-alone grid is a flat square)
        first = next(((img, mask) for img, mask, _ in tok.examples if mask.any()), None)
        thumb = in_context(first[0], first[1], s) if first is not None else upscale(tok.image, s)
        (out / "img" / f"thumb_{t}.png").write_bytes(png(thumb))

    back = '<a href="index.html">atlas index</a>'
    # index
    rows = []
    for c in range(C):
        thumbs = "".join(f'<a href="token_{t}.html"><img src="img/thumb_{t}.png" width="{12 * s}" height="{12 * s}" '
                         f'alt="token {t}"><br>{t}</a>' for t in np.asarray(data.concepts)[c][:8] if t >= 0)
        rows.append(f'<tr><td><a href="class_{c}.html">{_e(names[c])}</a></td><td class=thumbs>{thumbs}</td></tr>')
    notes = "".join(f"<li>{_e(n)}</li>" for n in data.notes)
    body = (f"<p>Concept tokens T*_concept of every class ({_e(data.source)}; eq. 6), best first. Click a class for "
            f"its ranked list, a token for its page.</p><ul class=muted>{notes}</ul>"
            "<table><tr><th>class</th><th>its best concept tokens</th></tr>" + "".join(rows) + "</table>")
    if data.ledger:
        body += '<p><a href="ledger.html">The claims ledger</a>: which of the paper\'s claims hold in this run.</p>'
        (out / "ledger.html").write_text(_page(f"Claims ledger · {data.title}", _ledger_body(data.ledger), back),
                                         encoding="utf-8")
    (out / "index.html").write_text(_page(data.title, body), encoding="utf-8")

    # class pages
    ev_heads = "".join(f"<th>ΔP {_e(e)}</th>" for e in data.evaluators)
    for c in range(C):
        rows = []
        for r, (t, n) in enumerate(zip(np.asarray(data.concepts)[c], np.asarray(data.counts)[c]), start=1):
            if t < 0:
                continue
            tok = data.tokens[int(t)]
            dp = "".join(f"<td class=num>{_fmt(tok.delta_p.get(c, {}).get(e, (np.nan, 0))[0])}</td>"
                         for e in data.evaluators)
            rows.append(f'<tr><td class=num>{r}</td><td><a href="token_{t}.html"><img src="img/thumb_{t}.png" '
                        f'width="{12 * s}" height="{12 * s}" alt="token {t}"> {t}</a></td><td class=num>{int(n)}</td>'
                        f"{dp}<td class=num>{_fmt(tok.precision, pct=True)}</td></tr>")
        body = (f"<p>{_e(data.source)}'s concept tokens of <b>{_e(names[c])}</b>, best first; count: occurrences "
                f"at the top-n TSV positions of the class's training images (eq. 6); ΔP: mean change of P(true) "
                f"over the class's gallery images that hold the token when its patches are masked; head "
                f"precision: share of its positions on the head (real toy images).</p>"
                f"<table><tr><th>rank</th><th>token</th><th>count</th>{ev_heads}<th>head precision</th></tr>"
                + "".join(rows) + "</table>")
        (out / f"class_{c}.html").write_text(_page(f"{names[c]}: concept tokens", body, back), encoding="utf-8")

    # token pages
    for t, tok in data.tokens.items():
        ranks = ", ".join(f'<a href="class_{c}.html">{_e(names[c])}</a> (rank {r})' for c, r in sorted(tok.ranks.items()))
        ex = (f'<img src="img/examples_{t}.png" alt="gallery images holding token {t}, its patches boxed">'
              f'<p class=muted>up close: the 3 × 3 patches around its first position in each image</p>'
              f'<img src="img/close_{t}.png" alt="token {t} up close in each image">'
              if tok.examples else "<p class=muted>no gallery image holds it</p>")
        ex_classes = ", ".join(_e(names[c]) for _, _, c in tok.examples)
        dp_rows = "".join(f"<tr><td>{_e(names[c])}</td>"
                          + "".join(f"<td class=num>{_fmt(d.get(e, (np.nan, 0))[0])}</td>" for e in data.evaluators)
                          + f"<td class=num>{max((n for _, n in d.values()), default=0)}</td></tr>"
                          for c, d in sorted(tok.delta_p.items()))
        dp = (f"<h2>When it is masked</h2><p>Mean change of P(true) over the gallery images of each class it is a "
              f"concept token of that hold it, its patches removed (the profile's headline fill).</p><table><tr>"
              f"<th>class</th>{''.join(f'<th>ΔP {_e(e)}</th>' for e in data.evaluators)}<th>images</th></tr>"
              f"{dp_rows}</table>" if tok.delta_p else "")
        part = (f"<h2>Against the ground truth</h2><p>On real toy images encoded to tokens: {tok.count_real} positions; "
                f"<b>{_fmt(tok.precision, pct=True)}</b> of them on the head (precision), holding "
                f"{_fmt(tok.recall, pct=True)} of all head positions (recall).</p>" if tok.precision is not None else "")
        body = (f'<p><img src="img/token_{t}.png" width="{tok.image.shape[1] * s}" height="{tok.image.shape[0] * s}" '
                f'alt="token {t} decoded alone"> <span class=muted>token {t} decoded on its own (every position of the '
                f"grid holds it: its colour and texture, not its role — see it in context below)</span></p><p>Concept token of: {ranks}</p>"
                f"<h2>Where it occurs</h2>{ex}<p class=muted>{ex_classes}</p>"
                f"<h2>Which classes use it</h2>{_usage_table(tok.usage, names, tok.ranks)}"
                f"<h2>Its token saliency values</h2>{_histogram_svg(tok.tsv_token, tok.tsv_all)}"
                f"<p class=muted>red: TSV at its positions ({len(tok.tsv_token)}); grey: all positions (sample of "
                f"{len(tok.tsv_all)}); density</p>{dp}{part}")
        (out / f"token_{t}.html").write_text(_page(f"Token {t}", body, back), encoding="utf-8")
    return out / "index.html"
