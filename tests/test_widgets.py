"""cortex_nb.browser.app (the token browser) driven without a browser: set ``.value`` on the controls,
check ``state()`` against brute-force oracles on hand-crafted data, and check the views are PNGs.
Its data and rankings come from cortex_nb.pipeline.s06_browser (the glue is tested here too).

The data: C = 3 classes, m = 4, K = 20, 8 × 8 images (patch side p = 2).
- every class-1 training image holds id 7 at (1, 2), its top-TSV position under CE;
- class-2 training images are mostly id 5 (the frequency source ranks it first), and no class-2
  gallery image holds id 5;
- gallery images hold id 7 only where planted (``PLANT``), in classes 1 and 0.
"""
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cortex_nb.method.masking import scaled_n
from cortex_nb.method.saliency import class_vs_rest_baseline, concept_tokens, top_n_positions
from cortex_nb.pipeline import s06_browser
from cortex_nb.pipeline.s06_browser import BrowserData
from cortex_nb.browser.app import TokenBrowser

C, M, K, P = 3, 4, 20, 2
N_PER, G_PER = 8, 5
PLANT = {6: [(0, 0), (3, 1)], 8: [(2, 2)], 2: [(1, 1)]}   # gallery index -> positions of id 7 (6, 8: class 1; 2: class 0)
PNG_SIG = b"\x89PNG\r\n\x1a\n"


def make_data(token_image=None) -> BrowserData:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(C), N_PER)                             # (24,)
    tokens = rng.integers(0, K, (len(labels), M, M))
    tsv = {"CE": rng.random((len(labels), M, M)).astype(np.float32),
           "RE": rng.random((len(labels), M, M)).astype(np.float32)}
    one = labels == 1
    tokens[one, 1, 2] = 7
    tsv["CE"][one, 1, 2] = 2.0                                          # above every other TSV (< 1)
    two = np.flatnonzero(labels == 2)
    tokens[two, :3, :3] = 5                                             # 9 of 16 positions
    g_labels = np.repeat(np.arange(C), G_PER)                           # (15,)
    g_tokens = rng.integers(0, K, (len(g_labels), M, M))
    g_tokens[g_tokens == 7] = 8
    g_tokens[(g_labels == 2)[:, None, None] & (g_tokens == 5)] = 6
    for i, pos in PLANT.items():
        for r, c in pos:
            g_tokens[i, r, c] = 7
    g_images = np.stack([np.full((M * P, M * P, 3), 15 * i, np.uint8) for i in range(len(g_labels))])
    g_images[:, ::2, ::2, 2] = 255                                      # some texture (blue: not box-red)
    return BrowserData(
        class_names=["wren", "finch", "tit"], K=K, m=M,
        train_tokens=tokens.astype(np.uint16), train_labels=labels, train_tsv=tsv,
        gallery_tokens=g_tokens.astype(np.uint16), gallery_labels=g_labels, gallery_images=g_images,
        token_image=token_image or (lambda t: np.full((M * P, M * P, 3), 12 * t, np.uint8)))


@pytest.fixture
def data():
    return make_data()


# ---------------------------------------------------------------------- oracles
def oracle_concept(d: BrowserData, source: str, n: int, c: int, k: int) -> list[tuple[int, int]]:
    """(id, count) of class c: ids at each image's top-n TSV positions, counted, by (-count, id)."""
    cnt = Counter()
    for tok, tsv, y in zip(d.train_tokens, d.train_tsv[source], d.train_labels):
        if y != c:
            continue
        flat_t, flat_s = tok.ravel(), tsv.ravel()
        order = sorted(range(M * M), key=lambda j: (-flat_s[j], j))[:n]
        cnt.update(int(flat_t[j]) for j in order)
    return sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def oracle_frequency(d: BrowserData, c: int, k: int) -> list[tuple[int, int]]:
    cnt = Counter(int(t) for tok, y in zip(d.train_tokens, d.train_labels) if y == c for t in tok.ravel())
    return sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def oracle_gallery(d: BrowserData, c: int, t: int) -> dict[int, list[tuple[int, int, int, int]]]:
    """Gallery index -> pixel boxes (x0, y0, w, h) of id t, for the class-c images holding it."""
    out = {}
    for i, (tok, y) in enumerate(zip(d.gallery_tokens, d.gallery_labels)):
        if y == c and (tok == t).any():
            out[i] = [(int(col) * P, int(row) * P, P, P) for row, col in zip(*np.nonzero(tok == t))]
    return out


