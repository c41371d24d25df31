"""Tests for cortex_nb.method.optimize (CORTEX §3.4, eq. 7–9, A.2): a tiny world (d 4, m 4, K 16, C 3, float64)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cortex_nb.method.optimize import (
    _compose, _hard_gumbel_softmax, central_region, nearest_tokens, optimize_embeddings,
    saliency_region, select_tokens,
)

D, M, K, C = 4, 4, 16, 3
METHODS = {"select_tokens": select_tokens, "optimize_embeddings": optimize_embeddings}


@pytest.fixture
def world():
    """codebook (K, d), a tiny conv+BN extractor (random BN statistics, so eval mode matters), tokens."""
    g = torch.Generator().manual_seed(1)
    codebook = torch.randn(K, D, generator=g, dtype=torch.float64)
    f = nn.Sequential(nn.Conv2d(D, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * M * M, C)).double()
    with torch.no_grad():
        f[1].running_mean.normal_(generator=g)
        f[1].running_var.uniform_(0.5, 2.0, generator=g)
    tokens = torch.randint(0, K, (3, M, M), generator=g, dtype=torch.int32)
    return codebook, f, tokens


def test_hard_step_equals_torch_gumbel_softmax():
    """Our straight-through step is F.gumbel_softmax(hard=True) given the same RNG draws: values and gradient."""
    P = torch.randn(2, 5, K, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, K, dtype=torch.float64)
    for tau in (1.0, 0.3):
        with torch.random.fork_rng():
            torch.manual_seed(7)
            y_torch = F.gumbel_softmax(P, tau=tau, hard=True)
            torch.manual_seed(7)
            gumbels = -torch.empty_like(P).exponential_().log()
        y_ours, index = _hard_gumbel_softmax(P, gumbels, tau)
        assert torch.equal(y_ours, y_torch)
        assert torch.equal(index, y_torch.argmax(-1))
        (g_torch,) = torch.autograd.grad((w * y_torch).sum(), P)
        (g_ours,) = torch.autograd.grad((w * y_ours).sum(), P)
        assert torch.equal(g_ours, g_torch)


def test_gradient_reaches_P_and_is_the_soft_gradient_of_eq15(world):
    """dL/dP_k = y_k (w_k - sum_i w_i y_i) / tau with w = dL/dy (eq. 15), y = softmax((P + g)/tau)."""
    codebook, f, tokens = world
    f.eval()
    tau = 0.5
    B, R = 2, 4
    flat = tokens[:B].flatten(1).long()
    E0 = codebook[flat]                                                   # (B, m², d)
    positions = central_region(M, 2).flatten().nonzero()[:, 0].expand(B, R)
    target = torch.tensor([0, 2])
    P = torch.randn(B, R, K, dtype=torch.float64, requires_grad=True)
    gumbels = -torch.empty_like(P).exponential_().log()

    y, _ = _hard_gumbel_softmax(P, gumbels, tau)
    E = _compose(E0, positions, y @ codebook)
    (grad_P,) = torch.autograd.grad(-f(E).gather(1, target[:, None]).sum(), P)
    assert grad_P.abs().sum() > 0

    E_leaf = E.detach().requires_grad_(True)                              # the same (hard) E as a leaf
    (grad_E,) = torch.autograd.grad(-f(E_leaf).gather(1, target[:, None]).sum(), E_leaf)
    grad_rows = grad_E.permute(0, 2, 3, 1).reshape(B, M * M, D).gather(1, positions[..., None].expand(-1, -1, D))
    w = grad_rows @ codebook.T                                            # dL/dy (B, R, K)
    y_soft = ((P + gumbels) / tau).softmax(-1).detach()
    analytic = y_soft * (w - (w * y_soft).sum(-1, keepdim=True)) / tau
    torch.testing.assert_close(grad_P, analytic, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_outside_region_bit_identical(world, method):
    codebook, f, tokens = world
    region = central_region(M, 2)
    res = METHODS[method](f, tokens, codebook, region, target=1, steps=8, lr=0.2, record_every=4)
    assert res.tokens.dtype == torch.int64 and res.tokens.shape == tokens.shape
    assert torch.equal(res.tokens[:, ~region], tokens[:, ~region].long())
    assert torch.equal(res.tokens[:, region], res.region_tokens)
    for _, cp in res.checkpoints:
        assert torch.equal(cp[:, ~region], tokens[:, ~region].long())


@pytest.mark.parametrize("init", ["random", "original"])
def test_batched_equals_per_image(world, init):
    """Image b of a batch run with seed s equals a one-image run with seed s + b, per-image regions."""
    codebook, f, tokens = world
    region = saliency_region(torch.rand(3, M, M), 2)                      # a different block per image
    target = torch.tensor([0, 1, 2])
    kw = dict(steps=15, lr=0.1, init=init, record_every=5)
    batch = select_tokens(f, tokens, codebook, region, target, seed=10, **kw)
    for b in range(3):
        one = select_tokens(f, tokens[b:b + 1], codebook, region[b:b + 1], int(target[b]), seed=10 + b, **kw)
        assert torch.equal(one.tokens[0], batch.tokens[b])
        torch.testing.assert_close(one.P[0], batch.P[b], rtol=0, atol=1e-6)
        for (s1, t1), (s2, t2) in zip(one.checkpoints, batch.checkpoints):
            assert s1 == s2 and torch.equal(t1[0], t2[b])
    if init == "random":                                                  # something actually moved
        assert batch.tokens[region].ne(tokens[region].long()).any()
    else:
        original = tokens.flatten(1).long().gather(1, batch.positions)
        P0 = torch.zeros(3, 4, K, dtype=torch.float64).scatter_(-1, original[..., None], math.log(K))
        assert (batch.P - P0).abs().max() > 0.1


def test_embedding_baseline_batched_equals_per_image(world):
    codebook, f, tokens = world
    region = saliency_region(torch.rand(3, M, M), 2)
    batch = optimize_embeddings(f, tokens, codebook, region, 2, steps=10, lr=0.1)
    for b in range(3):
        one = optimize_embeddings(f, tokens[b:b + 1], codebook, region[b:b + 1], 2, steps=10, lr=0.1)
        assert torch.equal(one.tokens[0], batch.tokens[b])
        torch.testing.assert_close(one.extras["E_final"][0], batch.extras["E_final"][b], rtol=0, atol=1e-6)


def test_one_image_run_is_the_naive_torch_loop(world):
    """Independent oracle: the reference's loop on the global RNG with F.gumbel_softmax itself."""
    codebook, f, tokens = world
    region, target, seed, steps, lr = central_region(M, 2), 2, 5, 12, 0.1
    res = select_tokens(f, tokens[:1], codebook, region, target, steps=steps, lr=lr, seed=seed)

    f.eval()
    pos = region.flatten().nonzero()[:, 0]
    E0 = codebook[tokens[0].flatten().long()]                             # (m², d)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        P = torch.randn(len(pos), K, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([P], lr=lr)
        for _ in range(steps):
            E = E0.clone()
            E[pos] = F.gumbel_softmax(P, tau=1.0, hard=True) @ codebook
            logit = f(E.T.reshape(1, D, M, M))[0, target]
            (P.grad,) = torch.autograd.grad(-logit, P)
            opt.step()
    torch.testing.assert_close(res.P[0], P.detach(), rtol=0, atol=1e-9)
    assert torch.equal(res.region_tokens[0], P.argmax(-1))


