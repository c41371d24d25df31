"""cortex_nb.browser.atlas: the static site from hand-made data — every link and image resolves offline, the
numbers shown are the data's, the boxes outline exactly the masked patches."""
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cortex_nb.browser.atlas import AtlasData, AtlasToken, boxed, in_context, upscale, write_atlas


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src"):
                self.refs.append(v)


def _data():
    rng = np.random.default_rng(0)
    C, m, p = 3, 4, 2
    concepts = np.array([[5, 7, -1], [7, 2, 9], [2, -1, -1]])
    tokens = {}
    for t in (2, 5, 7, 9):
        ranks = {c: int(np.flatnonzero(concepts[c] == t)[0]) + 1 for c in range(C) if t in concepts[c]}
        mask = np.zeros((m, m), bool)
        mask[1, 2] = True
        tokens[t] = AtlasToken(
            token=t, image=rng.integers(0, 255, (m * p, m * p, 3), dtype=np.uint8), ranks=ranks,
            usage=np.array([3, 1, 0]) + t, examples=[(rng.integers(0, 255, (m * p, m * p, 3), dtype=np.uint8), mask, 0)],
            tsv_token=rng.random(20), tsv_all=rng.random(100),
            delta_p={c: {"ResNet18": (-0.25 - t / 100, 4), "ViT-p4": (0.125, 4)} for c in ranks},
            precision=0.5 + t / 100, recall=0.01 * t, count_real=10 * t)
    return AtlasData(title="test atlas", source="CE", class_names=["a<b", "c", "d"], concepts=concepts,
                     counts=np.where(concepts >= 0, 3, 0), tokens=tokens, evaluators=["ResNet18", "ViT-p4"],
                     notes=["a note"], scale=3)


def test_every_page_link_and_image_resolves_and_nothing_is_fetched(tmp_path):
    index = write_atlas(_data(), tmp_path)
    assert index == tmp_path / "index.html"
    pages = sorted(tmp_path.glob("*.html"))
    assert {p.name for p in pages} == {"index.html", "class_0.html", "class_1.html", "class_2.html",
                                       "token_2.html", "token_5.html", "token_7.html", "token_9.html"}
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "http:" not in text and "https:" not in text and "<script" not in text      # offline, no kernel
        parser = _Links()
        parser.feed(text)
        for ref in parser.refs:
            assert (page.parent / ref).is_file(), (page.name, ref)
    assert "a&lt;b" in (tmp_path / "index.html").read_text()                             # names are escaped


def test_pages_show_the_datas_numbers(tmp_path):
    data = _data()
    write_atlas(data, tmp_path)
    t7 = (tmp_path / "token_7.html").read_text()
    # token 7: concept token of class 0 (rank 2) and class 1 (rank 1); ΔP −0.32 on ResNet18 in both
    assert "(rank 2)" in t7 and "(rank 1)" in t7
    assert t7.count("-0.320") == 2 and t7.count("+0.125") == 2
    assert "<b>57.0 %</b>" in t7 and "holding 7.0 % of all head positions" in t7 and "70 positions" in t7
    c1 = (tmp_path / "class_1.html").read_text()
    rows = re.findall(r'href="token_(\d+)\.html"', c1)
    assert rows == ["7", "2", "9"]                                                      # best first
    with pytest.raises(ValueError, match="no page data"):
        write_atlas(AtlasData(**{**data.__dict__, "tokens": {t: v for t, v in data.tokens.items() if t != 9}}),
                    tmp_path / "again")


def test_the_ledger_page_shows_every_check_and_is_linked_from_the_index(tmp_path):
    rows = [{"check": "fig3_CE", "claim": "Fig. 3 <CE>", "notebook": "03", "verdict": "holds",
             "numbers": "ResNet18: -0.236 [-0.267, -0.206]", "seeds": "same in all 4"},
            {"check": "ce_re", "claim": "CE ≈ RE", "notebook": "04", "verdict": "inconclusive (seed-sensitive)",
             "numbers": "ResNet18: -0.045", "seeds": "differ: holds in r0; inconclusive in r1"}]
    write_atlas(AtlasData(**{**_data().__dict__, "ledger": rows}), tmp_path)
    assert 'href="ledger.html"' in (tmp_path / "index.html").read_text()
    page = (tmp_path / "ledger.html").read_text()
    assert re.findall(r"<code>(\w+)</code>", page) == ["fig3_CE", "ce_re"]
    assert "Fig. 3 &lt;CE&gt;" in page and "-0.236 [-0.267, -0.206]" in page
    assert 'color:#1a7f37;font-weight:bold">holds<' in page and "differ: holds in r0; inconclusive in r1" in page
    assert not (tmp_path / "again").exists()
    write_atlas(_data(), tmp_path / "again")                                          # no ledger: no page
    assert not (tmp_path / "again" / "ledger.html").exists()


def _ring(n, y, x, size):
    r = np.zeros((n, n), bool)
    r[y, x:x + size] = r[y + size - 1, x:x + size] = r[y:y + size, x] = r[y:y + size, x + size - 1] = True
    return r


def test_boxed_outlines_exactly_the_masked_patches():
    img = np.full((8, 8, 3), 100, np.uint8)                             # m = 4, p = 2
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[2, 3] = True
    out = boxed(img, mask, 3)                                           # 24 x 24, patches of 6 px
    black, white = (out == 0).all(-1), (out == 255).all(-1)
    assert np.array_equal(black, _ring(24, 0, 0, 6) | _ring(24, 12, 18, 6))
    assert np.array_equal(white, _ring(24, 1, 1, 4) | _ring(24, 13, 19, 4))
    assert (out[~(black | white)] == 100).all()                         # everything else untouched
    assert np.array_equal(upscale(img, 3), np.full((24, 24, 3), 100, np.uint8))
    assert out.shape == (24, 24, 3) and (img == 100).all()              # the input is not modified


def test_in_context_crops_the_neighbourhood_and_pads_outside_the_image():
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)         # m = 4, p = 2
    mask = np.zeros((4, 4), bool)
    mask[0, 3] = True                                                   # a corner: 5 of 9 patches outside
    out = in_context(img, mask, 1)
    assert out.shape == (6, 6, 3)
    assert (out[:2] == 255).all() and (out[:, 4:] == 255).all()         # above and right: outside, white
    centre = out[2:4, 2:4].copy()
    assert (centre[0] == 0).all() and (centre[:, 0] == 0).all()         # the outline's outer (black) line
    np.testing.assert_array_equal(out[2:6, 0:2], img[0:4, 4:6])         # the patches left of it, as they are