def decode_png(b) -> np.ndarray:
    b = bytes(b)                                                        # Image.value is a memoryview
    assert b.startswith(PNG_SIG)
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def views(b: TokenBrowser) -> dict[str, bytes]:
    return {v: bytes(getattr(b, v).value) for v in ("ranking_view", "gallery_view", "token_view", "usage_view")}


# ---------------------------------------------------------------------- tests
def test_defaults_are_the_papers_scaled(data):
    b = TokenBrowser(data)
    s = b.state()
    assert (s["n"], s["k"]) == (scaled_n(20, M), scaled_n(100, M)) == (1, 6)
    assert s["source"] == "CE" and s["class"] == "wren" and s["n_enabled"]
    assert b.n_slider.max == M * M and b.k_slider.max == K            # k_max = min(K, 64)
    assert list(b.source_toggle.options) == ["CE", "RE", "frequency", "class-vs-rest"]
    assert s["token"] == s["ranked"][0] and s["error"] is None
    assert b.output.outputs == ()


def test_ce_ranks_the_top_tsv_token_first(data):
    b = TokenBrowser(data, class_name="finch")
    s = b.state()
    assert s["ranked"][0] == 7 and s["freqs"][0] == N_PER and s["token"] == 7
    assert b.token_select.options[0] == ("#1  token 7  (freq 8)", 7)


@pytest.mark.parametrize("source", ["CE", "RE"])
@pytest.mark.parametrize("n", [1, 3, 16])
def test_tsv_ranking_equals_brute_force(data, source, n):
    b = TokenBrowser(data, source=source, n=n, k=8)
    for c in range(C):
        b.class_dropdown.value = c
        s = b.state()
        want = oracle_concept(data, source, n, c, 8)
        assert list(zip(s["ranked"], s["freqs"])) == want
        assert s["token"] == want[0][0]


def test_frequency_ranks_most_common_first_and_ignores_n(data):
    b = TokenBrowser(data, class_name="tit", k=5)
    b.source_toggle.value = "frequency"
    s = b.state()
    assert b.n_slider.disabled and not s["n_enabled"] and s["n_used"] is None
    assert s["ranked"][0] == 5
    assert list(zip(s["ranked"], s["freqs"])) == oracle_frequency(data, 2, 5)
    before = b.ranking_view.value
    b.n_slider.value = 9                                                # ignored
    assert b.state()["ranked"] == s["ranked"] and b.ranking_view.value == before
    b.source_toggle.value = "CE"
    assert not b.n_slider.disabled and b.state()["n_used"] == 9


def test_class_vs_rest_matches_the_saliency_function(data):
    b = TokenBrowser(data, source="class-vs-rest", k=6)
    ids, scores = class_vs_rest_baseline(data.train_tokens, data.train_labels, C, K, 6, return_scores=True)
    for c in range(C):
        b.class_dropdown.value = c
        s = b.state()
        assert s["ranked"] == ids[c].tolist() and np.allclose(s["values"], scores[c].numpy())
        assert s["freqs"] == [int((data.train_tokens[data.train_labels == c] == t).sum()) for t in s["ranked"]]
        assert "score" in b.token_select.options[0][0]


def test_k_slices_one_cached_ranking(data):
    b = TokenBrowser(data, n=4, k=3)
    pos = top_n_positions(torch.from_numpy(data.train_tsv["CE"]), 4)
    cached = dict(b._rankings)
    for k in (1, 7, 12):
        b.k_slider.value = k
        ids = concept_tokens(data.train_tokens, data.train_labels, pos, C, K, k)[0]
        assert b.state()["ranked"] == [t for t in ids.tolist() if t >= 0]
    assert b._rankings == cached                                        # no recomputation for k
    b.class_dropdown.value = 2
    assert b._rankings == cached                                        # nor for the class


