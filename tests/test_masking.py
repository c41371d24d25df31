"""cortex_nb.method.masking: exactly the chosen patches change, into exactly the chosen fill; position
choices against brute-force Python sets; the scaled sizes written out."""
import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur

from cortex_nb.method.masking import (
    evaluate_masked, image_level_grid, mask_images, mask_random, mask_token_set, mask_top_n,
    position_mask_to_pixels, scaled_n,
)

B, M, P = 3, 4, 5          # 3 images, 4x4 token grid, 5x5-pixel patches -> 20x20 images
H = M * P


def float_images():
    return torch.rand(B, 3, H, H) * 2 - 1                              # [-1, 1], (B, 3, H, W)


def uint8_images():
    return torch.randint(0, 256, (B, H, H, 3), dtype=torch.uint8)      # (B, H, W, 3)


def random_mask(n=5):
    return mask_random(B, M, n, torch.Generator().manual_seed(3))


def test_position_mask_to_pixels_is_kron_with_patch():
    mask = random_mask()
    px = position_mask_to_pixels(mask, H)
    assert px.shape == (B, 1, H, H) and px.dtype == torch.bool
    for b in range(B):
        assert torch.equal(px[b, 0], torch.kron(mask[b].int(), torch.ones(P, P, dtype=torch.int)).bool())
    with pytest.raises(ValueError, match="multiple"):
        position_mask_to_pixels(mask, H + 1)


def expected_fill(img_chw_float, fill):
    """Independent fill per image (B, 3, H, W) float: constant, own mean, or blurred copy."""
    if fill == "black":
        return torch.full_like(img_chw_float, -1.0)
    if fill == "mean":
        return img_chw_float.mean((2, 3), keepdim=True).expand_as(img_chw_float)
    return gaussian_blur(img_chw_float, [2 * P + 1] * 2, [P / 2] * 2)


@pytest.mark.parametrize("fill", ["black", "mean", "blur"])
@pytest.mark.parametrize("kind", ["float", "uint8", "numpy_uint8"])
def test_mask_images_changes_exactly_the_masked_patches(fill, kind):
    images = float_images() if kind == "float" else uint8_images()
    if kind == "numpy_uint8":
        images = images.numpy()
    before = images.copy() if kind == "numpy_uint8" else images.clone()
    mask = random_mask()
    out = mask_images(images, mask, fill)

    assert type(out) is type(images) and out.dtype == images.dtype and out.shape == images.shape
    assert (before == images).all()                                    # input untouched
    x = torch.as_tensor(images)
    y = torch.as_tensor(out)
    if kind != "float":                                                # work in (B, 3, H, W) float
        x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
    px = torch.kron(mask.int(), torch.ones(P, P, dtype=torch.int)).bool()[:, None].expand(-1, 3, -1, -1)
    assert torch.equal(y[~px], x[~px])                                 # bit-identical outside
    if kind == "float":
        want = expected_fill(x, fill)
        torch.testing.assert_close(y[px], want[px])
    else:
        # 0..255 -> [-1, 1] is affine, so fills commute with it; compare in uint8 after rounding
        want = expected_fill(x.double() / 127.5 - 1, fill)
        want = ((want + 1) * 127.5).round().clamp(0, 255)
        assert (y[px].double() - want[px]).abs().max() <= 1          # float32 blur vs float64
        if fill == "black":
            assert (y[px] == 0).all()


def test_mask_images_fill_values_on_a_hand_case():
    img = torch.zeros(1, 3, 4, 4)
    img[0, 0] = torch.arange(16.0).view(4, 4) / 16                     # red ramp, mean 15/32
    mask = torch.tensor([[[True, False], [False, False]]])             # top-left 2x2 patch
    black = mask_images(img, mask, "black")
    assert (black[0, :, :2, :2] == -1).all() and torch.equal(black[0, :, 2:, :], img[0, :, 2:, :])
    mean = mask_images(img, mask, "mean")
    assert torch.allclose(mean[0, 0, :2, :2], torch.tensor(15 / 32)) and (mean[0, 1:, :2, :2] == 0).all()
    u8 = torch.full((1, 4, 4, 3), 200, dtype=torch.uint8)
    assert (mask_images(u8, mask, "black")[0, :2, :2] == 0).all()
    assert (mask_images(u8, mask, "mean") == 200).all()               # own mean of a flat image


