"""cortex_nb.method.attributions (captum inside) against computations written out here: autograd by hand,
a fine Riemann sum and completeness for Integrated Gradients, one forward per occluded position."""
import pytest
import torch
from torch import nn

from cortex_nb.method import attributions as A
from cortex_nb.method.saliency import class_vs_rest_scores

B, D, M, C = 3, 4, 3, 5


def _net(act=nn.ReLU):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(D, 6, 3, padding=1), nn.BatchNorm2d(6), act(), nn.Flatten(),
                        nn.Linear(6 * M * M, C))
    net.train()(torch.randn(8, D, M, M))                                 # running statistics move off 0 / 1
    return net


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, D, M, M, generator=g), torch.tensor([0, 3, 1])


def _grad(net, E, t):
    E = E.clone().requires_grad_(True)
    net.eval()
    out = net(E)[torch.arange(B), t].sum()
    (g,) = torch.autograd.grad(out, E)
    return g


def test_gradient_and_gradient_x_input_are_channel_maxima_of_the_hand_gradient():
    net, (E, t) = _net(), _inputs()
    g = _grad(net, E, t)
    torch.testing.assert_close(A.gradient(net, E, t), g.abs().amax(1))
    torch.testing.assert_close(A.gradient_x_input(net, E, t), (E * g).abs().amax(1))
    net.train()
    A.gradient(net, E, t)
    assert net.training                                                 # the extractor's mode is restored


def test_integrated_gradients_completeness_and_a_fine_riemann_sum():
    net, (E, t) = _net(nn.Tanh), _inputs()
    codebook = torch.randn(7, D, generator=torch.Generator().manual_seed(2))
    ig = A.integrated_gradients(net, E, t, n_steps=64, codebook=codebook)
    base = codebook.mean(0)[None, :, None, None].expand_as(E)
    with torch.no_grad():
        net.eval()
        gap = net(E)[torch.arange(B), t] - net(base)[torch.arange(B), t]
    torch.testing.assert_close(ig.sum((1, 2)), gap, atol=1e-3, rtol=1e-3)     # completeness
    steps = 512                                                         # midpoint rule, written out
    total = torch.zeros_like(E)
    for a in (torch.arange(steps) + 0.5) / steps:
        total += _grad(net, base + a * (E - base), t)
    torch.testing.assert_close(ig, ((E - base) * total / steps).sum(1), atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="baseline or the codebook"):
        A.integrated_gradients(net, E, t)


def test_occlusion_is_the_logit_drop_of_each_replaced_position():
    net, (E, t) = _net(), _inputs()
    fill = torch.randn(B, D, M, M, generator=torch.Generator().manual_seed(3))
    got = A.occlusion(net, E, t, fill, batch_positions=4)
    net.eval()
    want = torch.zeros(B, M, M)
    with torch.no_grad():
        full = net(E)[torch.arange(B), t]
        for i in range(M):
            for j in range(M):
                X = E.clone()
                X[:, :, i, j] = fill[:, :, i, j]
                want[:, i, j] = full - net(X)[torch.arange(B), t]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_class_vs_rest_positions_index_the_statistic_by_class_and_id():
    tokens = torch.tensor([[[0, 1], [2, 2]], [[3, 3], [1, 0]]])
    labels = torch.tensor([0, 1])
    scores = class_vs_rest_scores(tokens, labels, 2, 4)
    got = A.class_vs_rest_positions(tokens, labels, scores)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                assert got[b, i, j] == scores[labels[b], tokens[b, i, j]]
    assert torch.isinf(scores[0, 3]) and scores[0, 2] > scores[1, 2]     # id 3 never in class 0; 2 only there


def test_random_scores_are_reproducible_and_shaped():
    a = A.random_scores(2, M, torch.Generator().manual_seed(0))
    assert a.shape == (2, M, M)
    torch.testing.assert_close(a, A.random_scores(2, M, torch.Generator().manual_seed(0)))
    assert A.position_feature_mask(D, M)[0, 2, 1, 2].item() == 1 * M + 2
