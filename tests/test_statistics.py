"""The pipeline's statistics on inputs whose answers are known: bootstrap intervals against a
known distribution and against brute force (further tests per section live beside them)."""
import itertools

import numpy as np
import pytest
from omegaconf import OmegaConf

from cortex_nb.io.tables import bootstrap_ci, mean_ci


def test_bootstrap_interval_covers_the_true_mean_at_about_its_level():
    """Percentile bootstrap of the mean of n = 60 draws from N(0.3, 1), 300 independent samples.
    Its coverage for this n is close to the nominal 95 % (slightly below: ~93-94 %); with 300 trials
    the binomial standard error of a coverage of 0.94 is 0.014, so [0.88, 0.985] is > 4 se either
    side of the expected value: the test fails only if the interval is really mis-sized (a 90 %
    interval covers ~0.89, an 80 % one ~0.79, a 99 % one ~0.99)."""
    rng = np.random.default_rng(12345)
    hits = 0
    for trial in range(300):
        x = rng.normal(0.3, 1.0, size=60)
        _, lo, hi = bootstrap_ci(x, n_boot=1000, seed=trial)
        hits += lo <= 0.3 <= hi
    assert 0.88 <= hits / 300 <= 0.985


def test_bootstrap_interval_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(0)
    w = {}
    for n in (100, 1600):
        x = rng.normal(size=n)
        _, lo, hi = bootstrap_ci(x, n_boot=4000, seed=1)
        w[n] = hi - lo
    # normal theory: width = 2 * 1.96 / sqrt(n); ratio 4 for 16x the data
    assert w[100] / w[1600] == pytest.approx(4.0, rel=0.15)
    assert w[1600] == pytest.approx(2 * 1.96 / 40, rel=0.1)


def test_bootstrap_matches_the_exact_resampling_distribution_on_a_tiny_sample():
    """For 4 values all 4^4 = 256 resamples are equally likely: the bootstrap quantiles must
    approach the exact quantiles of that distribution (brute force over every resample)."""
    x = np.array([0.0, 1.0, 3.0, 10.0])
    means = np.array([x[list(i)].mean() for i in itertools.product(range(4), repeat=4)])
    lo_exact, hi_exact = np.quantile(means, [0.025, 0.975])
    m, lo, hi = bootstrap_ci(x, n_boot=200_000, seed=3)
    assert m == pytest.approx(3.5)
    assert lo == pytest.approx(lo_exact, abs=0.26) and hi == pytest.approx(hi_exact, abs=0.26)  # grid step 0.25


def test_mean_ci_of_a_constant_is_degenerate_and_empty_is_nan():
    assert mean_ci(np.full(7, 0.25)) == {"mean": 0.25, "lo": 0.25, "hi": 0.25}
    assert all(np.isnan(v) for v in bootstrap_ci(np.array([])))


# --- the pipeline's own statistics, on hand-made inputs ---------------------------------------

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cortex_nb.method.masking import mask_token_set  # noqa: E402
from cortex_nb.pipeline.s03_image_level import masked_counts  # noqa: E402
from cortex_nb.pipeline.s04_concept_level import (concept_rank_scores, head_positions,  # noqa: E402
                                                  head_share_of_top_n, head_share_rows)
from cortex_nb.pipeline.s05_editing import best_of_checkpoints  # noqa: E402


def test_head_positions_thresholds_each_patch_share():
    # one 4 x 4 image, m = 2 (2 x 2 patches): head pixels cover 4/4, 1/4, 2/4 and 0/4 of the patches
    px = np.zeros((1, 4, 4), bool)
    px[0, :2, :2] = True            # patch (0, 0): all head
    px[0, 0, 2] = True              # patch (0, 1): 1 of 4
    px[0, 2:, 0] = True             # patch (1, 0): 2 of 4
    assert head_positions(px, 2, 0.25).tolist() == [[True, True, True, False]]
    assert head_positions(px, 2, 0.5).tolist() == [[True, False, True, False]]
    assert head_positions(px, 2, 1.0).tolist() == [[True, False, False, False]]