def test_mask_top_n_equal_area_and_token_ids():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 6, (B, M, M), generator=g)               # few ids: repeats are common
    tsv = torch.rand(B, M, M, generator=g)
    for n in (1, 3, 7):
        eq = mask_top_n(tokens, tsv, n)
        assert eq.shape == (B, M, M) and (eq.flatten(1).sum(1) == n).all()
        ids = mask_top_n(tokens, tsv, n, mode="token_ids")
        assert (ids | eq).equal(ids)                                    # a superset
        for b in range(B):
            flat_t, flat_v = tokens[b].flatten().tolist(), tsv[b].flatten().tolist()
            top = sorted(range(M * M), key=lambda p: -flat_v[p])[:n]
            assert set(torch.nonzero(eq[b].flatten()).flatten().tolist()) == set(top)
            chosen = {flat_t[p] for p in top}
            want = {p for p in range(M * M) if flat_t[p] in chosen}
            assert set(torch.nonzero(ids[b].flatten()).flatten().tolist()) == want
    assert (mask_top_n(tokens, tsv, 7, "token_ids").flatten(1).sum(1) > 7).any()   # can exceed n


def test_mask_random_exactly_n_and_reproducible():
    for n in (0, 1, 5, M * M):
        r = mask_random(50, M, n, torch.Generator().manual_seed(0))
        assert (r.flatten(1).sum(1) == n).all()
    a = mask_random(50, M, 5, torch.Generator().manual_seed(0))
    assert torch.equal(a, mask_random(50, M, 5, torch.Generator().manual_seed(0)))
    assert len({tuple(x.flatten().tolist()) for x in a}) > 40           # images get different positions
    with pytest.raises(ValueError):
        mask_random(2, M, M * M + 1)


def test_mask_token_set_equals_python_sets():
    g = torch.Generator().manual_seed(2)
    K, n_classes = 10, 3
    tokens = torch.randint(0, K, (8, M, M), generator=g)
    labels = torch.randint(0, n_classes, (8,), generator=g)
    concept = torch.tensor([[3, 7, -1, -1], [0, 1, 2, 9], [-1, -1, -1, -1]])
    got = mask_token_set(tokens, labels, concept, K=K)
    sets = [set(row) - {-1} for row in concept.tolist()]
    for b in range(8):
        want = [[int(tokens[b, i, j]) in sets[int(labels[b])] for j in range(M)] for i in range(M)]
        assert got[b].tolist() == want
    assert torch.equal(got, mask_token_set(tokens.numpy(), labels.numpy(), concept))   # K inferred
    assert not mask_token_set(tokens, torch.full((8,), 2), concept).any()               # all padding
    with pytest.raises(ValueError, match="token ids"):
        mask_token_set(tokens, labels, concept, K=5)


def test_scaled_n_and_image_level_grid_written_out():
    assert [scaled_n(n, 16) for n in range(5, 55, 5)] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    # m = 8: n/4 = 1.25, 2.5, 3.75, 5, 6.25, 7.5, 8.75, 10, 11.25, 12.5 -> halves round up
    assert [scaled_n(n, 8) for n in range(5, 55, 5)] == [1, 3, 4, 5, 6, 8, 9, 10, 11, 13]
    assert image_level_grid(8) == [1, 3, 4, 5, 6, 8, 9, 10, 11, 13]
    # m = 4: n/16 = 0.31, 0.63, 0.94, 1.25, 1.56, 1.88, 2.19, 2.5, 2.81, 3.13 -> at least 1
    assert image_level_grid(4) == [1, 2, 3]
    assert image_level_grid(16) == list(range(5, 55, 5))
    assert scaled_n(20, 8) == 5 and scaled_n(100, 8) == 25 and scaled_n(1, 2) == 1


