"""Benchmark: the paper's models at their real shapes through the real code path, random weights (issue #17).

What ``benchmarks/paper_scale.py`` extrapolates from a 4-layer slice and FLOP counts, measured end to end here:
taming's cin transformer at its released shapes (1.4 B-parameter GPT, f16 VQGAN with a 16384 x 256 codebook,
Labelator over 1000 classes) built with seeded random weights, written as a Lightning ``last.ckpt`` + config YAML
(:func:`cortex_nb.vqgm.paper_dry.write_dry_vqgm`), read back by :func:`cortex_nb.vqgm.load_vqgm` (the path the real
files take), then on ``--device``:

- class-conditional sampling with the KV-cached sampler (``VQGM.sample``, the README recipe top-k 600 / top-p
  0.92): seconds per sample at the batch given;
- decoding to 256 px, and the four evaluators (torchvision, ``weights=None``, the real preprocessing to 224 px)
  on masked images (the black fill on the top quarter of the grid): images per second;
- CE and RE at paper size (72 M / 33 M parameters) on 16 x 16 x 256 token embeddings: training steps, the TSV
  (SmoothGrad, N = 20) and Gumbel token selection (the central 4 x 4 region), per image or per step.

``--gpu`` (``make gpu-check``): CUDA, larger counts (sampling a batch of 64, training batches of 256, TSV of 64
images, evaluators on 256 images, Gumbel on 16 images for 20 steps), written to ``gpu.json`` / ``gpu.md``; made to
finish within 8 minutes on one modern GPU with nothing downloaded. Without it: the CPU dry run's counts
(``paper_dry.json`` / ``.md``). Peak memory: the process's resident set (and CUDA's peak allocation on a GPU).
Run: ``python benchmarks/paper_dry.py [--gpu] [--samples N] [--threads 2]`` (``--quick``: small shapes, for tests).
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import _common as C
import torch

from cortex_nb.vqgm.paper_dry import DRY_BANNER, dry_imagenet_evaluators, released_cin_config, write_dry_vqgm

QUICK = dict(gpt=dict(n_layer=1, n_head=2, n_embd=64, block_size=16),
             vqgan=dict(n_embed=1024, embed_dim=8, z_channels=8, resolution=16, ch=32, ch_mult=(1, 2, 2),
                        num_res_blocks=1, attn_resolutions=(4,)))
#: counts per mode: sampled grids (one batch), images judged, training batch, TSV images, Gumbel images and steps
COUNTS = {"cpu": dict(samples=2, judged=4, batch=8, train_steps=1, tsv=1, gumbel=1, gumbel_steps=2),
          "gpu": dict(samples=64, judged=256, batch=256, train_steps=5, tsv=64, gumbel=16, gumbel_steps=20)}
EVALUATORS = ("resnet18", "resnet50", "vit_b_16", "vit_b_32")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20      # KiB -> GiB (Linux)


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--cache", default=None)
    extra, rest = ap.parse_known_args(argv)
    args = C.parse_args(__doc__.splitlines()[0], rest)
    from cortex_nb.method.extractors import ExtractorConfig, build_extractor, count_parameters
    from cortex_nb.method.masking import mask_images
    from cortex_nb.method.optimize import central_region, select_tokens
    from cortex_nb.method.saliency import TokenSaliency
    from cortex_nb.vqgm import load_vqgm

    if extra.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device (torch.cuda.is_available() is False)")
    device = torch.device("cuda" if extra.gpu else "cpu")
    n = {**COUNTS["gpu" if extra.gpu else "cpu"]}
    if extra.samples:
        n["samples"] = int(extra.samples)
    cache = Path(extra.cache or C.ROOT / "results" / ("paper-dry-quick" if args.quick else "paper-dry") / "cache"
                 / "vqgm-dry")
    config = released_cin_config(**(QUICK if args.quick else {}))
    sec, per = {}, {}
    paths, sec["write the checkpoint (build + save)"] = timed(lambda: write_dry_vqgm(cache, config, seed=0), device)
    size_gb = paths["ckpt"].stat().st_size / 1e9
    vq, sec["load it through load_vqgm"] = timed(lambda: load_vqgm(paths["config"], paths["ckpt"], device=device),
                                                 device)
    mem = {"after load": peak_gib()}
    labels = torch.arange(n["samples"]) % vq.n_classes
    name = f"sample {n['samples']} grids in one batch (KV cache, top-k 600, top-p 0.92)"
    tokens, sec[name] = timed(lambda: vq.sample(labels, top_k=600, top_p=0.92, seed=0, batch_size=n["samples"]),
                              device)
    per["sampling, s per sample"] = sec[name] / n["samples"]
    mem["after sampling"] = peak_gib()
    reps = -(-n["judged"] // n["samples"])
    grid = tokens.repeat(reps, 1, 1)[:n["judged"]]
    with torch.no_grad():
        images, sec[f"decode {n['judged']} grids to {vq.image_size} px"] = timed(lambda: vq.decode(grid), device)
    cells = torch.zeros(len(grid), vq.m, vq.m, dtype=torch.bool)
    cells[:, : vq.m // 2, : vq.m // 2] = True
    masked = mask_images(images, cells.to(images.device), "black")
    for ename, ev in dry_imagenet_evaluators(EVALUATORS, device=device).items():
        _, s = timed(lambda: ev.predict_proba(masked), device)
        sec[f"{ename} on {len(masked)} masked images (224 px)"] = s
        per[f"{ename}, images per s"] = len(masked) / s
    mem["after evaluators"] = peak_gib()
    E = vq.embed(grid).detach()                                              # (judged, 256, 16, 16)
    sizes = {}
    for arch in ("CE", "RE"):
        torch.manual_seed(0)
        f = build_extractor(ExtractorConfig(arch=arch, d=vq.d, m=vq.m, n_classes=vq.n_classes,
                                            width=64 if args.quick else 512)).to(device)
        sizes[arch] = count_parameters(f)
        opt = torch.optim.Adam(f.parameters(), lr=1e-3)
        batch = E.repeat(-(-n["batch"] // len(E)), 1, 1, 1)[:n["batch"]]
        y = torch.arange(n["batch"], device=device) % vq.n_classes

        def train():
            for _ in range(n["train_steps"]):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(f(batch), y).backward()
                opt.step()

        train()                                                              # warm-up
        _, s = timed(train, device)
        sec[f"{arch}: {n['train_steps']} training step(s), batch {n['batch']}"] = s
        per[f"{arch} training, images per s"] = n["train_steps"] * n["batch"] / s
        f.eval()
        ts = TokenSaliency.paper(f, n_samples=20, alpha=0.2, chunk_size=1280 if extra.gpu else 80)
        k = min(n["tsv"], len(E))
        _, s = timed(lambda: ts.attribute(E[:k], labels[:k].repeat(reps)[:k].to(device),
                                          generator=torch.Generator(device=device).manual_seed(0)), device)
        sec[f"{arch}: TSV of {k} image(s) (SmoothGrad N = 20)"] = s
        per[f"{arch} TSV, images per s"] = k / s
        g = min(n["gumbel"], len(grid))
        _, s = timed(lambda: select_tokens(f, grid[:g], vq.codebook, central_region(vq.m), target=1,
                                           steps=n["gumbel_steps"]), device)
        sec[f"{arch}: Gumbel token selection, {g} image(s) x {n['gumbel_steps']} steps"] = s
        per[f"{arch} Gumbel, image-steps per s"] = g * n["gumbel_steps"] / s
    mem["peak"] = peak_gib()
    if device.type == "cuda":
        mem["cuda peak allocated"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    gpt = sum(p.numel() for p in vq.model.transformer.parameters())
    rows = [C.row(k, f"cin GPT {gpt / 1e9:.2f} B" if "sample" in k else "paper shapes", "ours", None, s, None,
                  goal="— (measured)") for k, s in sec.items()]
    out_name = "gpu" if extra.gpu else "paper_dry"
    notes = [DRY_BANNER, f"device {device}; checkpoint {size_gb:.2f} GB; GPT {gpt / 1e9:.2f} B parameters; CE "
             f"{sizes['CE'] / 1e6:.1f} M, RE {sizes['RE'] / 1e6:.1f} M parameters",
             "throughput: " + ", ".join(f"{k} {v:.3g}" for k, v in per.items()),
             "peak memory (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items())]
    C.write_result(args, out_name, "The paper's models at real shapes, random weights (paper-dry)", rows,
                   extra={"seconds": sec, "throughput": per, "peak_gib": mem, "checkpoint_gb": size_gb,
                          "gpt_parameters": gpt, "extractor_parameters": sizes, "counts": n, "device": str(device),
                          "note": DRY_BANNER}, notes=notes)
    md = [f"# {'GPU check' if extra.gpu else 'Paper-dry on CPU'}: the paper's models at real shapes, random weights",
          "", f"_{DRY_BANNER}_", "", f"Machine: {C.describe(C.machine())}; device `{device}`.", "",
          "| stage | seconds |", "|---|---:|", *[f"| {k} | {v:.3f} |" for k, v in sec.items()], "",
          "| throughput | value |", "|---|---:|", *[f"| {k} | {v:.4g} |" for k, v in per.items()], "",
          "Peak memory (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()) + ".", ""]
    (args.out / f"{out_name}.md").write_text("\n".join(md))
    return {"seconds": sec, "throughput": per, "peak_gib": mem, "per_sample": per["sampling, s per sample"]}


if __name__ == "__main__":
    main()
