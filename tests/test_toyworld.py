"""Tests for cortex_nb.toy.world: checked against the rendered pixels and masks, not internals."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from cortex_nb.toy import world as tw
from cortex_nb.toy.world import BACKGROUND, BODY, HEAD, HEAD_PAIRS


@pytest.fixture(scope="module")
def big():
    """2000 balanced images in one call (shared by several tests)."""
    return tw.sample(2000, seed=11)


def _bbox_width(m):
    """Per-image width and height (px) of the bounding box of the boolean masks m (B,H,W)."""
    cols, rows = m.any(1), m.any(2)
    w = np.where(cols.any(1), m.shape[2] - cols[:, ::-1].argmax(1) - cols.argmax(1), 0)
    h = np.where(rows.any(1), m.shape[1] - rows[:, ::-1].argmax(1) - rows.argmax(1), 0)
    return w, h


def _dilate(m):
    """3x3 binary dilation of (B,H,W) boolean masks."""
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    H, W = m.shape[1:]
    return np.any([p[:, i:i + H, j:j + W] for i in range(3) for j in range(3)], axis=0)


def test_constants():
    assert (BACKGROUND, BODY, HEAD) == (0, 1, 2)
    assert tw.SCENES == ["sky", "foliage", "water", "ground"]
    assert tw.HEAD_PAIRS == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert len(tw.SPECIES) == 10 and len(set(tw.SPECIES)) == 10
    assert all(isinstance(s, str) and 0 < len(s) <= 30 for s in tw.SPECIES)


def test_shapes_and_dtypes():
    b = tw.render([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9], seed=0)
    assert b.images.shape == (11, 32, 32, 3) and b.images.dtype == np.uint8
    assert b.masks.shape == (11, 32, 32) and b.masks.dtype == np.uint8
    assert b.labels.dtype == np.int64 and b.scenes.dtype == np.int64
    assert b.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    assert set(np.unique(b.masks)) <= {0, 1, 2}
    assert b.scenes.min() >= 0 and b.scenes.max() <= 3
    with pytest.raises(ValueError):
        tw.render([10], seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.images = None


def test_determinism():
    a, b = tw.render([3, 1, 4, 1, 5], seed=7), tw.render(np.array([3, 1, 4, 1, 5]), seed=7)
    for f in ("images", "masks", "labels", "scenes"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = tw.render([3, 1, 4, 1, 5], seed=8)
    assert not np.array_equal(a.images, c.images)
    s1, s2 = tw.sample(50, seed=3), tw.sample(50, seed=3)
    np.testing.assert_array_equal(s1.images, s2.images)
    np.testing.assert_array_equal(s1.labels, s2.labels)
    assert not np.array_equal(s1.labels, tw.sample(50, seed=4).labels)


def test_output_does_not_depend_on_internal_chunking(monkeypatch):
    a = tw.render(np.arange(40) % 10, seed=5)
    monkeypatch.setattr(tw, "_CHUNK", 7)
    b = tw.render(np.arange(40) % 10, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_images_vary_within_species():
    b = tw.render([2] * 20, seed=1)
    flat = b.images.reshape(20, -1).astype(int)
    assert len({r.tobytes() for r in b.images}) == 20
    assert np.abs(flat - flat.mean(0)).mean() > 10  # pose and background really vary


def test_masks_head_present_big_and_bird_in_frame(big):
    head, body = big.masks == HEAD, big.masks == BODY
    assert head.any((1, 2)).all() and body.any((1, 2)).all()
    w, h = _bbox_width(head)
    assert (w >= 8).mean() >= 0.95 and (h >= 8).mean() >= 0.95
    assert np.median(head.sum((1, 2))) >= 60  # ~ a 9-px disk or larger
    # the whole bird stays inside the frame: nothing but background on the border
    m = big.masks
    assert (m[:, 0] == 0).all() and (m[:, -1] == 0).all()
    assert (m[:, :, 0] == 0).all() and (m[:, :, -1] == 0).all()
    # the bird covers a sensible fraction of the image
    frac = (m > 0).mean((1, 2))
    assert 0.12 < frac.min() and frac.max() < 0.6


def test_masks_cover_exactly_the_bird():
    """Pairs (2,3) and (8,9) share a preferred scene, so with one seed every random draw
    (scene, background, pose, jitter) is shared: the images must agree bit for bit away from
    both birds' masks, and differ inside both birds."""
    assert tw.PREFERRED_SCENE[2] == tw.PREFERRED_SCENE[8]
    a, b = tw.render([2] * 150, seed=9), tw.render([8] * 150, seed=9)
    np.testing.assert_array_equal(a.scenes, b.scenes)
    bird = (a.masks > 0) | (b.masks > 0)
    far = ~_dilate(_dilate(bird))
    np.testing.assert_array_equal(a.images[far], b.images[far])
    diff = np.abs(a.images.astype(int) - b.images.astype(int)).sum(-1)
    # anti-aliased rims: all but a trace of the difference lies within 1 px of the masks
    assert diff[bird].sum() > 0.95 * diff.sum()
    assert diff[~_dilate(bird)].sum() < 1e-3 * diff.sum()
    assert diff[(a.masks == BODY) & (b.masks == BODY)].mean() > 60
    assert diff[(a.masks == HEAD) & (b.masks == HEAD)].mean() > 60


