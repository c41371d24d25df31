"""cortex_nb.method.saliency against independent computations: captum's NoiseTunnel(Saliency), the
authors' per-sample loop (REFERENCE.md), torch.func, and hand-counted token sets."""
import math
from collections import Counter

import pytest
import torch
from torch import nn

from cortex_nb.method.saliency import (
    TokenSaliency, class_vs_rest_baseline, concept_tokens, frequency_baseline, positions_to_mask,
    token_class_usage, top_n_positions,
)

D, M, C = 8, 4, 5


class TinyCNN(nn.Module):
    """Two convs (BN, dropout: eval mode matters) + linear; E (B, 8, 4, 4) → logits (B, 5)."""

    def __init__(self, d=D, m=M, n_classes=C, width=6):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(d, width, 3, padding=1), nn.BatchNorm2d(width), nn.Tanh(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Dropout(0.3),
            nn.Flatten(), nn.Linear(width * m * m, n_classes),
        )
        with torch.no_grad():  # running statistics that are not the identity
            self.body[1].running_mean.uniform_(-0.5, 0.5)
            self.body[1].running_var.uniform_(0.5, 2.0)

    def forward(self, E):
        return self.body(E)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def make(dtype=torch.float64, B=3, N=4, ranges=None):
    f = TinyCNN().to(dtype).eval()
    E = torch.randn(B, D, M, M, dtype=dtype)
    if ranges is not None:  # embeddings of very different value ranges
        E = E * torch.tensor(ranges, dtype=dtype).view(B, 1, 1, 1)
    z = torch.randn(N, B, D, M, M, dtype=dtype)
    target = torch.tensor([1, 4, 0, 2, 3][:B])
    return f, E, z, target


def slow_reference(f, E, target, z, alpha, sigma, reduce, output="logit"):
    """The authors' loop (REFERENCE.md): per noise sample a forward pass, then one autograd call
    per sample (create_graph=True) — B·N backward passes. σ from the batch or per embedding."""
    f.eval()
    N, B = z.shape[:2]
    if sigma == "batch":
        s = [alpha * (E.max() - E.min()).item()] * B
    else:
        s = [alpha * (E[b].max() - E[b].min()).item() for b in range(B)]
    grad = torch.zeros_like(E)
    for l in range(N):
        X = torch.stack([E[b] + s[b] * z[l, b] for b in range(B)]).requires_grad_(True)
        out = f(X)
        if output == "probability":
            out = out.softmax(1)
        for b in range(B):
            (g,) = torch.autograd.grad(out[b, int(target[b])], X, retain_graph=True, create_graph=True)
            grad[b] += g[b].detach()
    grad /= N
    return grad.abs().amax(1) if reduce == "abs_max" else grad.amax(1)


# ---------------------------------------------------------------------- eq. 4–5 vs captum
@pytest.mark.parametrize("sigma,B", [("batch", 3), ("per_embedding", 1)])
def test_tsv_equals_captum_noise_tunnel_with_identical_noise(monkeypatch, sigma, B):
    from captum.attr import NoiseTunnel, Saliency

    N = 4
    f, E, z, target = make(B=B, N=N)
    ts = TokenSaliency(f, n_samples=N, alpha=0.2, sigma=sigma)
    s = ts.sigma_of(E)[0].item()  # one scalar σ: the batch's, or the single embedding's
    ours_grad = ts.attribute_grad(E, target, noise=z)
    ours = ts.attribute(E, target, noise=z)

    # captum's NoiseTunnel draws ε with torch.normal(0, std) for rows ordered (b, l) (repeat_interleave
    # of the inputs); hand it our draws in that order instead, after checking it asked for our σ.
    calls = []

    def normal(mean, std, *a, **kw):
        calls.append(std)
        assert mean == 0 and std.shape == (B * N, D, M, M)
        torch.testing.assert_close(std, torch.full_like(std, s))
        return s * z.transpose(0, 1).reshape(B * N, D, M, M)

    monkeypatch.setattr(torch, "normal", normal)
    nt = NoiseTunnel(Saliency(f))
    captum_grad = nt.attribute(E.clone(), nt_type="smoothgrad", nt_samples=N, stdevs=s, target=target, abs=False)
    monkeypatch.undo()
    assert len(calls) == 1

    assert rel_err(ours_grad, captum_grad) <= 1e-5
    assert rel_err(ours, captum_grad.abs().amax(1)) <= 1e-5


