"""The browser's readability pieces (issue #15): the keyboard-friendly list box, PNG views shown at their own
pixel size, pixel-exact image panels, the token's gallery examples and the snapshot that follows the app.
What the browser does with them in JupyterLab (arrow keys, no stretched image) is tests/browser's."""
import io

import numpy as np
import pytest
import traitlets
from PIL import Image

from cortex_nb.io.figures import pixel_panel
from cortex_nb.browser.app import TokenBrowser
from cortex_nb.browser.list_view import ListBox, png_size, show_png

from test_widgets import P, make_data


def decode(b) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(bytes(b))).convert("RGB"))


def test_listbox_keeps_the_select_interface():
    lb = ListBox(options=[["#1 token 7", 7], ("#2 token 3", 3)], description="token")
    assert lb.options == (("#1 token 7", 7), ("#2 token 3", 3)) and lb.value is None
    seen = []
    lb.observe(lambda ch: seen.append(ch["new"]), names="value")
    lb.value = 3
    assert seen == [3]
    with pytest.raises(traitlets.TraitError, match="not one of the options"):
        lb.value = 99
    with pytest.raises(traitlets.TraitError, match="pairs"):
        lb.options = [("no value",)]
    lb.options = [("#1 token 8", 8)]            # the chosen value is gone: nothing chosen
    assert lb.value is None
    lb.add_class("cortex-token-select")
    assert "cortex-token-select" in lb._dom_classes
    # the front end marks its element so that JupyterLab's shortcuts leave the arrow keys to the list
    assert 'sel.setAttribute("data-lm-suppress-shortcuts"' in lb._esm


def test_png_size_and_show_png_fix_the_layout():
    img = np.zeros((13, 29, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="png")
    assert png_size(buf.getvalue()) == (29, 13)
    with pytest.raises(ValueError, match="not PNG"):
        png_size(b"GIF89a" + bytes(30))
    import ipywidgets as W

    view = W.Image(format="png")
    show_png(view, buf.getvalue())
    assert (view.layout.width, view.layout.height) == ("29px", "13px")


def test_pixel_panel_is_pixel_exact():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    out = decode(pixel_panel(img, "", scale=3))
    assert out.shape == (18, 30, 3)
    np.testing.assert_array_equal(out, np.repeat(np.repeat(img, 3, 0), 3, 1))   # no resampling, no blur
    titled = decode(pixel_panel(img, "a title longer than the image", scale=3))
    assert titled.shape[1] >= 6 * len("a title longer than the image")          # widened: the title fits
    band = titled.shape[0] - 18
    np.testing.assert_array_equal(titled[band:, :30], np.repeat(np.repeat(img, 3, 0), 3, 1))


def test_every_view_is_shown_at_its_pixel_size():
    b = TokenBrowser(make_data(), class_name="finch")
    b.source_toggle.value = "frequency"
    b.token_select.value = b.token_select.options[1][1]
    for name in ("ranking_view", "gallery_view", "token_view", "usage_view"):
        view = getattr(b, name)
        h, w = decode(view.value).shape[:2]
        assert (view.layout.width, view.layout.height) == (f"{w}px", f"{h}px"), name


def test_token_examples_are_crops_around_the_token():
    d = make_data()
    b = TokenBrowser(d, class_name="finch")
    crops, where = b.token_examples(7, n=4)
    # planted id 7: gallery 6 and 8 (class finch) first, then 2 (class wren)
    assert where == [6, 8, 2]
    for crop, i in zip(crops, where):
        tok = np.asarray(d.gallery_tokens[i])
        r, c = map(int, np.argwhere(tok == 7)[0])                       # first occurrence, row-major
        assert crop.shape == (3 * P, 3 * P, 3)
        np.testing.assert_array_equal(crop[P:2 * P, P:2 * P], d.gallery_images[i][r * P:(r + 1) * P, c * P:(c + 1) * P])
    # (0, 0) in image 6: the crop's top-left patches are outside the image, white
    assert (crops[0][:P, :, :] == 255).all() and (crops[0][:, :P, :] == 255).all()


def test_the_snapshot_follows_the_app(monkeypatch):
    import IPython.display

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj.data)

    def fake_display(obj, display_id=None):
        assert display_id is True
        shown.append(obj.data)
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    b = TokenBrowser(make_data(), class_name="finch")
    b.show_snapshot()
    first = shown[-1]
    b.class_dropdown.value = 2                                            # another class: every view redrawn
    assert len(shown) >= 2 and shown[-1] == b.snapshot() and shown[-1] != first


def test_shrink_images_is_an_area_average():
    from cortex_nb.browser.views import shrink_images

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 6, 4, 3), dtype=np.uint8)
    out = shrink_images(imgs, 2)
    assert out.shape == (2, 3, 2, 3)
    assert out[1, 2, 1, 0] == round(imgs[1, 4:6, 2:4, 0].astype(float).mean())
    assert shrink_images(imgs, 1) is imgs


def test_a_256_px_gallery_is_shrunk_to_fit_and_its_boxes_follow():
    """ImageNet-sized gallery images (256 px, m = 16): shown area-averaged by 2, the boxes at half scale."""
    from cortex_nb.pipeline.s06_browser import BrowserData

    rng = np.random.default_rng(1)
    m, K, G = 16, 50, 4
    g_tokens = rng.integers(0, K, (G, m, m))
    g_tokens[:, 3, 5] = 7
    d = BrowserData(class_names=["a", "b"], K=K, m=m, train_tokens=rng.integers(0, K, (6, m, m)).astype(np.uint16),
                    train_labels=np.array([0, 0, 0, 1, 1, 1]), train_tsv={"CE": rng.random((6, m, m)).astype(np.float32)},
                    gallery_tokens=g_tokens.astype(np.uint16), gallery_labels=np.array([0, 0, 1, 1]),
                    gallery_images=rng.integers(0, 256, (G, 256, 256, 3), dtype=np.uint8),
                    token_image=lambda t: np.zeros((256, 256, 3), np.uint8))
    b = TokenBrowser(d, class_name="a", source="frequency", k=10)
    b.open_token(7)
    img = decode(b.gallery_view.value)
    assert img.shape[1] < 2 * 256 + 40                                   # two 128 px images, not two 256 px ones
    assert b.state()["error"] is None
