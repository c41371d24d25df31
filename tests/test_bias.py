"""Bias detection (notebook 08): Cliff's delta against a brute-force pairwise count, the scene-token counts and
rates against loops, and the bias test on hand-made stores with a planted bias (and without one)."""
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from cortex_nb.method.bias import (cliffs_delta, cliffs_delta_ci, detected_scenes, group_deltas, preferred_from_deltas,
                            rates_correlation_ci, scene_rates, scene_token_counts)


def brute_delta(x, y) -> float:
    """(#(x_i > y_j) - #(x_i < y_j)) / (n m), a Python loop over every pair."""
    gt = sum(1 for a, b in itertools.product(x, y) if a > b)
    lt = sum(1 for a, b in itertools.product(x, y) if a < b)
    return (gt - lt) / (len(x) * len(y))


@pytest.mark.parametrize("seed", range(6))
def test_cliffs_delta_equals_the_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 15, 2)
    x = rng.integers(0, 5, n).astype(float)                              # many ties
    y = rng.normal(2, 1.5, m).round(1) if seed % 2 else rng.integers(0, 5, m).astype(float)
    assert float(cliffs_delta(x, y)) == pytest.approx(brute_delta(x, y), abs=1e-12)


def test_cliffs_delta_extremes_symmetry_and_batching():
    assert float(cliffs_delta([5, 6], [1, 2, 3])) == 1.0
    assert float(cliffs_delta([1, 2, 3], [5, 6])) == -1.0
    assert float(cliffs_delta([2, 2], [2, 2, 2])) == 0.0
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 7)), rng.normal(size=(4, 9))
    batched = cliffs_delta(x, y).numpy()
    assert batched.shape == (4,)
    np.testing.assert_allclose(batched, [brute_delta(a, b) for a, b in zip(x, y)], atol=1e-12)
    np.testing.assert_allclose(cliffs_delta(y, x).numpy(), -batched, atol=1e-12)
    with pytest.raises(ValueError, match="at least one value"):
        cliffs_delta([], [1.0])


def test_binary_cliffs_delta_is_the_difference_of_shares():
    x, y = np.array([1, 1, 0, 1]), np.array([0, 1, 0, 0, 0])
    assert float(cliffs_delta(x, y)) == pytest.approx(x.mean() - y.mean())


def test_the_bootstrap_interval_covers_and_is_reproducible():
    rng = np.random.default_rng(1)
    x, y = rng.normal(1, 1, 60), rng.normal(0, 1, 80)
    d, lo, hi = cliffs_delta_ci(x, y, n_boot=500, seed=3)
    assert lo < d < hi and lo > 0                                         # a real shift: interval above 0
    assert cliffs_delta_ci(x, y, n_boot=500, seed=3) == (d, lo, hi)
    d0, lo0, hi0 = cliffs_delta_ci(rng.normal(0, 1, 60), rng.normal(0, 1, 80), n_boot=500, seed=3)
    assert lo0 < 0 < hi0                                                  # no shift: interval spans 0


def test_scene_token_counts_detected_scenes_and_rates_against_loops():
    rng = np.random.default_rng(2)
    K, m = 12, 3
    tokens = rng.integers(0, K, (20, m, m))
    sets = np.array([[0, 1, -1], [1, 5, 7], [9, -1, -1]])                 # id 1 in two scenes' sets
    counts = scene_token_counts(tokens, sets, K)
    for i, s in itertools.product(range(20), range(3)):
        ids = {int(v) for v in sets[s] if v >= 0}
        assert counts[i, s] == sum(int(t) in ids for t in tokens[i].ravel())
    det = detected_scenes(counts)
    for i in range(20):
        assert det[i] == (-1 if counts[i].max() == 0 else int(np.argmax(counts[i])))
    groups = rng.integers(0, 4, 20)
    rates = scene_rates(det, groups, 4, 3)
    for g, s in itertools.product(range(4), range(3)):
        mine = det[groups == g]
        assert rates[g, s] == pytest.approx((mine == s).sum() / max(len(mine), 1))
    with pytest.raises(ValueError, match="token ids"):
        scene_token_counts(np.full((1, m, m), K), sets, K)