# ---------------------------------------------------------------------- eq. 4–5 vs the scripts' loop
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("sigma", ["per_embedding", "batch"])
@pytest.mark.parametrize("reduce,chunk_size", [("abs_max", None), ("signed_max", 5)])  # 12 rows in chunks of 5
def test_tsv_equals_slow_reference_loop(dtype, tol, sigma, reduce, chunk_size):
    f, E, z, target = make(dtype, B=3, N=4, ranges=[1.0, 3.0, 0.2])
    ts = TokenSaliency(f, n_samples=4, alpha=0.2, sigma=sigma, reduce=reduce, chunk_size=chunk_size)
    ours = ts.attribute(E, target, noise=z)
    ref = slow_reference(f, E, target, z, 0.2, sigma, reduce)
    assert ours.shape == (3, M, M) and ours.dtype == dtype
    assert rel_err(ours, ref) <= tol


def test_probability_output_equals_gradient_of_softmax():
    N = 3
    f, E, z, target = make(B=2, N=N)
    ts = TokenSaliency(f, n_samples=N, output="probability", sigma="per_embedding")
    ours = ts.attribute_grad(E, target, noise=z)
    s = ts.sigma_of(E)
    oracle = torch.zeros_like(E)
    for b in range(2):
        prob = lambda x: torch.softmax(f(x[None]), dim=1)[0, int(target[b])]  # noqa: E731
        for l in range(N):
            oracle[b] += torch.func.grad(prob)(E[b] + s[b] * z[l, b]) / N
    assert rel_err(ours, oracle) <= 1e-5
    # and it is not the logit's gradient
    logit = TokenSaliency(f, n_samples=N).attribute_grad(E, target, noise=z)
    assert rel_err(ours, logit) > 1e-2


# ---------------------------------------------------------------------- σ
def test_per_embedding_sigma_is_batch_size_independent_and_batch_sigma_is_not():
    f, E, z, target = make(B=3, N=4, ranges=[1.0, 5.0, 0.1])
    per = TokenSaliency(f, n_samples=4, sigma="per_embedding")
    torch.testing.assert_close(per.sigma_of(E), torch.stack([0.2 * (e.max() - e.min()) for e in E]))
    full = per.attribute(E, target, noise=z)
    alone = torch.cat([per.attribute(E[b:b + 1], target[b:b + 1], noise=z[:, b:b + 1]) for b in range(3)])
    torch.testing.assert_close(full, alone, rtol=1e-10, atol=1e-12)

    batch = TokenSaliency(f, n_samples=4, sigma="batch")
    assert torch.all(batch.sigma_of(E) == 0.2 * (E.max() - E.min()))
    full_b = batch.attribute(E, target, noise=z)
    alone_b = torch.cat([batch.attribute(E[b:b + 1], target[b:b + 1], noise=z[:, b:b + 1]) for b in range(3)])
    assert rel_err(full_b[2], alone_b[2]) > 1e-3   # the small-range embedding got the batch's large σ
    assert rel_err(full_b, full) > 1e-3


# ---------------------------------------------------------------------- eq. 5 on a hand case
class Linear(nn.Module):
    """f(E) = W · vec(E): ∇_E f_c = W[c] whatever the noise, so the TSV is known by hand."""

    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(W)

    def forward(self, E):
        return E.flatten(1) @ self.W.T


def test_signed_max_vs_abs_max_hand_case():
    # d = 2 channels, m = 2; gradient of class 0 per (channel, position):
    g = torch.tensor([[[-3.0, 0.5], [2.0, -1.0]],     # channel 0
                      [[1.0, -0.5], [-4.0, -2.0]]],    # channel 1
                     dtype=torch.float64)
    W = torch.stack([g.flatten(), torch.ones(8, dtype=torch.float64)])   # (C=2, 8)
    f = Linear(W)
    E = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    abs_tsv = TokenSaliency(f, n_samples=3).attribute(E, 0)
    signed = TokenSaliency(f, n_samples=3, reduce="signed_max").attribute(E, 0)
    torch.testing.assert_close(abs_tsv[0], torch.tensor([[3.0, 0.5], [4.0, 2.0]], dtype=torch.float64))
    torch.testing.assert_close(signed[0], torch.tensor([[1.0, 0.5], [2.0, -1.0]], dtype=torch.float64))