def test_evaluate_masked_batched_equals_direct():
    """Batches of 1, 2 and 64 images against one direct pass. The batch size changes only the
    summation order of the classifier (a matrix-vector product for one image, a GEMM for
    several): each logit z_j sums n = 3 H W products with |pixel| <= 1, so two orders differ by
    at most n u sum_i |W_ij|, and p_true = softmax(z)_y by at most twice that, relative. In
    float32 (u = 6e-8) that is 0.14, and MKL's kernels do differ by 3e-5; so the classifier runs
    in float64 (u = 1.1e-16), where the bound is 2.6e-10 and a masking mistake stays visible."""
    images = float_images()
    labels = torch.tensor([0, 1, 2])
    masks = random_mask(n=6)
    W = torch.randn(3 * H * H, 3, dtype=torch.float64)

    def predict_proba(x):                                              # any images -> (b, 3) probabilities
        return torch.softmax(x.double().flatten(1) @ W, dim=1)

    u = torch.finfo(torch.float64).eps / 2
    rtol = 2 * W.shape[0] * u * float(W.abs().sum(0).max())           # 2.6e-10 (softmax's own ~u: far below)
    p = predict_proba(mask_images(images, masks, "black"))
    for bs in (1, 2, 64):
        res = evaluate_masked(predict_proba, images, labels, masks, batch_size=bs)
        np.testing.assert_allclose(res["p_true"], p[torch.arange(3), labels].numpy(), rtol=rtol)
        assert res["correct"].tolist() == (p.argmax(1) == labels).tolist()
        assert res["n_masked"].tolist() == [6, 6, 6]
    none = evaluate_masked(predict_proba, images, labels, torch.zeros(B, M, M, dtype=torch.bool), 2)
    np.testing.assert_allclose(none["p_true"], predict_proba(images)[torch.arange(3), labels].numpy(), rtol=rtol)
    # numpy uint8 images and numpy probabilities work the same way
    u8 = uint8_images().numpy()
    res = evaluate_masked(lambda x: np.full((len(x), 3), 1 / 3), u8, labels.numpy(), masks, batch_size=2)
    np.testing.assert_allclose(res["p_true"], 1 / 3)


def test_infill_tokens_replaces_exactly_the_masked_ids():
    from cortex_nb.method.masking import infill_tokens

    tokens = np.array([[[5, 6], [7, 8]], [[1, 2], [3, 4]]], dtype=np.uint16)   # a token store's dtype
    mask = torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]])
    one = infill_tokens(tokens, mask, 0)
    assert one.tolist() == [[[0, 6], [7, 0]], [[1, 2], [0, 4]]] and one.dtype == torch.int64
    per_image = infill_tokens(tokens, mask, torch.tensor([9, 11]), K=12)      # one fill id per image
    assert per_image.tolist() == [[[9, 6], [7, 9]], [[1, 2], [11, 4]]]
    assert tokens.tolist() == [[[5, 6], [7, 8]], [[1, 2], [3, 4]]]            # input untouched
    with pytest.raises(ValueError, match=r"in \[0, K = 12\)"):
        infill_tokens(tokens, mask, 12, K=12)
    with pytest.raises(ValueError, match="one per image"):
        infill_tokens(tokens, mask, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="token grid's shape"):
        infill_tokens(tokens, mask[:, :1], 0)


def test_background_tokens_is_the_most_common_unmasked_id_by_hand():
    from cortex_nb.method.masking import background_tokens

    tokens = torch.tensor([[[3, 3, 7], [7, 7, 1], [3, 3, 2]],      # 7 x3 but two 7s masked -> 3 (x4) wins
                           [[5, 5, 5], [6, 6, 6], [6, 0, 0]],      # unmasked: 5 x3, 6 x1 ... see mask
                           [[4, 4, 4], [4, 4, 4], [4, 4, 4]]])     # everything masked: its own most common id
    mask = torch.zeros(3, 3, 3, dtype=torch.bool)
    mask[0, 1, 0] = mask[0, 1, 1] = True
    mask[1, 1] = True                                               # hides three of image 1's four 6s
    mask[1, 2, 0] = True
    mask[2] = True
    assert background_tokens(tokens, mask).tolist() == [3, 5, 4]
    tie = torch.tensor([[[9, 2], [2, 9]]])                          # a tie: the smaller id
    assert background_tokens(tie, torch.zeros(1, 2, 2, dtype=torch.bool)).tolist() == [2]