@pytest.mark.parametrize("pair", HEAD_PAIRS)
def test_pair_members_differ_only_in_the_head(pair):
    """Same seed, label swapped within a pair: every random draw is shared, so pixels away from
    both heads must be bit-identical (2-px margin for anti-aliased rims; nearly all of the
    difference lies within 1 px of the head masks) and the head pixels must differ strongly."""
    n = 120
    a = tw.render([pair[0]] * n, seed=21)
    b = tw.render([pair[1]] * n, seed=21)
    np.testing.assert_array_equal(a.scenes, b.scenes)
    head = (a.masks == HEAD) | (b.masks == HEAD)
    far = ~_dilate(_dilate(head))
    np.testing.assert_array_equal(a.images[far], b.images[far])
    np.testing.assert_array_equal(a.masks[~head], b.masks[~head])
    d = np.abs(a.images.astype(int) - b.images.astype(int)).sum(-1)
    assert d[head].sum() > 0.95 * d.sum() and d[~_dilate(head)].sum() < 1e-3 * d.sum()
    both = (a.masks == HEAD) & (b.masks == HEAD)
    assert d[both].mean() > 90


def test_body_colour_shared_within_pair_head_colour_not(big):
    """Independent seeds: mean BODY colour equal within a pair, mean HEAD colour far apart;
    and body colours of different pairs do differ (so the first check has power)."""
    def mean_rgb(part, s):
        sel = (big.masks == part) & (big.labels == s)[:, None, None]
        return big.images[sel].astype(float).mean(0)
    body = np.array([mean_rgb(BODY, s) for s in range(10)])
    head = np.array([mean_rgb(HEAD, s) for s in range(10)])
    for a, b in HEAD_PAIRS:
        assert np.abs(body[a] - body[b]).max() < 8, (a, b, body[a], body[b])
        assert np.abs(head[a] - head[b]).sum() > 100, (a, b, head[a], head[b])
    pair_body = body[::2]
    gaps = [np.abs(pair_body[i] - pair_body[j]).sum() for i, j in itertools.combinations(range(5), 2)]
    assert min(gaps) > 25


def test_species_names_match_head_colours(big):
    def head_rgb(s):
        sel = (big.masks == HEAD) & (big.labels == s)[:, None, None]
        return big.images[sel].astype(float).mean(0)
    r, g, b = head_rgb(0)                       # red-headed finch
    assert r > g + 80 and r > b + 80
    r, g, b = head_rgb(2)                       # yellow-faced warbler
    assert r > b + 80 and g > b + 60
    r, g, b = head_rgb(7)                       # blue-headed lark
    assert b > r + 50 and b > g + 30
    r, g, b = head_rgb(8)                       # green-headed tanager
    assert g > r + 50 and g > b + 30
    assert head_rgb(9).max() < 90               # black-headed tanager


def _scene_counts(b):
    counts = np.zeros((10, 4))
    np.add.at(counts, (b.labels, b.scenes), 1)
    return counts


