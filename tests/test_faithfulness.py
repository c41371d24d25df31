"""cortex_nb.method.faithfulness: orders and masks against Python sorting and sets, the batched curves
against a one-image-at-a-time loop through masking.mask_images, the area by hand, and a known
attribution scored as faithful."""
import numpy as np
import pytest
import torch

from cortex_nb.method.faithfulness import auc, default_steps, perturbation_curve, rank_positions, step_mask
from cortex_nb.method.masking import mask_images

M, P = 4, 3                                   # 4 x 4 grid of 3 x 3 patches: 12 x 12 images


def test_rank_positions_is_a_stable_sort_by_score():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (5, M, M), generator=g).float()            # many ties
    for most in (True, False):
        got = rank_positions(s, most_relevant_first=most)
        for b in range(5):
            flat = s[b].flatten().tolist()
            want = sorted(range(M * M), key=lambda i: (-flat[i] if most else flat[i], i))
            assert got[b].tolist() == want
    with pytest.raises(ValueError, match="must be"):
        rank_positions(torch.zeros(2, 3, 4))


def test_step_mask_removes_the_first_k_or_all_but_them():
    order = rank_positions(torch.randn(3, M, M, generator=torch.Generator().manual_seed(1)))
    for k in (0, 1, 7, M * M):
        d, i = step_mask(order, M, k), step_mask(order, M, k, insertion=True)
        for b in range(3):
            first = set(order[b, :k].tolist())
            assert {j for j in range(M * M) if d[b].flatten()[j]} == first
            assert {j for j in range(M * M) if i[b].flatten()[j]} == set(range(M * M)) - first
    with pytest.raises(ValueError):
        step_mask(order, M, M * M + 1)


def test_default_steps_run_from_0_to_m2():
    assert default_steps(4) == list(range(17))
    assert default_steps(8, 4) == [0, 16, 32, 48, 64]
    assert default_steps(4, 100) == list(range(17))


def _evaluator(images):
    """P(class 0) from the top-left 6 x 6 pixels' brightness (uint8 (B, H, W, 3)): a class feature
    that lives in 4 of the 16 positions."""
    x = torch.as_tensor(np.asarray(images)).float() / 255
    g = x[:, :6, :6].mean((1, 2, 3))
    return torch.stack([g, 1 - g], 1)


def test_batched_curves_equal_one_image_at_a_time():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, M * P, M * P, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    order = rank_positions(torch.from_numpy(rng.normal(size=(6, M, M))))

    def score(mask):                                                    # batched, as the pipeline does
        p = _evaluator(mask_images(images, mask, "mean"))
        return p[torch.arange(6), torch.from_numpy(labels)].numpy()

    for insertion in (False, True):
        ks, curve = perturbation_curve(score, order, M, insertion=insertion)
        for b in range(6):                                              # one image and one step at a time
            for j, k in enumerate(ks):
                m = torch.zeros(1, M * M, dtype=torch.bool)
                keep = set(order[b, :k].tolist())
                for pos in range(M * M):
                    m[0, pos] = (pos not in keep) if insertion else (pos in keep)
                want = _evaluator(mask_images(images[b:b + 1], m.view(1, M, M), "mean"))[0, labels[b]]
                assert curve[j, b] == pytest.approx(float(want), abs=1e-6)


def test_auc_by_hand():
    ks = [0, 4, 8, 12, 16]
    lin = np.linspace(1, 0, 5)[:, None]
    np.testing.assert_allclose(auc(ks, lin, M), [0.5])
    np.testing.assert_allclose(auc(ks, np.full((5, 2), 0.7), M), [0.7, 0.7])
    y = np.array([[1.0], [0.2], [0.1], [0.1], [0.0]])
    np.testing.assert_allclose(auc(ks, y, M), [0.25 * (0.6 + 0.15 + 0.1 + 0.05)])
    with pytest.raises(ValueError, match="increase from 0"):
        auc([0, 8], lin[:2], M)


def test_the_true_evidence_order_is_more_faithful_than_its_reverse():
    """Images whose class evidence sits in the top-left 2 x 2 positions: ranking those first gives
    a lower deletion area and a higher insertion area than ranking them last."""
    images = np.zeros((4, M * P, M * P, 3), dtype=np.uint8)
    images[:, :6, :6] = 255                                             # bright evidence for class 0
    images[:, 6:, 6:] = 40
    labels = np.zeros(4, dtype=np.int64)
    truth = torch.zeros(4, M, M)
    truth[:, :2, :2] = 1

    def score(mask):
        return _evaluator(mask_images(images, mask, "black"))[:, 0].numpy()

    res = {}
    for name, most in (("true", True), ("reversed", False)):
        order = rank_positions(truth, most_relevant_first=most)
        for insertion in (False, True):
            ks, curve = perturbation_curve(score, order, M, insertion=insertion)
            res[name, insertion] = auc(ks, curve, M)
    assert (res["true", False] < res["reversed", False] - 0.5).all()    # deletion: falls at once
    assert (res["true", True] > res["reversed", True] + 0.5).all()      # insertion: rises at once
