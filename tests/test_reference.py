"""benchmarks/reference.py (the authors' algorithms, kept for the benchmarks) against independent
computations, and benchmarks/report.py on hand-made result files. No timings are asserted here."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cortex_nb.method.evaluators import Evaluator, imagenet_spec
from cortex_nb.method.masking import evaluate_masked, mask_images, mask_random
from cortex_nb.method.saliency import TokenSaliency
from cortex_nb.toy.evaluators import build_toy_evaluator
from test_saliency import make, rel_err, slow_reference   # the scripts' loop written as a test oracle

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:  # benchmark-only modules, importable as `python benchmarks/x.py` sees them
    sys.path.insert(0, str(ROOT / "benchmarks"))
from reference import evaluate_masked_reference, mask_image_pil, sample_uncached, tsv_reference  # noqa: E402


# ---------------------------------------------------------------------- TSV
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_tsv_reference_equals_oracle_loop_and_ours_with_the_same_noise(dtype, tol):
    f, E, z, target = make(dtype, B=3, N=4, ranges=[1.0, 3.0, 0.2])
    ref = tsv_reference(f, E, target, n_samples=4, alpha=0.2, noise=z)
    oracle = slow_reference(f, E, target, z, 0.2, sigma="batch", reduce="signed_max")
    ours = TokenSaliency.reference(f, n_samples=4, alpha=0.2).attribute(E, target, noise=z)
    assert ref.shape == (3, E.shape[2], E.shape[3]) and ref.dtype == dtype
    assert rel_err(ref, oracle) <= tol
    assert rel_err(ours, ref) <= tol
    absmax = slow_reference(f, E, target, z, 0.2, sigma="batch", reduce="abs_max")
    assert (ref <= absmax).all() and (ref < absmax - 1e-4 * absmax.max()).any()   # signed max, not max |.|


def test_tsv_reference_sigma_per_batch_of_batch_size():
    """B = 5 in batches of 2: σ of each batch, i.e. ours called on each batch with its noise slice."""
    f, E, z, target = make(torch.float64, B=5, N=3, ranges=[1.0, 3.0, 0.2, 5.0, 0.5])
    ref = tsv_reference(f, E, target, n_samples=3, batch_size=2, noise=z)
    ours = TokenSaliency.reference(f, n_samples=3)
    per_batch = torch.cat([ours.attribute(E[s:s + 2], target[s:s + 2], noise=z[:, s:s + 2]) for s in (0, 2, 4)])
    assert rel_err(ref, per_batch) <= 1e-10
    one_batch = tsv_reference(f, E, target, n_samples=3, batch_size=25, noise=z)
    assert rel_err(one_batch, ours.attribute(E, target, noise=z)) <= 1e-10
    assert rel_err(ref, one_batch) > 1e-3                   # σ depends on which embeddings share the batch


def test_tsv_reference_generator_draws_like_ours_and_restores_modes():
    f, E, _, target = make(torch.float64, B=3, N=5)
    f.train()
    modes = [m.training for m in f.modules()]
    ref = tsv_reference(f, E, target, n_samples=5, generator=torch.Generator().manual_seed(3))
    ours = TokenSaliency.reference(f, n_samples=5).attribute(E, target, generator=torch.Generator().manual_seed(3))
    assert rel_err(ref, ours) <= 1e-10
    assert [m.training for m in f.modules()] == modes
    assert all(p.grad is None for p in f.parameters()) and not ref.requires_grad
    with pytest.raises(ValueError, match="noise"):
        tsv_reference(f, E, target, n_samples=2, noise=torch.zeros(3, *E.shape, dtype=E.dtype))


# ---------------------------------------------------------------------- masking through PIL
def test_mask_image_pil_blacks_out_exactly_the_patches_mask_images_does():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (3, 16, 16, 3), dtype=np.uint8)     # no black pixels before masking
    masks = mask_random(3, 4, 5, generator=torch.Generator().manual_seed(0))
    ours = mask_images(images, masks, "black")
    for i in range(3):
        pil = np.asarray(mask_image_pil(images[i], masks[i]))
        assert pil.dtype == np.uint8 and np.array_equal(pil, ours[i])
        assert (pil == 0).all(-1).sum() == 5 * 4 * 4                     # 5 patches of 4 x 4 pixels


@pytest.mark.parametrize("name", ["resnet18", "vit_p8"])
def test_per_image_pil_evaluation_equals_batched_evaluation(name):
    torch.manual_seed(0)
    ev = build_toy_evaluator(name, n_classes=4, image_size=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)).eval()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 5)
    masks = mask_random(5, 4, 6, generator=torch.Generator().manual_seed(1))
    ref = evaluate_masked_reference(ev, images, labels, masks)
    ours = evaluate_masked(ev.predict_proba, images, labels, masks, batch_size=2)
    np.testing.assert_allclose(ref["p_true"], ours["p_true"], rtol=0, atol=1e-5)
    assert ref["correct"].tolist() == ours["correct"].tolist()
    assert ref["n_masked"].tolist() == ours["n_masked"].tolist() == [6] * 5
    # an independent forward pass of the hand-masked, hand-normalised images
    x = torch.from_numpy(mask_images(images, masks)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    with torch.no_grad():
        p = ev.model(x).softmax(1)[torch.arange(5), torch.from_numpy(labels)]
    np.testing.assert_allclose(ref["p_true"], p.numpy(), rtol=0, atol=1e-5)


def test_per_image_pil_evaluation_with_a_resize():
    """16 → 24 px: PIL resizes uint8 (and rounds), ours resizes float tensors; close, not equal."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 11 * 11, 3))
    spec = {"name": "tiny", "resize": [24, 24], "crop": None, "interpolation": "bilinear", "antialias": True,
            "mean": [0.5] * 3, "std": [0.25] * 3, "n_classes": 3}
    ev = Evaluator(net, spec).eval()
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    masks = mask_random(3, 4, 3, generator=torch.Generator().manual_seed(2))
    ref = evaluate_masked_reference(ev, images, [0, 1, 2], masks)
    ours = evaluate_masked(ev.predict_proba, images, [0, 1, 2], masks)
    np.testing.assert_allclose(ref["p_true"], ours["p_true"], rtol=0, atol=2e-2)
    explicit = evaluate_masked_reference(net, images, [0, 1, 2], masks, size=(24, 24), mean=[0.5] * 3, std=[0.25] * 3)
    np.testing.assert_array_equal(explicit["p_true"], ref["p_true"])
    # torchvision's short-side resize + centre crop is not the scripts' preprocessing: say so
    tv = Evaluator(net, imagenet_spec("resnet18"))
    with pytest.raises(ValueError, match="crops"):
        evaluate_masked_reference(tv, images, [0, 1, 2], masks)