@pytest.mark.parametrize("method", METHODS)
def test_global_rng_extractor_mode_and_grads_untouched(world, method):
    codebook, f, tokens = world
    f.train()
    state = torch.get_rng_state()
    METHODS[method](f, tokens, codebook, central_region(M, 2), 0, steps=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert f.training and all(p.grad is None and p.requires_grad for p in f.parameters())


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_nearest_tokens_is_brute_force_nearest_neighbour(chunk):
    codebook = torch.randn(K, D, dtype=torch.float64)
    vectors = torch.randn(3, 5, D, dtype=torch.float64) * 2
    got = nearest_tokens(vectors, codebook, chunk=chunk)
    assert got.shape == (3, 5) and got.dtype == torch.int64
    for v, k in zip(vectors.reshape(-1, D), got.flatten()):
        dists = [float(((v - c) ** 2).sum()) for c in codebook]
        assert int(k) == min(range(K), key=dists.__getitem__)


def test_embedding_baseline_quantises_its_final_embedding(world):
    codebook, f, tokens = world
    region = central_region(M, 2)
    res = optimize_embeddings(f, tokens, codebook, region, 1, steps=10, lr=0.3)
    E = res.extras["E_final"]                                             # (B, d, m, m)
    assert torch.equal(E[:, :, ~region], codebook[tokens.long()].permute(0, 3, 1, 2)[:, :, ~region])
    assert torch.equal(res.region_tokens, nearest_tokens(E.permute(0, 2, 3, 1)[:, region], codebook))
    assert res.P is None and list(res.history.columns) == ["step", "loss", "target_logit", "target_prob"]


def test_toy_run_finds_the_token_that_drives_the_target():
    """A linear extractor whose target weight is codebook vector k*: the region should become k*."""
    g = torch.Generator().manual_seed(3)
    codebook = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
    codebook[5] *= 2                                                      # <c*, c*> = 4 > 2 >= <c*, c_j>
    k_star, target = 5, 1
    f = nn.Sequential(nn.Conv2d(D, C, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()
    with torch.no_grad():
        f[0].weight.copy_(torch.randn(C, D, 1, 1, generator=g, dtype=torch.float64))
        f[0].weight[target, :, 0, 0] = 12 * codebook[k_star]
    tokens = torch.randint(0, K - 1, (4, M, M), generator=g)
    tokens[tokens >= k_star] += 1                                         # k* nowhere at the start
    region = central_region(M, 2)

    def p_target(t):
        with torch.no_grad():
            return f(codebook[t].permute(0, 3, 1, 2)).softmax(1)[:, target]

    res = select_tokens(f, tokens, codebook, region, target, steps=150, lr=0.1)
    assert (res.region_tokens == k_star).all()
    before, after = p_target(tokens), p_target(res.tokens)
    assert (after > before + 0.3).all(), (before, after)
    assert res.history.target_logit.iloc[-20:].mean() > res.history.target_logit.iloc[:20].mean()
    assert res.history.n_changed.iloc[-1] == 4


def test_history_and_checkpoint_schedule(world):
    codebook, f, tokens = world
    seen = []
    res = select_tokens(f, tokens, codebook, central_region(M, 2), 0, steps=7, record_every=3,
                        init="original", callback=lambda step, row: seen.append((step, row)))
    assert [s for s, _ in res.checkpoints] == [0, 3, 6, 7]
    assert torch.equal(res.checkpoints[0][1], tokens.long())               # "original" init: argmax P = input
    assert torch.equal(res.checkpoints[-1][1], res.tokens)
    assert list(res.history.columns) == ["step", "loss", "target_logit", "target_prob", "n_changed"]
    assert res.history.step.tolist() == list(range(7)) and res.history.n_changed.iloc[0] == 0
    assert [s for s, _ in seen] == list(range(7))
    assert set(seen[0][1]) == {"loss", "target_logit", "target_prob", "n_changed"}
    assert res.P.shape == (3, 4, K) and res.positions.shape == (3, 4)


def test_region_validation(world):
    codebook, f, tokens = world
    uneven = torch.zeros(3, M, M, dtype=torch.bool)
    uneven[0, 0, 0] = uneven[1, 0, :2] = uneven[2, 1, 1] = True
    with pytest.raises(ValueError, match="same, non-zero number"):
        select_tokens(f, tokens, codebook, uneven, 0, steps=1)
    with pytest.raises(ValueError, match="init"):
        select_tokens(f, tokens, codebook, central_region(M), 0, steps=1, init="zeros")


def test_central_region_reproduces_the_reference_block():
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[7:11, 7:11] = True                                           # rows/cols 7..10, zero-based
    assert torch.equal(central_region(16), expected)
    r8 = central_region(8)
    assert r8.sum() == 4 and r8[3:5, 3:5].all()                           # the centred 2x2
    assert torch.equal(r8, r8.flip(0, 1))
    big = torch.zeros(32, 32, dtype=torch.bool)
    big[14:22, 14:22] = True
    assert torch.equal(central_region(32), big)                           # the reference block, scaled
    assert central_region(4).sum() == 1 and central_region(16, 2)[8:10, 8:10].all()


@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_saliency_region_in_bounds_and_contains_top(size):
    B, m = 40, 6
    tsv = torch.rand(B, m, m)
    tsv[0, 0, 0] = tsv[1, -1, -1] = tsv[2, 0, -1] = 2.0                  # corners force the shift
    region = saliency_region(tsv, size)
    assert region.shape == (B, m, m) and region.dtype == torch.bool
    assert (region.flatten(1).sum(1) == size * size).all()
    top = tsv.flatten(1).argmax(1)
    assert region.flatten(1)[torch.arange(B), top].all()
    rows, cols = region.any(2), region.any(1)                             # a solid square block
    assert (rows.sum(1) == size).all() and (cols.sum(1) == size).all()
    assert torch.equal(region, rows[:, :, None] & cols[:, None, :])


def test_random_tokens_control_changes_only_the_region_uniformly():
    from cortex_nb.method.optimize import random_tokens

    tokens = torch.randint(0, 50, (200, 8, 8), generator=torch.Generator().manual_seed(0))
    region = central_region(8)
    out = random_tokens(tokens, region, K=50, seed=5)
    assert torch.equal(out[:, ~region], tokens[:, ~region])                      # outside: untouched
    assert torch.equal(out, random_tokens(tokens, region, K=50, seed=5))          # seeded
    assert not torch.equal(out, random_tokens(tokens, region, K=50, seed=6))
    drawn = out[:, region]
    assert int(drawn.min()) >= 0 and int(drawn.max()) < 50
    counts = torch.bincount(drawn.flatten(), minlength=50).float()               # 800 draws over 50 ids
    assert counts.min() > 0 and counts.max() < 40                                 # uniform: ~16 each