def test_token_fill_decodes_the_infilled_grid():
    """masked_images' token fill = decode(tokens with masked ids replaced by each image's background
    id); images with nothing masked are returned untouched (not re-decoded)."""
    from cortex_nb.pipeline.s04_concept_level import masked_images

    class Decoder:  # decodes id t of a 2 x 2 grid to a 4 x 4 image of grey value t (per patch)
        device = torch.device("cpu")

        def decode(self, t):
            x = t.float().repeat_interleave(2, 1).repeat_interleave(2, 2) / 10 - 1    # (B, 4, 4) in [-1, 1]
            return x[:, None].expand(-1, 3, -1, -1)

    tokens = torch.tensor([[[1, 2], [2, 3]], [[4, 4], [5, 6]]])
    images = np.full((2, 4, 4, 3), 77, dtype=np.uint8)
    mask = torch.tensor([[[True, False], [False, False]], [[False, False], [False, False]]])
    out = masked_images(images, mask, "token", tokens, Decoder())
    want = Decoder().decode(torch.tensor([[[2, 2], [2, 3]]]))                       # id 1 -> background id 2
    from cortex_nb.io.figures import to_uint8
    np.testing.assert_array_equal(out[0], to_uint8(want)[0])
    np.testing.assert_array_equal(out[1], images[1])                                # nothing masked: untouched
    np.testing.assert_array_equal(images, 77)                                       # input not modified
    with pytest.raises(ValueError, match="token fill needs"):
        masked_images(images, mask, "token")


class _Counting:
    """An evaluator stand-in: P(class c) from the mean grey value of the image; counts images shown."""

    def __init__(self):
        self.shown = 0

    def predict_proba(self, x):
        x = torch.as_tensor(np.asarray(x)).float()
        self.shown += len(x)
        g = x.mean((1, 2, 3)) / 255                                          # (B,) in [0, 1]
        logits = torch.stack([g * 4, 1 - g, torch.full_like(g, 0.3)], 1)
        return logits.softmax(1)


def test_score_masked_with_base_shows_only_the_changed_images_and_equals_scoring_all(monkeypatch):
    """score_masked(..., base=unmasked result): images the mask leaves untouched take the unmasked
    result without being shown again; every image's result equals scoring them all."""
    from omegaconf import OmegaConf

    from cortex_nb.pipeline.s04_concept_level import score_masked

    cfg = OmegaConf.create({"saliency": {"fill": "mean"}})
    images = uint8_images().numpy()
    labels = np.array([0, 1, 2])
    masks = torch.zeros(B, M, M, dtype=torch.bool)
    masks[1, 0, :2] = True                                                 # only image 1 changes
    ev = _Counting()
    full = score_masked(cfg, {"e": ev}, images, labels, masks, batch_size=2)
    base = score_masked(cfg, {"e": ev}, images, labels, torch.zeros_like(masks), batch_size=2)
    ev.shown = 0
    fast = score_masked(cfg, {"e": ev}, images, labels, masks, batch_size=2, base=base)
    assert ev.shown == 1                                                   # only the masked image
    for k in ("p_true", "correct", "pred", "n_masked"):
        np.testing.assert_array_equal(fast["e"][k], full["e"][k])
    np.testing.assert_array_equal(fast["e"]["n_masked"], [0, 2, 0])
    assert fast["e"]["p_true"][1] != base["e"]["p_true"][1]               # the masked one did change
    nothing = score_masked(cfg, {"e": ev}, images, labels, torch.zeros_like(masks), base=base)
    np.testing.assert_array_equal(nothing["e"]["p_true"], base["e"]["p_true"])


