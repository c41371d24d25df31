"""Tables: bootstrap intervals and one writer for CSV + Markdown + LaTeX.

Every mean that a table reports carries a 95 % percentile-bootstrap interval
(:func:`bootstrap_ci`); :func:`write_table` writes ``results/<profile>/tables/<name>.{csv,md,tex}``.

Resampling the right unit: when rows are not independent -- images of one class share that
class's concept set, or one image appears once per noise seed -- :func:`cluster_bootstrap_ci`
resamples whole clusters (classes), and :func:`seed_average` first averages an image's seeds. A
comparison of two methods on the same images is :func:`paired_ci` (the interval of the per-image
difference, optionally by cluster), not two separate intervals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import provenance
from .files import atomic_path, save_text

__all__ = ["bootstrap_ci", "mean_ci", "cluster_bootstrap_ci", "cluster_and_unit_ci", "paired_ci", "seed_average", "fmt_ci", "write_table", "read_table"]


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 stat=np.mean) -> tuple[float, float, float]:
    """(statistic, low, high): the statistic of ``values`` (over axis 0) and its percentile-bootstrap
    (1 - alpha) interval. Resampling is one vectorised index draw (n_boot x N), not a loop."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = stat(values[idx], axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(stat(values)), float(lo), float(hi)


def mean_ci(values, **kw) -> dict:
    """{'mean', 'lo', 'hi'} for a 1-D array (see :func:`bootstrap_ci`)."""
    m, lo, hi = bootstrap_ci(values, **kw)
    return {"mean": m, "lo": lo, "hi": hi}


def cluster_bootstrap_ci(values, clusters, *, n_boot: int = 2000, alpha: float = 0.05,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` (N,) whose rows fall into ``clusters`` (N,) labels: the
    percentile-bootstrap interval that resamples whole clusters with replacement (the mean of a
    resample is the mean of all rows of the drawn clusters). Vectorised: per-cluster sums and
    counts, one (n_boot, C) index draw."""
    values = np.asarray(values, dtype=np.float64)
    _, which = np.unique(np.asarray(clusters), return_inverse=True)   # (N,) cluster index 0..C-1
    if values.size == 0:
        return (float("nan"),) * 3
    sums = np.bincount(which, weights=values)                          # (C,)
    counts = np.bincount(which).astype(np.float64)                     # (C,)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))         # (n_boot, C) drawn clusters
    boots = sums[idx].sum(1) / counts[idx].sum(1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(lo), float(hi)


def cluster_and_unit_ci(values, clusters, *, seed: int = 0) -> dict:
    """{'mean', 'lo', 'hi', 'img_lo', 'img_hi'}: the interval resampling whole ``clusters``
    (:func:`cluster_bootstrap_ci`, the one tables report) and, beside it, the narrower one
    resampling units (:func:`bootstrap_ci`), for a per-unit array ``values`` (N,)."""
    m, lo, hi = cluster_bootstrap_ci(values, clusters, seed=seed)
    _, img_lo, img_hi = bootstrap_ci(values, seed=seed)
    return {"mean": m, "lo": lo, "hi": hi, "img_lo": img_lo, "img_hi": img_hi}


def paired_ci(a, b, clusters=None, **kw) -> dict:
    """{'mean', 'lo', 'hi'} of mean(a - b) for two methods measured on the same units (a[i] and b[i]
    on unit i): the interval of the paired difference, resampling units -- or, with ``clusters``,
    whole clusters (:func:`cluster_bootstrap_ci`)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_ci needs the same units on both sides, got shapes {a.shape} and {b.shape}")
    d = a - b
    m, lo, hi = bootstrap_ci(d, **kw) if clusters is None else cluster_bootstrap_ci(d, clusters, **kw)
    return {"mean": m, "lo": lo, "hi": hi}


def seed_average(values) -> np.ndarray:
    """(S, N) values of N units under S seeds -> (N,): each unit's mean over seeds, so that the
    units, not unit x seed pairs, are what a bootstrap resamples."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"seed_average expects (seeds, units), got shape {values.shape}")
    return values.mean(0)


def fmt_ci(mean: float, lo: float, hi: float, *, pct: bool = False, digits: int = 3) -> str:
    """'0.452 [0.431, 0.470]' or, with pct, '55.6% [53.1, 58.0]'."""
    if pct:
        return f"{100 * mean:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


#: under the paper-dry profile (cortex_nb.io.provenance.dry_run: the profile bound by setup or the command line) every
#: table's caption starts with this
DRY_CAPTION = "PAPER-DRY (random weights at the paper's shapes): these numbers are meaningless."


def write_table(df: pd.DataFrame, directory: str | Path, name: str, *, caption: str = "",
                display: pd.DataFrame | None = None, index: bool = False) -> dict[str, Path]:
    """Write ``df`` as CSV (full precision, machine-readable) and ``display`` (default ``df``,
    formatted strings for people) as Markdown and LaTeX. Returns the three paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    display = df if display is None else display
    if provenance.dry_run():
        caption = f"**{DRY_CAPTION}** " + caption
    paths = {ext: directory / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    with atomic_path(paths["csv"]) as tmp:
        df.to_csv(tmp, index=index)
    # our own Markdown, never pandas' to_markdown: that one needs tabulate and, when a package brings it in (Jupyter
    # Book does), writes another layout, so the same run would give other bytes on another environment
    md = _markdown(display, index)
    save_text(paths["md"], (f"{caption}\n\n" if caption else "") + md + "\n")
    tex = display.to_latex(index=index, escape=True, caption=caption or None, label=f"tab:{name}")
    save_text(paths["tex"], tex)
    for path in paths.values():   # MANIFEST.json's record: hash, notebook cell, session
        provenance.record(path)
    return paths


def read_table(directory: str | Path, name: str) -> pd.DataFrame | None:
    """The CSV :func:`write_table` wrote as ``directory/name.csv``; None when there is none (a run
    that did not produce that table)."""
    p = Path(directory) / f"{name}.csv"
    return pd.read_csv(p) if p.is_file() else None


def _markdown(df: pd.DataFrame, index: bool) -> str:
    cols: Sequence[str] = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    rows = []
    for i, row in df.iterrows():
        cells = ([str(i)] if index else []) + [str(v) for v in row.tolist()]
        rows.append("| " + " | ".join(cells) + " |")
    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    return "\n".join([head, sep, *rows])