@pytest.mark.parametrize("bias, n", [(0.65, 4000), (0.25, 2000), (0.9, 2000)])
def test_scene_bias(bias, n):
    """P(preferred scene) = bias; the other three scenes share 1 - bias uniformly.  The
    preferred scene is estimated from the data (per-species mode), except at bias 0.25 where
    all scenes are equally likely and the mode is meaningless."""
    b = tw.sample(n, seed=2, scene_bias=bias)
    pref = _scene_counts(b).argmax(1) if bias > 0.25 else tw.PREFERRED_SCENE
    is_pref = b.scenes == pref[b.labels]
    assert abs(is_pref.mean() - bias) < 4 * np.sqrt(bias * (1 - bias) / n)
    other = np.bincount((b.scenes - pref[b.labels])[~is_pref] % 4, minlength=4)
    m = other.sum()
    assert other[0] == 0 and np.abs(other[1:] / m - 1 / 3).max() < 4 * np.sqrt(2 / 9 / m)


def test_pairs_share_preferred_scene_and_all_scenes_used(big):
    mode = _scene_counts(big).argmax(1)
    np.testing.assert_array_equal(mode, tw.PREFERRED_SCENE)
    for a, c in HEAD_PAIRS:
        assert mode[a] == mode[c]
    assert set(mode.tolist()) == {0, 1, 2, 3}
    # so the scene points to a pair well above chance (it cannot tell the two members apart)
    assert (big.scenes == tw.PREFERRED_SCENE[big.labels]).mean() > 0.6


def test_balanced_and_unbalanced_labels():
    b = tw.sample(503, seed=1)
    counts = np.bincount(b.labels, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 503
    assert not np.array_equal(b.labels, np.sort(b.labels))   # shuffled
    b4 = tw.sample(200, seed=1, n_classes=4)
    assert set(b4.labels.tolist()) == {0, 1, 2, 3} and (np.bincount(b4.labels) == 50).all()
    u = tw.sample(500, seed=1, n_classes=3, balanced=False)
    assert set(u.labels.tolist()) == {0, 1, 2}
    assert len(tw.sample(0, seed=1).labels) == 0


def test_tensor_round_trip():
    imgs = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    imgs[0, 0, 0] = (0, 128, 255)
    x = tw.to_tensor(imgs)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)
    np.testing.assert_array_equal(tw.from_tensor(x), imgs)
    out = tw.from_tensor(torch.tensor([[[[-3.0]], [[0.0]], [[5.0]]]]))
    assert out.dtype == np.uint8 and out[0, 0, 0].tolist() == [0, 128, 255]   # clamped


def test_image_size_64_scales_shapes():
    labels = np.arange(200) % 10
    s, l = tw.render(labels, seed=3), tw.render(labels, seed=3, image_size=64)
    assert l.images.shape == (200, 64, 64, 3) and l.masks.shape == (200, 64, 64)
    ws, _ = _bbox_width(s.masks == HEAD)
    wl, _ = _bbox_width(l.masks == HEAD)
    assert 1.8 < np.median(wl / ws) < 2.2
    frac_s, frac_l = (s.masks > 0).mean(), (l.masks > 0).mean()
    assert abs(frac_s - frac_l) < 0.03


def test_dataset_stream_and_fixed():
    fixed = list(tw.ToyBirdsDataset(n=12, seed=5))
    assert len(fixed) == 12
    ref = tw.sample(12, seed=5)
    np.testing.assert_array_equal(tw.from_tensor(torch.stack([x for x, _ in fixed])), ref.images)
    assert [y for _, y in fixed] == ref.labels.tolist()
    stream = tw.ToyBirdsDataset(seed=1, chunk=16)
    items = list(itertools.islice(iter(stream), 40))      # crosses two chunk boundaries
    xs = torch.stack([x for x, _ in items])
    assert xs.shape == (40, 3, 32, 32) and xs.min() >= -1 and xs.max() <= 1
    assert len({x.numpy().tobytes() for x in xs}) == 40   # chunks do not repeat
    loader = torch.utils.data.DataLoader(stream, batch_size=8)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