def test_head_share_of_top_n_counts_the_head_among_the_best_positions():
    scores = torch.tensor([[[0.9, 0.1], [0.5, 0.7]],       # best two: positions 0 and 3
                           [[0.0, 0.2], [0.3, 0.1]]])      # best two: positions 2 and 1
    is_head = torch.tensor([[True, False, False, False],
                            [False, True, True, False]])
    assert head_share_of_top_n(scores, is_head, 2).tolist() == [0.5, 1.0]
    assert head_share_of_top_n(scores, is_head, 1).tolist() == [1.0, 1.0]


def test_head_share_rows_score_every_method_and_add_the_grid_share_as_random():
    scores = torch.tensor([[[0.9, 0.1], [0.5, 0.7]],
                           [[0.0, 0.2], [0.3, 0.1]]])
    batch = {"is_head": torch.tensor([[True, False, False, False], [False, True, True, False]]), "n": 2}
    cfg = OmegaConf.create({"seed": 0})
    rows = head_share_rows(cfg, {("CE", "TSV"): scores, "flat": -scores}, batch)
    assert [r["method"] for r in rows] == [("CE", "TSV"), "flat", "random"]
    assert rows[0]["head_share"] == pytest.approx(0.75)                 # (1/2 + 2/2) / 2
    assert rows[1]["head_share"] == pytest.approx(0.0)                  # worst two: positions 1, 2 / 0, 3
    assert rows[2]["head_share"] == pytest.approx(0.375)                # (1/4 + 2/4) / 2
    assert all(r["n"] == 2 and r["lo"] <= r["head_share"] <= r["hi"] for r in rows)


def test_concept_rank_scores_rank_each_position_by_its_class_set():
    concept = torch.tensor([[7, 3, -1],                    # class 0: id 7 best, then 3 (padding -1)
                            [3, 5, 9]])                    # class 1
    tokens = torch.tensor([[[7, 3], [5, 0]],
                           [[9, 3], [5, 7]]])
    labels = torch.tensor([0, 1])
    s = concept_rank_scores(concept, labels, tokens, K=10)
    # k = 3, outside the set -> rank k + 1 = 4; the score is minus the rank
    assert s.tolist() == [[[-0.0, -1.0], [-4.0, -4.0]],
                          [[-2.0, -0.0], [-1.0, -4.0]]]


def test_best_of_checkpoints_takes_each_images_best_target_checkpoint():
    p_targ = np.array([[0.1, 0.6, 0.3],
                       [0.4, 0.2, 0.3],                    # image 2: a tie between checkpoints 1 and 2 ...
                       [0.2, 0.5, 0.3]])                   # ... the first wins
    p_orig = np.array([[0.9, 0.3, 0.6],
                       [0.5, 0.8, 0.65],
                       [0.7, 0.4, 0.1]])
    qo, qt = best_of_checkpoints(p_orig, p_targ)
    assert qt.tolist() == [0.4, 0.6, 0.3] and qo.tolist() == [0.5, 0.3, 0.6]


def test_masked_area_counts_of_the_token_id_mode():
    """Every position holding one of the class's concept ids is masked, so a repeated id masks
    several patches: count them by hand and through masked_counts' pivot."""
    tokens = torch.tensor([[[1, 1], [2, 3]],                # class 0's set {1}: 2 patches
                           [[4, 2], [2, 2]]])               # class 1's set {2, 4}: 4 patches
    concept = torch.tensor([[1, -1], [2, 4]])
    masks = mask_token_set(tokens, torch.tensor([0, 1]), concept)
    assert masks.flatten(1).sum(1).tolist() == [2, 4]
    df = pd.DataFrame({"method": ["CE", "CE", "RE", "random"], "n": [1, 2, 1, 1], "n_masked": [3.0, 5.0, 2.5, 9.0]})
    pivot = masked_counts(df)
    assert pivot.loc[1, "CE"] == 3.0 and pivot.loc[2, "CE"] == 5.0 and pivot.loc[1, "RE"] == 2.5
    assert "random" not in pivot.columns


# --- resampling units (issue #12): clusters, pairs, seeds ------------------------------------

from cortex_nb.io.tables import cluster_bootstrap_ci, paired_ci, seed_average  # noqa: E402


