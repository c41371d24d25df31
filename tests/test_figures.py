"""Figures a reviewer would accept: the layout check finds what it must, the image grid passes it at
every shape the notebooks use, and save_figure refuses (strict) or warns about a defective figure."""
import subprocess
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cortex_nb.io.figures import (MIN_BAND_IN, FigureDefectError, FigureDefectWarning, empty_bands, image_grid,  # noqa: E402
                                  layout_defects, save_figure, set_style)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _style():
    set_style()
    yield
    plt.close("all")


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _old_grid(rows, cols, *, col_title=None):
    """The grid as it was drawn before: matplotlib's default top margin, the suptitle at its default place."""
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
    for ax in axes.flat:
        ax.imshow(_images(1)[0]), ax.set_xticks([]), ax.set_yticks([])
    if col_title:
        for ax in axes[0]:
            ax.set_title(col_title, fontsize=6)
    fig.suptitle("Pairs: each column is a pair; each class is edited toward the other", fontsize=10)
    fig.subplots_adjust(wspace=0.04, hspace=0.04)
    return fig


def test_finds_a_title_printed_over_column_labels():
    found = layout_defects(_old_grid(2, 5, col_title="red-headed finch\n↕\nwhite-crested finch"))
    overlaps = [d for d in found if d.startswith("text overlaps text")]
    assert any("Pairs: each column" in d and "red-headed finch" in d for d in overlaps), overlaps


def test_finds_the_band_between_title_and_a_tall_grid():
    found = layout_defects(_old_grid(10, 7))
    assert any(d.startswith("horizontal empty band") for d in found), found


def test_texts_that_do_not_touch_pass():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title"), ax.set_xlabel("x"), ax.set_ylabel("y")
    assert layout_defects(fig) == []


def test_two_texts_on_one_spot_overlap_and_apart_do_not():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.text(0.5, 0.5, "first label", transform=ax.transAxes)
    ax.text(0.52, 0.5, "second label", transform=ax.transAxes)
    assert any("first label" in d and "second label" in d for d in layout_defects(fig))
    ax.texts[1].set_position((0.52, 0.1))
    assert layout_defects(fig) == []


@pytest.mark.parametrize("rows, cols, title, col_lines", [
    (1, 6, "Reconstructions", 0), (2, 5, "Pairs: each column is a pair; each class is edited toward the other", 3),
    (6, 6, "Red box: the same high-TSV concept token in each image of the row", 0),
    (10, 9, "Token selection (CE) toward the paired class", 2), (10, 7, None, 0), (4, 3, "a\nsecond line", 1)])
def test_the_grid_has_no_defect_at_any_shape(rows, cols, title, col_lines):
    labels = ["\n".join(["class name"] * col_lines)] * cols if col_lines else None
    fig = image_grid(_images(rows * cols), cols, row_labels=[f"row {r}\nlabel" for r in range(rows)], title=title,
                     col_labels=labels, boxes=[[(4, 4, 8, 8)]] * (rows * cols))
    assert layout_defects(fig) == []


def test_empty_bands_on_pixels():
    img = np.ones((100, 50, 3))
    img[:10] = 0.2
    img[20:] = 0.3                 # rows 10..19 blank: 10 % of the height
    assert empty_bands(img, band=0.04) == ["horizontal empty band of 10% of the figure's height (10 of 100 px)"]
    assert empty_bands(img, band=0.2) == []
    img[:, 20:30] = 1.0            # and a blank stripe of columns, 20 % of the width
    assert [d.split(" empty")[0] for d in empty_bands(img, band=0.04)] == ["horizontal", "vertical"]
    assert empty_bands((img * 255).astype(np.uint8), band=0.04) == empty_bands(img, band=0.04)
    edge = np.ones((100, 50, 3))
    edge[30:70] = 0.0              # blank margins at the edges are the saved figure's padding, not a band
    assert empty_bands(edge) == []
    assert len(empty_bands(img, band=0.04, min_px=9)) == 2 and empty_bands(img, band=0.04, min_px=10) == []


def test_save_figure_refuses_a_defect_when_strict_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEX_STRICT_FIGURES", "1")
    with pytest.raises(FigureDefectError, match="figure broken: text overlaps text"):
        save_figure(_old_grid(2, 5, col_title="a\nb\nc"), tmp_path, "broken")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_warns_about_a_defect_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEX_STRICT_FIGURES", "")
    with pytest.warns(FigureDefectWarning, match="horizontal empty band"):
        save_figure(_old_grid(10, 7), tmp_path, "tall", pdf=False)
    assert (tmp_path / "tall.png").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_figure(image_grid(_images(4), 2, title="fine"), tmp_path, "fine", pdf=False)


def _committed_pngs():
    out = subprocess.run(["git", "ls-files", "figures/*.png"], cwd=ROOT, capture_output=True, text=True)
    return sorted(p for p in out.stdout.split() if p) if out.returncode == 0 else []


@pytest.mark.parametrize("path", _committed_pngs() or ["(not a git checkout)"])
def test_no_committed_figure_has_an_empty_band(path):
    if path.startswith("("):
        pytest.skip("figures are listed from git")
    img = mpimg.imread(ROOT / path)
    assert empty_bands(img, min_px=int(MIN_BAND_IN * 150)) == [], path     # saved at 150 dpi (set_style)


def test_rotated_tick_labels_side_by_side_pass_and_on_top_of_each_other_fail():
    fig, ax = plt.subplots(figsize=(5, 3))
    labels = ["CE gradient", "CE gradient x input", "CE integrated gradients", "CE occlusion", "random"]
    ax.bar(range(5), [1, 2, 3, 2, 1])
    ax.set_xticks(range(5), labels, rotation=35, ha="right", fontsize=7)
    assert layout_defects(fig) == []          # their bounding boxes overlap; their letters do not
    ax.set_xticks([0, 0.05, 2, 3, 4], labels, rotation=35, ha="right", fontsize=7)
    assert any("CE gradient" in d and "CE gradient x input" in d for d in layout_defects(fig))


def test_the_paper_dry_banner_sits_above_every_title(tmp_path, monkeypatch):
    """Under paper-dry, save_figure adds a red banner; it used to be drawn at the top inside the figure, over any
    suptitle, which the strict check (make test-slow's paper-dry slice) refuses."""
    from cortex_nb.io import provenance

    monkeypatch.setenv("CORTEX_STRICT_FIGURES", "1")
    monkeypatch.setattr(provenance, "_DRY_RUN", [True])
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax in axes:
        ax.plot([0, 1], [0, 1])
    axes[0].set_title("a title")
    fig.suptitle("A suptitle of the figure", fontsize=10)
    fig.tight_layout()
    save_figure(fig, tmp_path, "dry", pdf=False)
    assert any("PAPER-DRY" in t.get_text() for t in fig.texts)
    save_figure(image_grid(_images(4), 2, title="grid title", col_labels=["a", "b"]), tmp_path, "dry_grid", pdf=False)