# ---------------------------------------------------------------------- hygiene
def test_mode_restored_and_no_parameter_grads():
    f, E, z, target = make(B=2, N=3)
    f.train()
    f.body[5].eval()                                    # a mixed state must come back exactly
    modes = [m.training for m in f.modules()]
    E.requires_grad_(True)
    E0 = E.detach().clone()
    tsv = TokenSaliency(f, n_samples=3).attribute(E, target, noise=z)
    assert [m.training for m in f.modules()] == modes
    assert all(p.grad is None for p in f.parameters())
    assert E.grad is None and torch.equal(E.detach(), E0)
    assert not tsv.requires_grad
    # while attributing, f ran in eval mode: same as the loop with f.eval()
    ref = slow_reference(f, E.detach(), target, z, 0.2, "per_embedding", "abs_max")
    assert rel_err(tsv, ref) <= 1e-5


def test_generator_reproducible_chunk_size_independent_and_target_forms():
    f, E, _, _ = make(B=3)
    runs = [TokenSaliency(f, n_samples=5, chunk_size=c).attribute(E, 2, generator=torch.Generator().manual_seed(7))
            for c in (None, 1, 4)]
    for r in runs[1:]:
        torch.testing.assert_close(r, runs[0], rtol=1e-10, atol=1e-12)
    other = TokenSaliency(f, n_samples=5).attribute(E, 2, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(other, runs[0])
    as_tensor = TokenSaliency(f, n_samples=5).attribute(E, torch.tensor([2, 2, 2]),
                                                        generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(as_tensor, runs[0])
    with pytest.raises(ValueError, match="target"):
        TokenSaliency(f).attribute(E, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="noise"):
        TokenSaliency(f, n_samples=5).attribute(E, 1, noise=torch.zeros(4, 3, D, M, M, dtype=E.dtype))


def test_presets():
    f = TinyCNN()
    p, r = TokenSaliency.paper(f), TokenSaliency.reference(f, n_samples=3)
    assert (p.n_samples, p.alpha, p.sigma, p.reduce, p.output) == (20, 0.2, "per_embedding", "abs_max", "logit")
    assert (r.n_samples, r.sigma, r.reduce, r.output) == (3, "batch", "signed_max", "logit")


# ---------------------------------------------------------------------- T*_image
def test_top_n_positions_ties_by_lower_position():
    tsv = torch.tensor([[[0.5, 0.9], [0.9, 0.1]],
                        [[0.2, 0.2], [0.2, 0.2]]])
    assert top_n_positions(tsv, 3).tolist() == [[1, 2, 0], [0, 1, 2]]
    assert positions_to_mask(top_n_positions(tsv, 2), 2).tolist() == [[[False, True], [True, False]],
                                                                      [[True, True], [False, False]]]
    x = torch.randn(4, 5, 5)                                  # no ties: same set as topk
    assert torch.equal(top_n_positions(x, 6), torch.topk(x.flatten(1), 6).indices)


# ---------------------------------------------------------------------- T*_concept and baselines
# K = 6, m = 2 (flat positions 0..3), classes 0, 1 and an empty class 2.
TOKENS = torch.tensor([[3, 1, 3, 5],     # img0, class 0, top positions [0, 2] -> ids 3, 3
                       [1, 4, 4, 2],     # img1, class 0, top positions [1, 3] -> ids 4, 2
                       [0, 4, 1, 1],     # img2, class 0, top positions [1, 0] -> ids 4, 0
                       [1, 1, 2, 0]]).view(4, 2, 2)   # img3, class 1, top positions [3, 2] -> ids 0, 2
LABELS = torch.tensor([0, 0, 0, 1])
TOP = torch.tensor([[0, 2], [1, 3], [1, 0], [3, 2]])


def test_concept_tokens_hand_counted():
    # class 0 at top positions: 3 x2, 4 x2, 0 x1, 2 x1 -> ties (3, 4) and (0, 2) go to the lower id
    ids, counts = concept_tokens(TOKENS, LABELS, TOP, n_classes=3, K=6, k=5, return_counts=True)
    assert ids.tolist() == [[3, 4, 0, 2, -1], [0, 2, -1, -1, -1], [-1] * 5]
    assert counts.tolist() == [[2, 2, 1, 1, 0], [1, 1, 0, 0, 0], [0] * 5]
    assert concept_tokens(TOKENS, LABELS, TOP, 3, 6, 3).tolist() == [[3, 4, 0], [0, 2, -1], [-1, -1, -1]]
    # counting once per image: img0 gives {3}, img1 {4, 2}, img2 {4, 0} -> 4 x2, then 0, 2, 3 x1
    assert concept_tokens(TOKENS, LABELS, TOP, 3, 6, 3, count="images").tolist() == [[4, 0, 2], [0, 2, -1], [-1] * 3]


def test_frequency_baseline_and_usage_hand_counted():
    usage = token_class_usage(TOKENS, LABELS, 3, 6)
    assert usage.tolist() == [[1, 4, 1, 2, 3, 1],     # class 0: id 1 x4, 4 x3, 3 x2, 0/2/5 x1
                              [1, 2, 1, 0, 0, 0],     # class 1: id 1 x2, 0 x1, 2 x1
                              [0] * 6]
    assert frequency_baseline(TOKENS, LABELS, 3, 6, 6).tolist() == [[1, 4, 3, 0, 2, 5],
                                                                     [1, 0, 2, -1, -1, -1], [-1] * 6]


def test_class_vs_rest_baseline_hand_computed():
    # s = 1, K = 6. Class 0: N = 12 positions, rest (class 1) R = 4:
    #   score(t) = log((c+1)/18) - log((r+1)/10)
    L = math.log
    s0 = {0: L(2 / 18) - L(2 / 10), 1: L(5 / 18) - L(3 / 10), 2: L(2 / 18) - L(2 / 10),
          3: L(3 / 18) - L(1 / 10), 4: L(4 / 18) - L(1 / 10), 5: L(2 / 18) - L(1 / 10)}
    # 4 (0.799) > 3 (0.511) > 5 (0.105) > 1 (-0.077) > 0 = 2 (-0.588, tie -> lower id)
    # Class 1: N = 4, rest R = 12: score(t) = log((c+1)/10) - log((r+1)/18); only ids 0, 1, 2 occur.
    s1 = {0: L(2 / 10) - L(2 / 18), 1: L(3 / 10) - L(5 / 18), 2: L(2 / 10) - L(2 / 18)}
    ids, scores = class_vs_rest_baseline(TOKENS, LABELS, 3, 6, 6, smoothing=1.0, return_scores=True)
    assert ids.tolist() == [[4, 3, 5, 1, 0, 2], [0, 2, 1, -1, -1, -1], [-1] * 6]
    torch.testing.assert_close(scores[0], torch.tensor([s0[t] for t in [4, 3, 5, 1, 0, 2]], dtype=torch.float64))
    torch.testing.assert_close(scores[1, :3], torch.tensor([s1[t] for t in [0, 2, 1]], dtype=torch.float64))
    assert torch.isinf(scores[1, 3:]).all() and torch.isinf(scores[2]).all()
    # it differs from the plain frequency ranking, which puts the shared id 1 first
    assert frequency_baseline(TOKENS, LABELS, 3, 6, 1)[0, 0] == 1


def test_concept_tokens_match_counter_on_random_case():
    g = torch.Generator().manual_seed(1)
    B, m, K, n_classes, n, k = 40, 4, 12, 3, 5, 4
    tokens = torch.randint(0, K, (B, m, m), generator=g)
    labels = torch.randint(0, n_classes, (B,), generator=g)
    top = top_n_positions(torch.rand(B, m, m, generator=g), n)
    got = concept_tokens(tokens, labels, top, n_classes, K, k)
    for y in range(n_classes):
        cnt = Counter(int(tokens[b].flatten()[p]) for b in range(B) if labels[b] == y for p in top[b])
        want = [t for t, _ in sorted(cnt.items(), key=lambda tc: (-tc[1], tc[0]))][:k]
        assert got[y].tolist() == want + [-1] * (k - len(want))


def test_numpy_uint16_tokens_and_range_errors():
    import numpy as np
    ids = frequency_baseline(TOKENS.numpy().astype(np.uint16), LABELS.numpy(), 3, 6, 2)
    assert ids.tolist() == [[1, 4], [1, 0], [-1, -1]]
    with pytest.raises(ValueError, match="codebook size"):
        token_class_usage(TOKENS, LABELS, 3, K=5)
    with pytest.raises(ValueError, match="labels"):
        token_class_usage(TOKENS, LABELS, 1, K=6)