def test_cluster_bootstrap_matches_the_exact_cluster_resampling_distribution():
    """3 clusters of unequal size: all 3^3 = 27 cluster resamples are equally likely; the pooled
    mean of each is sum of the drawn clusters' sums / sum of their counts (brute force below)."""
    values = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 4.0])
    clusters = np.array(["a", "a", "a", "b", "b", "c"])
    groups = [values[clusters == c] for c in ("a", "b", "c")]
    exact = np.array([np.concatenate([groups[i] for i in draw]).mean()
                      for draw in itertools.product(range(3), repeat=3)])
    # quantiles of the exact (atomic) distribution; no quantile falls on an atom boundary
    # (27 q is not an integer for q = 0.025, 0.975, 0.25, 0.75), so 200k draws land on the same atoms
    for alpha in (0.05, 0.5):
        m, lo, hi = cluster_bootstrap_ci(values, clusters, n_boot=200_000, alpha=alpha, seed=5)
        e_lo, e_hi = np.quantile(exact, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
        assert (lo, hi) == (pytest.approx(e_lo), pytest.approx(e_hi)), alpha
    assert m == pytest.approx(values.mean())

    # the extremes of the exact distribution are all-'a' (mean 1) and all-'b' (mean 10.5)
    assert exact.min() == 1.0 and exact.max() == 10.5


def test_cluster_bootstrap_is_wider_than_row_bootstrap_when_rows_share_a_cluster_effect():
    """10 clusters x 50 rows with a cluster effect of sd 1 and row noise of sd 0.1: the sd of the
    grand mean is ~ 1 / sqrt(10) = 0.32, which the cluster interval (~ +-0.62) shows and the row
    interval (~ +-0.09, as if 500 independent rows) does not."""
    rng = np.random.default_rng(2)
    effect = rng.normal(0, 1, size=10)
    clusters = np.repeat(np.arange(10), 50)
    values = effect[clusters] + rng.normal(0, 0.1, size=500)
    _, clo, chi = cluster_bootstrap_ci(values, clusters, seed=1)
    _, rlo, rhi = bootstrap_ci(values, seed=1)
    assert (chi - clo) > 4 * (rhi - rlo)
    assert 0.8 < (chi - clo) < 2.0  # 2 x 1.96 x 0.32 = 1.24 give or take the 10 drawn effects


def test_singleton_clusters_reduce_to_the_row_bootstrap():
    x = np.random.default_rng(0).normal(size=40)
    assert cluster_bootstrap_ci(x, np.arange(40), seed=4) == bootstrap_ci(x, seed=4)


def test_paired_interval_removes_what_both_methods_share():
    """Two methods on the same 200 images whose difficulty varies a lot (sd 1) and which differ by
    0.05 +- 0.01 per image: separate intervals overlap, the paired one excludes zero."""
    rng = np.random.default_rng(7)
    difficulty = rng.normal(0, 1, size=200)
    a = difficulty + 0.05 + rng.normal(0, 0.01, size=200)
    b = difficulty
    sep_a, sep_b = mean_ci(a), mean_ci(b)
    assert sep_a["lo"] < sep_b["hi"]                       # separately: inconclusive
    d = paired_ci(a, b)
    assert 0.04 < d["lo"] < d["mean"] < d["hi"] < 0.06     # paired: clearly positive
    assert d["mean"] == pytest.approx(np.mean(a - b))
    dc = paired_ci(a, b, clusters=np.repeat(np.arange(10), 20))
    assert dc["mean"] == pytest.approx(d["mean"]) and dc["lo"] > 0
    with pytest.raises(ValueError, match="same units"):
        paired_ci(a, b[:-1])


def test_seed_average_makes_images_the_resampled_unit():
    """5 seeds x 100 images: pooling the 500 rows understates the interval of a quantity whose
    variation is mostly between images; averaging seeds first gives the image-level interval."""
    rng = np.random.default_rng(3)
    image_effect = rng.normal(0, 1, size=100)
    rows = image_effect[None, :] + rng.normal(0, 0.2, size=(5, 100))   # (S, N)
    per_image = seed_average(rows)
    assert per_image.shape == (100,) and per_image == pytest.approx(rows.mean(0))
    _, lo, hi = bootstrap_ci(per_image, seed=0)
    _, plo, phi = bootstrap_ci(rows.ravel(), seed=0)
    assert (hi - lo) > 1.8 * (phi - plo)                   # sqrt(5) = 2.2 when seeds barely matter
    with pytest.raises(ValueError, match="seeds, units"):
        seed_average(rows.ravel())