# ---------------------------------------------------------------------- uncached sampling
def test_sample_uncached_is_greedy_and_equals_the_kv_cached_sampler():
    from cortex_nb.vqgm.taming_config import build_from_config
    from cortex_nb.vqgm.taming_shapes import tiny_cin_config
    from cortex_nb.vqgm import VQGM

    vq = VQGM(build_from_config(tiny_cin_config(n_layer=2)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                                   # larger weights: clear argmax margins
        for p in vq.model.transformer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    labels = [0, 1, 2, 3, 4]
    got = sample_uncached(vq, labels)
    # independent greedy loop: the whole prefix through the GPT at every step
    x = torch.tensor(labels).reshape(-1, 1)
    with torch.no_grad():
        for _ in range(vq.m * vq.m):
            logits, _ = vq.model.transformer(x)
            x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert got.shape == (5, vq.m, vq.m) and got.dtype == torch.int64
    assert torch.equal(got, x[:, 1:].reshape(-1, vq.m, vq.m))
    assert torch.equal(got, vq.sample(labels, top_k=1))


# ---------------------------------------------------------------------- benchmarks/report.py
def _row(**kw):
    base = {"benchmark": "TSV: ours vs authors' loop", "size": "toy CE, B=25", "ours": "ours",
            "alternative": "reference", "ours_s": 0.5, "alternative_s": 10.0, "ratio": 20.0,
            "goal": "≥ 15×", "goal_min": 15.0, "met": True, "agreement": "rel err 1e-7 (tol 1e-05)"}
    return {**base, **kw}


def test_report_renders_the_table_from_json_files(tmp_path):
    bench, timings = tmp_path / "benchmarks", tmp_path / "timings"
    bench.mkdir()
    timings.mkdir()
    machine = {"cpu": "Fake CPU 9000", "cores_logical": 2, "cores_usable": 2, "torch": "2.14.1",
               "torch_threads": 2, "date": "2026-01-01 00:00 UTC", "loadavg": [1.5, 1.0, 1.0]}
    (bench / "tsv.json").write_text(json.dumps({
        "name": "tsv", "quick": False, "machine": machine, "wall_s": 12.0, "notes": ["a note"],
        "rows": [_row(), _row(benchmark="TSV: ours vs captum NoiseTunnel", alternative="captum",
                              alternative_s=0.45, ratio=0.9, goal="≥ 0.95×", goal_min=0.95, met=False)]}))
    (bench / "generation.json").write_text(json.dumps({
        "name": "generation", "quick": True, "machine": machine, "wall_s": 3.0,
        "rows": [_row(benchmark="generation: KV cache vs uncached", size="toy GPT, B=4", alternative="uncached",
                      ours_s=0.25, alternative_s=1.0, ratio=4.0, goal="— (reported)", goal_min=None, met=None)],
        "extra": {"storage": [{"size": "paper", "m": 16, "d": 256, "ours_bytes_per_sample": 512.0,
                               "reference_bytes_per_sample": 262272, "ratio": 512.25}]}}))
    (timings / "00_toy_vqgm.txt").write_text("00_toy_vqgm 284.31 1048576\n")
    (timings / "01_generate_dataset.txt").write_text("01_generate_dataset 139\n")   # older format
    out = tmp_path / "benchmarks.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--bench-dir", str(bench),
                        "--timings", str(timings), "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    md = out.read_text()
    lines = md.splitlines()
    assert "| benchmark | size | ours s | alternative s | ratio | goal | met? |" in lines
    # tsv comes first (fixed order), values at 3 significant digits, ratio with ×
    speed = lines[lines.index("| benchmark | size | ours s | alternative s | ratio | goal | met? |") + 2:]
    assert speed[0] == "| TSV: ours vs authors' loop | toy CE, B=25 | 0.5 | 10 (reference) | 20.0× | ≥ 15× | yes |"
    assert speed[1] == "| TSV: ours vs captum NoiseTunnel | toy CE, B=25 | 0.5 | 0.45 (captum) | 0.90× | ≥ 0.95× | **no** |"
    assert speed[2] == "| generation: KV cache vs uncached | toy GPT, B=4 | 0.25 | 1 (uncached) | 4.00× | — (reported) | — |"
    assert "**Quick mode**" in md and "generation" in md.split("**Quick mode**")[1].splitlines()[0]
    assert "| paper (m 16, d 256) | 512 | 262,272 | 512× |" in lines
    assert "| 00_toy_vqgm | 284 | 1024 |" in lines and "| 01_generate_dataset | 139 | — |" in lines
    assert "| **total** | 423 | 1024 (max) |" in lines
    assert "Fake CPU 9000" in md and "- tsv: a note" in lines
    assert "rel err 1e-7 (tol 1e-05)" in md

    # no timing files: say so
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--bench-dir", str(bench),
                        "--timings", str(tmp_path / "none"), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "not measured, run make all" in out.read_text()


def test_report_lists_result_files_of_another_schema(tmp_path):
    (tmp_path / "paper_scale.json").write_text(json.dumps({"name": "paper_scale", "title": "Paper-scale estimate",
                                                           "quick": False, "table": {}}))
    (tmp_path / "paper_scale.md").write_text("# estimate\n")
    out = tmp_path / "b.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--bench-dir", str(tmp_path),
                        "--timings", str(tmp_path / "none"), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    md = out.read_text()
    assert "- paper_scale: Paper-scale estimate (see `paper_scale.md`)" in md.splitlines()
    assert "| benchmark | size | ours s | alternative s | ratio | goal | met? |" in md   # empty table, still there
