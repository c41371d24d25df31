"""Quantus (the field's evaluation toolkit, a test dependency only) as the oracle of issue #14's batched
faithfulness code: its RegionPerturbation metric against our deletion curve (rank_positions + step_mask +
masking.mask_images + perturbation_curve), and its Model Parameter Randomisation Test against our cascading
and independent randomisation + rank_correlation, on the same models, inputs and attributions."""
import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")

from cortex_nb.method import masking  # noqa: E402
from cortex_nb.method.extractors import ExtractorConfig, build_extractor  # noqa: E402
from cortex_nb.method.faithfulness import default_steps, perturbation_curve, rank_positions  # noqa: E402
from cortex_nb.method.saliency import TokenSaliency  # noqa: E402
from cortex_nb.method.sanity import (cascading_randomisation, independent_randomisation, randomisable_layers,  # noqa: E402
                              rank_correlation)

M, P = 4, 4                     # a 4 x 4 token grid of 4 x 4-pixel patches: 16 x 16 images


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    with torch.no_grad():                                               # confident enough for P(true) to move
        net[-1].weight.mul_(300)
    return net.eval()


def _images(B=6):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (B, M * P, M * P, 3), generator=g, dtype=torch.uint8).numpy()


def _to_model(images_u8) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images_u8)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_our_deletion_curve_equals_quantus_region_perturbation(order):
    """Quantus perturbs one more patch per step (its patches span every channel, replaced by a constant:
    0.0 is our black fill on [0, 1] inputs) and returns P_0 − P_k with softmax; ours at every k of
    the grid must give the same numbers. 'lerf' (least relevant first) is our ranking reversed."""
    net, images = _classifier(), _images()
    x = _to_model(images)
    y = net(x).argmax(1).numpy()                                       # the predicted class: P starts high
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(len(y), M, M, generator=g, dtype=torch.float64)  # continuous: no ties to break
    a_pixels = scores.repeat_interleave(P, 1).repeat_interleave(P, 2)[:, None].expand(-1, 3, -1, -1)

    metric = quantus.RegionPerturbation(patch_size=P, order=order, regions_evaluation=M * M, normalise=False,
                                        abs=False, perturb_baseline=0.0, disable_warnings=True)
    theirs = np.asarray(metric(model=net, x_batch=x.numpy(), y_batch=y, a_batch=a_pixels.float().numpy(),
                               channel_first=True, softmax=True, device="cpu"))        # (B, M²)

    def p_true(mask):
        with torch.no_grad():
            return net(_to_model(masking.mask_images(images, mask, "black"))).softmax(1)[np.arange(len(y)), y].numpy()

    order_ = rank_positions(scores, most_relevant_first=order == "morf")
    ks, curve = perturbation_curve(p_true, order_, M, default_steps(M))
    ours = curve[0][None] - curve[1:]                                   # (M², B): P_0 − P_k
    # The two sides differ only in float32 rounding (same inputs, differently laid out in memory, so the
    # kernels may sum in another order): |Δlogit| ≲ |logit| · ε₃₂ · √(reduction lengths 27 · 72 · 32) ≈
    # 14 · 1.2e-7 · 250 = 4e-4 and |ΔP| ≤ |Δlogit| / 4, so 1e-4; a wrong patch, order or fill moves P by
    # ~1e-2 or more here (the curve moves by > 0.05).
    np.testing.assert_allclose(ours.T, theirs, rtol=0, atol=1e-4)
    assert np.abs(theirs).max() > 0.05                                  # the curve does move


def _extractor(arch):
    torch.manual_seed(3)
    f = build_extractor(ExtractorConfig(arch=arch, width=8, d=6, m=M, n_classes=3))
    f.train()(torch.randn(32, 6, M, M))                                 # non-trivial running statistics
    return f.eval()


def _tsv(model, E, t):
    """Our TSV with its noise seeded alike every call: a deterministic map, as MPRT needs."""
    gen = torch.Generator().manual_seed(4)
    return TokenSaliency(model, n_samples=4).attribute(E, t, generator=gen).detach()


@pytest.mark.parametrize("arch", ["CE", "RE"])
@pytest.mark.parametrize("layer_order", ["top_down", "independent"])
def test_our_randomisation_checks_equal_quantus_mprt(arch, layer_order):
    """MPRT re-initialises every module that has reset_parameters (seed + 1 each), output side first,
    cascading ('top_down', from the output) or one at a time ('independent', from the input), and compares
    explanations by Spearman's ρ;
    ours with same_seed=True re-initialises the same layers with the same weights, so the per-image ρ
    of every step must agree."""
    f = _extractor(arch)
    g = torch.Generator().manual_seed(5)
    E = torch.randn(8, 6, M, M, generator=g)
    t = f(E).argmax(1)
    ref = _tsv(f, E, t)

    def explain(model, inputs, targets, **kw):
        return _tsv(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]

    metric = quantus.MPRT(layer_order=layer_order, seed=42, disable_warnings=True, normalise=False, abs=False)
    theirs = metric(model=f, x_batch=E.numpy(), y_batch=t.numpy(), a_batch=ref.numpy()[:, None],
                    explain_func=explain, channel_first=True, device="cpu")
    theirs.pop("original")
    ours_gen = (cascading_randomisation if layer_order == "top_down" else independent_randomisation)(
        f, seed=43, same_seed=True)
    ours = {name: rank_correlation(ref, _tsv(model.eval(), E, t)).numpy() for name, model in ours_gen}
    assert list(ours) == randomisable_layers(f)[::-1]                 # output side first
    if layer_order == "top_down":                                       # (MPRT's independent order: input first)
        assert list(theirs) == list(ours)
    assert set(theirs) == set(ours)
    for name in ours:
        np.testing.assert_allclose(ours[name], np.asarray(theirs[name]), rtol=0, atol=1e-9, err_msg=name)
    last = ours[randomisable_layers(f)[0]]
    assert np.nanmean(last) < 0.9                                       # randomisation did change the maps