def test_gallery_holds_exactly_the_class_images_with_the_token_boxed(data):
    b = TokenBrowser(data, class_name="finch")
    s = b.state()
    assert s["token"] == 7
    want = oracle_gallery(data, 1, 7)
    assert sorted(want) == [6, 8]                                       # not 2: that one is class 0
    assert s["gallery"] == s["gallery_shown"] == [6, 8]
    assert s["boxes"] == want == {6: [(0, 0, 2, 2), (2, 6, 2, 2)], 8: [(4, 4, 2, 2)]}
    assert "token 7 in 2/5 gallery images" in b.status.value


def test_changing_class_changes_the_gallery(data):
    b = TokenBrowser(data, class_name="finch")
    before = views(b)
    b.class_dropdown.value = 0
    s = b.state()
    assert s["class"] == "wren" and s["ranked"] == [t for t, _ in oracle_concept(data, "CE", 1, 0, 6)]
    assert s["boxes"] == oracle_gallery(data, 0, s["token"])
    assert all(data.gallery_labels[i] == 0 for i in s["gallery"])
    after = views(b)
    assert after["gallery_view"] != before["gallery_view"] and after["ranking_view"] != before["ranking_view"]


def test_changing_the_token_changes_the_boxes_and_views(data):
    b = TokenBrowser(data, class_name="finch", n=3, k=10)
    first, before = b.state(), views(b)
    for _, t in b.token_select.options[1:4]:
        b.token_select.value = t
        s = b.state()
        assert s["token"] == t and s["ranked"] == first["ranked"]       # the list stays
        assert s["boxes"] == {i: bx for i, bx in oracle_gallery(data, 1, t).items() if i in s["gallery_shown"]}
        assert s["boxes"] != first["boxes"]
        after = views(b)
        assert all(after[v] != before[v] for v in ("ranking_view", "token_view", "usage_view"))


def test_usage_row_equals_brute_force_count(data):
    b = TokenBrowser(data, class_name="tit", source="frequency")
    for _, t in b.token_select.options[:4]:
        b.token_select.value = t
        want = [int((data.train_tokens[data.train_labels == c] == t).sum()) for c in range(C)]
        assert b.state()["usage"] == want


def test_views_are_valid_pngs_and_snapshot(data):
    b = TokenBrowser(data, class_name="finch")
    for name, png in views(b).items():
        img = decode_png(png)
        assert img.ndim == 3 and img.shape[0] > 20 and img.shape[1] > 20, name
    snap = decode_png(b.snapshot())
    assert snap.shape[1] >= decode_png(b.gallery_view.value).shape[1]
    bundle = b._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("TokenBrowser(class finch · CE · n=1 k=6 · token 7 in 2/5")


def test_gallery_red_boxes_are_drawn(data):
    b = TokenBrowser(data, class_name="finch")
    img = decode_png(b.gallery_view.value).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 20                                               # the three boxes' outlines


def test_message_when_no_gallery_image_holds_the_token(data):
    b = TokenBrowser(data, class_name="tit", source="frequency")
    s = b.state()
    assert s["token"] == 5 and s["gallery"] == [] and s["boxes"] == {}
    assert s["gallery_message"] == "no gallery image of class tit holds token 5"
    decode_png(b.gallery_view.value)
    assert "token 5 in 0/5 gallery images" in b.status.value
    assert b.page_slider.disabled


def test_gallery_pages(data):
    b = TokenBrowser(data, class_name="finch", per_page=1, n=3)
    s = b.state()
    assert s["pages"] == 2 and s["gallery_shown"] == [6] and not b.page_slider.disabled
    first = b.gallery_view.value
    b.page_slider.value = 2
    s = b.state()
    assert s["gallery_shown"] == [8] and s["boxes"] == {8: [(4, 4, 2, 2)]}
    assert b.gallery_view.value != first
    b.token_select.value = b.token_select.options[1][1]                 # a new token: back to page 1
    assert b.state()["page"] == 1