def _planted(bias: float, seed: int = 0, n_per: int = 150, C: int = 4, S: int = 4, m: int = 4):
    """A hand-made store: C species, each drawn in its 'preferred' scene C % S with probability ``bias`` (else
    another scene at random); every position holds a token of the image's scene (ids 10 s .. 10 s + 9), or a bird
    token (ids 100+) on a third of the positions. Scene sets: the first five ids of each scene."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), n_per)
    pref = labels % S
    other = (pref + rng.integers(1, S, len(labels))) % S
    scenes = np.where(rng.random(len(labels)) < bias, pref, other)
    tokens = 10 * scenes[:, None, None] + rng.integers(0, 10, (len(labels), m, m))
    bird = rng.random(tokens.shape) < 1 / 3
    tokens[bird] = 100 + rng.integers(0, 20, bird.sum())
    sets = np.stack([10 * s + np.arange(5) for s in range(S)])
    return tokens, labels, scenes, sets


def test_the_bias_test_finds_a_planted_bias():
    tokens, labels, scenes, sets = _planted(0.8)
    counts = scene_token_counts(tokens, sets, 120)
    det = detected_scenes(counts)
    assert (det == scenes).mean() > 0.95                                 # the scene sets find the scene
    onehot = (det[:, None] == np.arange(4)[None]).astype(int)
    deltas = group_deltas(onehot, labels, 4, n_boot=400, alpha=0.05 / 4, seed=0)
    assert isinstance(deltas, pd.DataFrame) and len(deltas) == 16
    assert preferred_from_deltas(deltas) == {c: c % 4 for c in range(4)}
    r, lo, hi = rates_correlation_ci(det, scenes, labels, 4, 4, n_boot=300)
    assert r > 0.95 and lo > 0.9 and hi <= 1.0


def test_the_bias_test_says_no_bias_when_there_is_none():
    tokens, labels, scenes, sets = _planted(0.25, seed=4)                # 0.25 = uniform over four scenes
    det = detected_scenes(scene_token_counts(tokens, sets, 120))
    onehot = (det[:, None] == np.arange(4)[None]).astype(int)
    deltas = group_deltas(onehot, labels, 4, n_boot=400, alpha=0.05 / 4, seed=0)
    assert deltas.delta.abs().max() < 0.147                              # negligible (Romano et al. 2006)
    assert sum(v >= 0 for v in preferred_from_deltas(deltas).values()) <= 1


def test_bias_table_on_a_store_with_a_planted_bias(tmp_path):
    """The section's per-species table from examine() on a hand-made world: species prefer their scene in the
    'generated' set and the classifier measures the true scene."""
    from omegaconf import OmegaConf

    from cortex_nb.toy import world as toyworld
    from cortex_nb.pipeline import s08_bias

    C, S, n = 10, 4, 120
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(C), n)
    pref = toyworld.PREFERRED_SCENE[labels]
    scenes = np.where(rng.random(len(labels)) < 0.7, pref, (pref + rng.integers(1, S, len(labels))) % S)
    tokens = 10 * scenes[:, None, None] + rng.integers(0, 10, (len(labels), 4, 4))
    sets = np.stack([10 * s + np.arange(6) for s in range(S)])

    class Oracle(torch.nn.Module):          # the 'pixel classifier': reads the scene painted into pixel (0, 0)
        def forward(self, x):
            s = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()
            return torch.nn.functional.one_hot(s, S).float()

    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = scenes
    cfg = OmegaConf.create({"world": {"n_classes": C}, "bias": {"n_boot": 300, "alpha": 0.05, "statistic": "detected"},
                            "seed": 0, "replicate": 0, "device": "cpu",
                            "paths": {"tables": str(tmp_path)}, "vqgm": {"source": "toy"}})
    res = s08_bias.examine(cfg, {"tokens": tokens, "labels": labels, "images": images}, sets, Oracle(), 60)
    assert (res["measured"] == scenes).all()
    disp = s08_bias.bias_table(cfg, {"generated": res})
    written = pd.read_csv(tmp_path / "bias.csv")
    assert len(disp) == C and written.shows_bias.all() and written.correct_detected.all()
    assert list(written.preferred) == [toyworld.SCENES[p] for p in toyworld.PREFERRED_SCENE]
    summary = s08_bias.bias_summary(cfg, {"generated": res}, {"pixel_classifier_val_acc": 1.0})
    row = pd.read_csv(tmp_path / "bias_summary.csv").set_index("statistic").loc["detected"]
    assert len(summary) == 2 and row.species_biased == C and row.detected_right == C
    assert row.detected_unsupported == 0 and row.delta_r_vs_measured > 0.95


def test_the_histogram_bootstrap_is_the_index_bootstrap():
    """Discrete samples resampled as multinomial histograms give the interval the index resampling gives
    (up to Monte Carlo error), and the same point estimate."""
    rng = np.random.default_rng(7)
    x, y = rng.integers(0, 6, 150), rng.integers(1, 7, 400)
    fast = cliffs_delta_ci(x, y, n_boot=6000, seed=1)
    slow = cliffs_delta_ci(x, y, n_boot=6000, seed=1, max_levels=0)              # forces index resampling
    assert fast[0] == slow[0] == pytest.approx(brute_delta(x, y))
    assert fast[1] == pytest.approx(slow[1], abs=0.015) and fast[2] == pytest.approx(slow[2], abs=0.015)
    # the bootstrap's spread is the estimator's: its standard error by a brute simulation of new samples
    widths = fast[2] - fast[1]
    assert 0.1 < widths < 0.4