def test_fill_levels_keep_the_grid_ns_asked_for():
    from omegaconf import OmegaConf

    from cortex_nb.io.config import ProfileError
    from cortex_nb.pipeline.s03_image_level import fill_levels

    def cfg(keep):
        return OmegaConf.create({"saliency": {"fills_n": keep}})

    assert fill_levels(cfg(None), 8) == image_level_grid(8) == [1, 3, 4, 5, 6, 8, 9, 10, 11, 13]
    assert fill_levels(cfg([13, 1, 5, 2]), 8) == [1, 5, 13]                # 2 is not on the m = 8 grid
    assert fill_levels(cfg([5, 50]), 16) == [5, 50]
    with pytest.raises(ProfileError, match="no n on Fig. 3's grid"):
        fill_levels(cfg([2, 7]), 8)


class _GreyDecoder:
    """2 x 2 grid of ids -> 4 x 4 image, a grey value per patch; counts the images it decodes."""
    device = torch.device("cpu")

    def __init__(self):
        self.decoded = 0

    def decode(self, t):
        self.decoded += len(t)
        x = t.float().repeat_interleave(2, 1).repeat_interleave(2, 2) / 10 - 1
        return x[:, None].expand(-1, 3, -1, -1)


class _ScaledEv(_Counting):
    """_Counting on images in [-1, 1] (what a VQGM decodes), as on uint8 pixels."""

    def predict_proba(self, x):
        return super().predict_proba((torch.as_tensor(x) + 1) * 127.5)


def test_edit_scoring_shows_only_the_images_an_edit_changed():
    """s05's _probs with the unedited tokens and their probabilities: an image whose tokens the edit
    left alone keeps its unedited P (ΔP exactly 0) and is neither decoded nor shown; the edited ones
    get what scoring every image gives."""
    from cortex_nb.pipeline.s05_editing import _probs

    original = torch.tensor([[[1, 2], [2, 3]], [[4, 4], [5, 6]], [[7, 7], [7, 7]]])
    edited = original.clone()
    edited[1, 0, 0] = 9                                                     # only image 1 is edited
    src, tgt = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    ev, dec = _ScaledEv(), _GreyDecoder()
    full = _probs({"e": ev}, dec, edited, src, tgt)
    unedited = _probs({"e": ev}, dec, original, src, tgt)
    before = {"e": (unedited["e"][0], unedited["e"][1], None)}
    ev.shown, dec.decoded = 0, 0
    fast = _probs({"e": ev}, dec, edited, src, tgt, original, before)
    assert ev.shown == 1 and dec.decoded == 1
    np.testing.assert_array_equal(fast["e"][0], full["e"][0])
    np.testing.assert_array_equal(fast["e"][1], full["e"][1])
    assert fast["e"][0][1] != before["e"][0][1]
    np.testing.assert_array_equal(fast["e"][0][[0, 2]], before["e"][0][[0, 2]])


def test_checkpoints_are_scored_against_the_one_before_and_equal_scoring_each_alone():
    """s05's score_checkpoints: the probabilities of every checkpoint equal scoring that checkpoint's images
    from scratch, and an image is decoded again only at the checkpoints where its tokens changed."""
    from cortex_nb.pipeline.s05_editing import _probs, score_checkpoints

    g = torch.Generator().manual_seed(0)
    original = torch.randint(0, 10, (6, 2, 2), generator=g)
    cks, t = [], original.clone()
    changes = [[0, 1], [], [1], [4, 5], []]                 # which images each step changes
    for step in changes:
        t = t.clone()
        for i in step:
            t[i, 0, 0] = (t[i, 0, 0] + 3) % 10
        cks.append(t)
    src, tgt = torch.arange(6) % 3, (torch.arange(6) + 1) % 3
    ev, dec = _ScaledEv(), _GreyDecoder()
    unedited = _probs({"e": ev}, dec, original, src, tgt)
    before = {"e": (unedited["e"][0], unedited["e"][1], None)}
    dec.decoded = 0
    chained = score_checkpoints({"e": ev}, dec, torch.stack(cks), src, tgt, original, before)
    assert dec.decoded == sum(len(c) for c in changes)
    for c, got in zip(cks, chained):
        alone = _probs({"e": ev}, _GreyDecoder(), c, src, tgt)
        np.testing.assert_array_equal(got["e"][0], alone["e"][0])
        np.testing.assert_array_equal(got["e"][1], alone["e"][1])