def test_failing_callback_is_reported_in_the_output_widget(data):
    def token_image(t):
        if t == 7:
            raise RuntimeError("decoder exploded on token 7")
        return np.zeros((8, 8, 3), np.uint8)

    b = TokenBrowser(make_data(token_image), class_name="wren", n=3, k=10)
    assert b.output.outputs == () and b.state()["error"] is None
    gallery_before = b.gallery_view.value
    b.class_dropdown.value = 1                                          # selects token 7
    s = b.state()
    assert s["token"] == 7 and "decoder exploded on token 7" in s["error"]
    text = "".join(o["text"] for o in b.output.outputs)
    assert "RuntimeError: decoder exploded on token 7" in text and "Traceback" in text
    assert "error" in b.status.value
    assert b.gallery_view.value != gallery_before and s["gallery"] == [6, 8]   # the other views still render
    decode_png(b.token_view.value)                                      # a message in place of the token
    b.token_select.value = b.token_select.options[1][1]
    assert b.state()["error"] is None and "error" not in b.status.value
    assert len(b.output.outputs) == 1                                   # the log keeps the earlier error


def test_error_in_a_concept_callback_is_reported(data, monkeypatch):
    b = TokenBrowser(data)

    def boom(*a, **kw):
        raise ValueError("ranking failed")
    monkeypatch.setattr(b, "ranking", boom)
    b.k_slider.value = 2
    assert "ranking failed" in b.last_error
    assert "ValueError: ranking failed" in "".join(o["text"] for o in b.output.outputs)


def test_bad_data_and_arguments_raise(data):
    with pytest.raises(ValueError, match="source"):
        TokenBrowser(data, source="XX")
    with pytest.raises(ValueError, match="n must be"):
        TokenBrowser(data, n=17)
    bad = make_data()
    bad.train_tokens[0, 0, 0] = K                                       # outside the codebook
    with pytest.raises(ValueError, match="token ids must lie in"):      # raised, not only logged, at construction
        TokenBrowser(bad)
    data.train_tsv["RE"] = data.train_tsv["RE"][:3]
    with pytest.raises(ValueError, match="train_tsv"):
        TokenBrowser(data)


def test_the_browser_imports_no_pipeline_run():
    """Importing cortex_nb.browser.app loads the browser's data types (cortex_nb.browser.model) but neither the section
    that builds them nor the run (stores, evaluators, caches): browser_data imports those when called."""
    code = "import sys, cortex_nb.browser.app; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout.split())
    assert "cortex_nb.browser.model" in loaded
    assert not {"cortex_nb.pipeline.s06_browser", "cortex_nb.pipeline.run", "cortex_nb.io.store", "cortex_nb.method.evaluators", "cortex_nb.pipeline.keys"} & loaded
    assert callable(s06_browser.browser_data)


def test_browser_data_glue_with_stand_ins(monkeypatch):
    """browser_data wires load_split / get_tsv / class_names / vqgm.decode as documented (stand-ins;
    the real pipeline is tested end to end elsewhere). token_image is decoded once per id."""
    from types import SimpleNamespace

    from cortex_nb.pipeline import run

    d = make_data()
    stores = {"train": SimpleNamespace(tokens=d.train_tokens, labels=d.train_labels, images=None, path="train"),
              "test": SimpleNamespace(tokens=d.gallery_tokens, labels=d.gallery_labels, images=d.gallery_images,
                                      path="test")}
    calls = []

    class FakeVQGM:
        m, K = M, K

        def decode(self, tokens):
            calls.append(tokens.clone())
            return torch.full((1, 3, M * P, M * P), -1.0) + 2.0 * tokens[0, 0, 0] / (K - 1)

    monkeypatch.setattr(run, "load_split", lambda cfg, split, vqgm=None: stores[split])
    monkeypatch.setattr(run, "class_names", lambda cfg: ["wren", "finch", "tit", "extra"])
    monkeypatch.setattr(run, "get_tsv", lambda cfg, arch, f, vqgm, split: d.train_tsv[arch])
    cfg = SimpleNamespace(world=SimpleNamespace(n_classes=C), vqgm=SimpleNamespace(source="taming"))
    bd = s06_browser.browser_data(cfg, FakeVQGM(), {"CE": torch.nn.Identity(), "RE": SimpleNamespace(model=None)})
    assert bd.class_names == ["wren", "finch", "tit"] and (bd.K, bd.m) == (K, M)
    assert bd.search is None                                            # ground truth only in the toy world
    assert list(bd.train_tsv) == ["CE", "RE"] and bd.gallery_images is not None
    img = bd.token_image(19)
    assert img.dtype == np.uint8 and img.shape == (M * P, M * P, 3) and (img == 255).all()
    bd.token_image(19)
    assert len(calls) == 1 and calls[0].shape == (1, M, M) and (calls[0] == 19).all()
    assert TokenBrowser(bd).state()["error"] is None


