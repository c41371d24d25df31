"""cortex_nb.method.intervene on a tiny untrained VQGM, evaluator and extractor: every edit against the
operation done by hand, the judged numbers against direct forward passes."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cortex_nb.method.extractors import ExtractorConfig, build_extractor
from cortex_nb.io.figures import to_uint8
from cortex_nb.method.intervene import edit_image, edit_toward, judge, swap_tokens
from cortex_nb.method.optimize import select_tokens
from cortex_nb.vqgm.taming_ckpt import save_taming_checkpoint
from cortex_nb.vqgm.taming_config import build_from_config
from cortex_nb.vqgm.taming_shapes import tiny_cin_config
from cortex_nb.toy.evaluators import build_toy_evaluator
from cortex_nb.toy.world import to_tensor


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from cortex_nb.vqgm import load_vqgm

    d = tmp_path_factory.mktemp("tiny-vqgm")
    config = tiny_cin_config(n_classes=3, resolution=16)
    torch.manual_seed(0)
    save_taming_checkpoint(build_from_config(config), d / "model.ckpt", epoch=0, global_step=0)
    OmegaConf.save(config, d / "config.yaml")
    vqgm = load_vqgm(d / "config.yaml", d / "model.ckpt")
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vqgm.K, (2, vqgm.m, vqgm.m), generator=g)
    images = to_uint8(vqgm.decode(tokens))
    torch.manual_seed(2)
    ev = build_toy_evaluator("vit_p8", n_classes=3, image_size=images.shape[1]).eval()
    f = build_extractor(ExtractorConfig(arch="CE", width=8, d=vqgm.d, m=vqgm.m, n_classes=3)).eval()
    return vqgm, tokens, images, {"vit_p8": ev}, f


def _cells(m, *pos):
    c = np.zeros((m, m), bool)
    for i, j in pos:
        c[i, j] = True
    return c


def test_token_edit_sets_exactly_the_cells_and_decodes_the_new_grid(world):
    vqgm, tokens, images, _, _ = world
    m = vqgm.m
    cells = _cells(m, (0, 1), (2, 2))
    new, img = edit_image(vqgm, tokens[0], images[0], cells, "token", token=5)
    expect = tokens[0].clone()
    expect[0, 1] = expect[2, 2] = 5
    assert torch.equal(new, expect)
    np.testing.assert_array_equal(img, to_uint8(vqgm.decode(expect[None]))[0])
    same_t, same_i = edit_image(vqgm, tokens[0], images[0], np.zeros((m, m), bool), "token", token=5)
    assert torch.equal(same_t, tokens[0]) and np.array_equal(same_i, images[0])


def test_black_edit_fills_the_patches_and_re_encodes(world):
    vqgm, tokens, images, _, _ = world
    m = vqgm.m
    p = images.shape[1] // m
    cells = _cells(m, (1, 0))
    new, img = edit_image(vqgm, tokens[0], images[0], cells, "black")
    assert (img[p:2 * p, 0:p] == 0).all()
    outside = np.ones(img.shape[:2], bool)
    outside[p:2 * p, 0:p] = False
    np.testing.assert_array_equal(img[outside], images[0][outside])
    assert torch.equal(new, vqgm.encode(to_tensor(img[None]))[0].cpu().long())


def test_bad_edits_raise(world):
    vqgm, tokens, images, _, _ = world
    with pytest.raises(ValueError, match="token id"):
        edit_image(vqgm, tokens[0], images[0], _cells(vqgm.m, (0, 0)), "token", token=vqgm.K)
    with pytest.raises(ValueError, match="grid"):
        edit_image(vqgm, tokens[0], images[0], np.zeros((3, 3), bool), "black")
    with pytest.raises(ValueError, match="mode"):
        edit_image(vqgm, tokens[0], images[0], _cells(vqgm.m, (0, 0)), "paint")
    with pytest.raises(ValueError, match="new token"):
        swap_tokens(tokens, 1, vqgm.K, vqgm.K)


def test_swap_replaces_one_id_everywhere(world):
    vqgm, tokens, _, _, _ = world
    old = int(tokens[0, 0, 0])
    out = swap_tokens(tokens, old, 3, vqgm.K)
    assert torch.equal(out[tokens == old], torch.full_like(out[tokens == old], 3))
    assert torch.equal(out[tokens != old], tokens[tokens != old])


def test_judge_equals_direct_forward_passes(world):
    vqgm, tokens, images, evs, f = world
    got = judge(evs, f, vqgm.codebook, images, tokens, true=[0, 1], target=2)
    p = evs["vit_p8"].predict_proba(images).double().numpy()
    np.testing.assert_allclose(got["vit_p8"]["p_true"], p[[0, 1], [0, 1]])
    np.testing.assert_allclose(got["vit_p8"]["p_target"], p[:, 2])
    with torch.no_grad():
        q = f(vqgm.embed(tokens)).softmax(1).double().numpy()
    np.testing.assert_allclose(got["extractor"]["p_true"], q[[0, 1], [0, 1]], rtol=1e-6)
    assert got["extractor"]["pred"].tolist() == q.argmax(1).tolist()
    assert np.isnan(judge(evs, None, vqgm.codebook, images, tokens, true=0)["vit_p8"]["p_target"]).all()


def test_edit_toward_is_select_tokens_for_one_image_with_progress(world):
    vqgm, tokens, _, _, f = world
    region = _cells(vqgm.m, (1, 1), (1, 2))
    calls = []
    out = edit_toward(f, vqgm.codebook, tokens[0], region, 2, steps=4, seed=3,
                      progress=lambda i, n: calls.append((i, n)))
    ref = select_tokens(f, tokens[:1], vqgm.codebook, torch.as_tensor(region), 2, steps=4, seed=3)
    assert torch.equal(out, ref.tokens[0].long())
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert torch.equal(out[~torch.as_tensor(region)], tokens[0][~torch.as_tensor(region)])


def test_the_browser_panel_shows_what_the_library_computes(world):
    """The intervention panel of the token browser: cells clicked, a token chosen, apply -> the numbers shown
    (and kept in ``panel.last``) are judge() of edit_image() for the same edit; edit toward runs the
    progress bar to the end and changes only the selected cells."""
    from cortex_nb.browser.intervention import Intervention
    from cortex_nb.pipeline.s06_browser import BrowserData
    from cortex_nb.browser.app import TokenBrowser

    vqgm, tokens, images, evs, f = world
    m, K = vqgm.m, vqgm.K
    rng = np.random.default_rng(0)
    train = rng.integers(0, K, (12, m, m))
    g_tokens = tokens.numpy()
    train[:, 0, 0] = g_tokens[0, 0, 0]                                  # its id is everyone's concept token
    data = BrowserData(class_names=["a", "b", "c"], K=K, m=m, train_tokens=train.astype(np.uint16),
                       train_labels=np.arange(12) % 3, train_tsv={"CE": rng.random((12, m, m)).astype(np.float32)},
                       gallery_tokens=g_tokens.astype(np.uint16), gallery_labels=np.array([0, 0]),
                       gallery_images=images, token_image=lambda t: images[0])
    b = TokenBrowser(data, source="frequency", intervention=Intervention(vqgm, evs, f, steps=3))
    panel = b.intervention_panel
    b.token_select.value = int(g_tokens[0, 0, 0])
    assert [v for _, v in panel.image_select.options] == b.state()["gallery_shown"] and panel.image_select.value == 0
    panel.cells[1][2].value = panel.cells[3][0].value = True
    panel.mode.value, panel.token_id.value, panel.target.value = "token", 7, 2
    panel.apply_button.click()
    assert b.state()["error"] is None
    cells = _cells(m, (1, 2), (3, 0))
    new_t, new_img = edit_image(vqgm, tokens[0], images[0], cells, "token", token=7)
    expect = judge(evs, f, vqgm.codebook, np.stack([images[0], new_img]), torch.stack([tokens[0], new_t]),
                   true=0, target=2)
    last = panel.last
    assert torch.equal(last["tokens"], new_t) and np.array_equal(last["image"], new_img)
    for key in ("vit_p8", "extractor"):
        assert last["before"][key]["p_true"] == pytest.approx(float(expect[key]["p_true"][0]), abs=1e-12)
        assert last["after"][key]["p_target"] == pytest.approx(float(expect[key]["p_target"][1]), abs=1e-12)
        assert f"<b>{expect[key]['p_true'][1]:.3f}</b>" in panel.table.value
    # the table names what its numbers are for, whatever the widgets show by the time the page draws it
    assert "<caption class='cortex-intervene-subject'" in panel.table.value
    assert "image #0 (a), cells (1, 2), (3, 0) · token 7" in panel.table.value
    assert np.array_equal(last["cells"], cells) and last["index"] == 0
    assert bytes(panel.view.value).startswith(b"\x89PNG")
    panel.toward_button.click()
    assert b.state()["error"] is None and panel.progress.value == panel.progress.max == 3
    changed = (panel.last["tokens"] != tokens[0]).numpy()
    assert not changed[~cells].any()
    panel.clear_button.click()
    assert not panel.selected_cells().any()
    # swap: the browser's token -> id 7 in every class-a gallery image holding it; the table shows the means
    old = int(g_tokens[0, 0, 0])
    panel.token_id.value = 7
    panel.swap_button.click()
    assert b.state()["error"] is None
    hits = [i for i in range(len(g_tokens)) if (g_tokens[i] == old).any()]            # both images are class a
    swapped = np.where(g_tokens[hits] == old, 7, g_tokens[hits])                      # numpy, not swap_tokens
    dec = ((vqgm.decode(torch.as_tensor(swapped, dtype=torch.long)).clamp(-1, 1) + 1) * 127.5)
    dec = dec.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expect = judge(evs, f, vqgm.codebook, np.concatenate([images[hits], dec]),
                   torch.cat([tokens[hits], torch.as_tensor(swapped, dtype=torch.long)]), true=0, target=2)
    n = len(hits)
    assert panel.last["images"] == hits
    for key in ("vit_p8", "extractor"):
        assert panel.last["before"][key]["p_true"] == pytest.approx(float(expect[key]["p_true"][:n].mean()), abs=1e-9)
        assert panel.last["after"][key]["p_target"] == pytest.approx(float(expect[key]["p_target"][n:].mean()),
                                                                     abs=1e-9)