# ---------------------------------------------------------------------- search by ground truth
def _with_search(d: BrowserData) -> BrowserData:
    """Ground truth for the search panel: 15 'real' images (5 per class) whose id 7 sits on the head at
    (1, 2) and id 3 on the body at (0, 0) in every image; everything else background."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(8, K, (15, M, M))
    parts = np.zeros((15, M, M), np.int64)
    tokens[:, 1, 2], parts[:, 1, 2] = 7, 2                              # head
    tokens[:, 0, 0], parts[:, 0, 0] = 3, 1                              # body
    d.search = {"tokens": tokens, "parts": parts, "labels": np.arange(15) % C, "scenes": np.arange(15) % 4}
    return d


def test_search_lists_the_library_ranking_and_a_click_opens_the_token(data):
    from cortex_nb.method.token_search import search_tokens

    d = _with_search(data)
    b = TokenBrowser(d, source="CE")
    assert b.search_box.layout.display is None and b.state()["search"]["results"] == []
    assert b.search_part.label == "—" and b.search_class.label == "any class" and b.search_scene.label == "any scene"
    assert b.state()["search"]["part"] is None and b.state()["search"]["class_index"] is None
    b.search_part.value = "head"
    expect = search_tokens(d.search["tokens"], d.search["parts"], K, "head", labels=d.search["labels"],
                           scenes=d.search["scenes"], min_count=b.search_min_count, top=b.search_top)
    assert b.state()["search"]["results"] == expect.token.tolist() and expect.token.iloc[0] == 7
    b.search_class.value = 1                                            # the query within class 1 ("finch")
    b.search_rank.value = "count"
    expect = search_tokens(d.search["tokens"], d.search["parts"], K, "head", labels=d.search["labels"], cls=1,
                           rank_by="count", min_count=b.search_min_count, top=b.search_top)
    assert b.state()["search"]["results"] == expect.token.tolist()
    b.search_results.value = 7                                          # the click: class 1, token 7
    st = b.state()
    assert st["class_index"] == 1 and st["token"] == 7 and st["error"] is None
    assert st["gallery"] == sorted(oracle_gallery(d, 1, 7))
    b.search_part.value = "body"
    b.search_class.value = -1                                           # "any class"
    b.search_rank.value = "precision"
    assert b.state()["search"]["results"][0] == 3
    b.search_results.value = 3                     # any class: opened where the gallery holds it most
    st = b.state()
    assert st["class_index"] == b.best_class_for(3) and st["token"] == 3 and st["error"] is None
    counts = [len(oracle_gallery(d, c, 3)) for c in range(C)]
    assert counts[st["class_index"]] == max(counts)
    if 3 not in st["ranked"]:
        assert b.token_select.options[0] == ("search: token 3", 3)
    assert st["usage"] == [int((d.train_tokens[d.train_labels == c] == 3).sum()) for c in range(C)]


def test_no_ground_truth_hides_the_search_panel(data):
    b = TokenBrowser(data)
    assert b.search_box.layout.display == "none" and b.search() is None
    b.search_part.value = "head"
    assert b.state()["search"]["results"] == [] and b.state()["error"] is None
