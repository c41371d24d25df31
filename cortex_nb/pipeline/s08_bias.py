"""Section 08 (toy world only): does the generator inherit the world's scene bias, and do concept tokens detect it?

Every species prefers a scene (``toyworld.PREFERRED_SCENE``; drawn there with probability ``world.scene_bias``,
0.65, else uniformly among the other three), and the class-conditional prior learned from those images. The
published version of CORTEX detects bias this way: concept tokens of an attribute, then how often each group's
generated images hold them, compared with Cliff's delta. Here the truth is known twice over:

1. **Scene concept tokens.** A scene extractor (CE, the extractors' recipe and fit loop, 4 classes) is trained on
   real toy images encoded to tokens and labelled by scene, rendered with scene and species *independent*
   (``scene_bias`` 0.25): trained on the biased world it could learn a species' bird tokens as a sign of its
   scene, and the test would find the bias it was fed. Its TSVs give each scene's concept tokens (eq. 6, the
   profile's n and k scaled to the grid, as notebook 04).
2. **The generator's images.** ``bias.n_per_class`` generated images per species (the generated train split);
   per image, the positions holding each scene's concept tokens, and the image's *token-detected scene* (the
   scene whose tokens it holds most). Per (species, scene), Cliff's delta of a per-image statistic between the
   species' images and the other species', with bootstrap intervals; the detected preferred scene of a species
   is the scene of its largest delta whose interval lies above 0 (the S intervals of a species Bonferroni-adjusted:
   family-wise error ``bias.alpha`` per species). Two statistics (``bias.statistic`` picks the
   headline): ``detected`` — 1 when the image's token-detected scene is s (Cliff's delta of 0/1 values is the
   difference of the two shares); ``counts`` — the number of positions holding scene s's tokens, the published
   version's reading. Counts are confounded by the bird itself: a scene's concept tokens also occur on birds
   (in the toy run, 67 % of the 'ground' tokens' positions are on a bird), and species differ in how many they
   carry, which the unbiased control exposes.
3. **Ground truth.** Each generated image is decoded and its scene measured by a pixel scene classifier (a small
   CNN trained with the same fit loop on real images, scene independent of species); the world's
   ``PREFERRED_SCENE``. A species' generator "shows the bias" when the measured share of its preferred scene has
   its interval above 0.25 (uniform). Token-detected rates (share of a species' images whose most-held scene
   tokens are scene s) against measured rates: Pearson r over the 10 x 4 cells, bootstrap interval.
4. **Controls.** The same test on real toy images rendered with ``scene_bias`` 0.25 (no bias: the deltas must be
   near 0 and no preferred scene detected) and at the world's own 0.65 (known bias, no generator in between).
   The generator itself retrained on an unbiased world (``bias.generator_control``, `make bias-control`) is not in
   `make all`: its prior alone trains for minutes.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from ..toy import world as toyworld
from ..method.bias import (detected_scenes, group_deltas, preferred_from_deltas, rates_correlation_ci, scene_onehot,
                    scene_rates, scene_token_counts)
from ..io.figures import to_uint8
from ..io.files import digest
from ..method.masking import scaled_n
from ..method.saliency import concept_tokens, top_n_positions
from ..io.tables import bootstrap_ci, write_table
from .keys import cache_path, profile_section, replicate_seed, vqgm_key
from .run import SectionResult, class_names, embed_fn, load_split, saliency_of, setup

__all__ = ["scene_data", "scene_extractor", "scene_classifier", "scene_concepts", "generated_images", "control_generator",
           "sampled_images", "scene_models", "bias_worlds", "examine", "bias_results",
           "token_check", "bias_table", "bias_summary", "fig_bias", "run", "STATISTICS"]

S = len(toyworld.SCENES)
UNIFORM = 1.0 / S
#: real-image streams of this section (seed offsets no other purpose uses, cf. run.real_toy_images)
_OFFSETS = {"train": 11, "val": 12, "control-uniform": 13, "control-world": 14, "prior-uniform": 15}


def _check_toy(cfg: DictConfig) -> None:
    if cfg.vqgm.source != "toy":
        raise ValueError("section 08 (bias) needs the toy world: its scenes and their ground truth")


def scene_data(cfg: DictConfig, vqgm, part: str, n: int, scene_bias: float) -> dict:
    """``n`` real toy images of stream ``part`` rendered with ``scene_bias``, encoded by the VQGM:
    {"images" (n, H, W, 3) uint8, "tokens" (n, m, m) int64, "labels" (species), "scenes", "masks" (parts)}."""
    b = toyworld.sample(int(n), seed=int(cfg.seed) * 1000 + _OFFSETS[part], n_classes=int(cfg.world.n_classes),
                        image_size=int(cfg.world.image_size), scene_bias=float(scene_bias))
    tokens = vqgm.encode(toyworld.to_tensor(b.images).to(vqgm.device)).cpu().long()
    return {"images": b.images, "tokens": tokens.numpy(), "labels": np.asarray(b.labels, np.int64),
            "scenes": np.asarray(b.scenes, np.int64), "masks": b.masks}


def _fit_config(cfg: DictConfig):
    from ..engine.train import FitConfig

    e, bias = cfg.extractors, cfg.bias
    return FitConfig(epochs=int(bias.epochs), lr=float(e.lr), weight_decay=float(e.weight_decay),
                     step_size=max(1, int(bias.epochs) // 2), gamma=0.1, batch_size=int(e.batch_size),
                     seed=replicate_seed(cfg), device=cfg.device, progress=bool(cfg.progress))


def _key(cfg: DictConfig, what: str, vqgm=None, keys=("n_train", "n_val", "epochs")) -> str:
    return digest({"what": what, "bias": {k: cfg.bias[k] for k in keys},
                   "extractors": profile_section(cfg, "extractors", drop=("archs", "re_variant")),
                   "seed": replicate_seed(cfg),
                   "world": profile_section(cfg, "world", drop=("scene_bias",)),
                   "vqgm": vqgm_key(vqgm) if vqgm is not None else None})


def scene_extractor(cfg: DictConfig, vqgm, train: dict, val: dict):
    """CE (the profile's width) classifying token grids by scene, trained with :func:`cortex_nb.engine.train.fit`
    on ``train`` (validated on ``val``); cached under cache/bias/. Returns the FitResult (model in eval mode)."""
    from ..method.extractors import build_extractor
    from ..engine.train import fit
    from .run import extractor_config

    torch.manual_seed(replicate_seed(cfg))
    model = build_extractor(dataclasses.replace(extractor_config(cfg, "CE", vqgm), n_classes=S))
    res = fit(model, (torch.from_numpy(train["tokens"]), torch.from_numpy(train["scenes"])),
              (torch.from_numpy(val["tokens"]), torch.from_numpy(val["scenes"])), _fit_config(cfg),
              ckpt_dir=cache_path(cfg, "bias", f"scene-CE-{_key(cfg, 'scene-CE', vqgm)}"),
              transform=embed_fn(vqgm.codebook.to(cfg.device)), compact=True)
    res.model.eval()
    return res


def scene_pixel_model(image_size: int) -> torch.nn.Module:
    """A small CNN on pixels ([-1, 1], (B, 3, H, W)) -> 4 scene logits: three strided conv blocks, global
    average pooling (a scene is a background colour and texture; no species information is needed)."""
    def block(cin, cout):
        return [torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]

    return torch.nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 32), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(32, S))


def scene_classifier(cfg: DictConfig, train: dict, val: dict):
    """The pixel scene classifier (:func:`scene_pixel_model`) trained with :func:`cortex_nb.engine.train.fit` on real
    images labelled by scene; cached under cache/bias/. Returns the FitResult."""
    from ..engine.train import fit

    torch.manual_seed(replicate_seed(cfg))
    res = fit(scene_pixel_model(int(cfg.world.image_size)),
              (toyworld.to_tensor(train["images"]), torch.from_numpy(train["scenes"])),
              (toyworld.to_tensor(val["images"]), torch.from_numpy(val["scenes"])), _fit_config(cfg),
              ckpt_dir=cache_path(cfg, "bias", f"scene-pixels-{_key(cfg, 'scene-pixels')}"), compact=True)
    res.model.eval()
    return res


@torch.no_grad()
def classify_scenes(model: torch.nn.Module, images: np.ndarray, device="cpu", batch: int = 512) -> np.ndarray:
    """(N,) the pixel classifier's scene of each uint8 image (N, H, W, 3)."""
    x = toyworld.to_tensor(images)
    return torch.cat([model(c.to(device)).argmax(1).cpu() for c in x.split(batch)]).numpy() if len(x) else \
        np.empty(0, np.int64)


def scene_concepts(cfg: DictConfig, vqgm, model: torch.nn.Module, data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each scene's concept tokens (S, k) by eq. 6 from the scene extractor's TSVs on ``data`` (real images
    labelled by scene); n and k are the profile's ``saliency.n_concept`` / ``k_concept`` scaled to the grid.
    Also returns the TSVs (N, m, m). The SmoothGrad noise is seeded (replicate seed + 808)."""
    m = int(vqgm.m)
    n, k = scaled_n(int(cfg.saliency.n_concept), m), scaled_n(int(cfg.saliency.k_concept), m)
    ts, embed = saliency_of(cfg, model), embed_fn(vqgm.codebook.to(cfg.device))
    tokens, scenes = torch.from_numpy(data["tokens"]), torch.from_numpy(data["scenes"])
    gen = torch.Generator(device=cfg.device).manual_seed(replicate_seed(cfg) + 808)
    tsv = torch.cat([ts.attribute(embed(t.to(cfg.device)), y.to(cfg.device), generator=gen).cpu()
                     for t, y in zip(tokens.split(1024), scenes.split(1024))])
    sets = concept_tokens(tokens, scenes, top_n_positions(tsv, n), S, int(vqgm.K), k)
    return sets.numpy(), tsv.numpy()


def generated_images(cfg: DictConfig, vqgm) -> dict:
    """The first ``bias.n_per_class`` generated images of each species in the generated train split, decoded:
    {"tokens", "labels", "images"}."""
    train = load_split(cfg, "train", vqgm)
    labels = np.asarray(train.labels)
    n = int(cfg.bias.n_per_class)
    idx = np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(int(cfg.world.n_classes))])
    tokens = torch.from_numpy(np.asarray(train.tokens)[idx].astype(np.int64))
    with torch.no_grad():
        images = to_uint8(vqgm.decode(tokens.to(vqgm.device)))
    return {"tokens": tokens.numpy(), "labels": labels[idx].astype(np.int64), "images": images}


def control_generator(cfg: DictConfig, vqgm):
    """The VQGM with its prior retrained on an unbiased world (opt-in control, ``bias.generator_control``): the
    profile's prior recipe (``vqgm.prior``, or the MaskGIT family's ``vqgm.maskgit``) with
    ``bias.control_prior_steps`` steps on ``bias.control_prior_n`` real toy images rendered at scene_bias 0.25 and
    encoded by the same tokenizer. Resumable and cached under cache/bias/ (the prior's checkpoint)."""
    b = cfg.bias
    data = scene_data(cfg, vqgm, "prior-uniform", int(b.control_prior_n), UNIFORM)
    key = _key(cfg, "prior-uniform", vqgm, keys=("control_prior_n", "control_prior_steps"))
    tokens, labels = torch.from_numpy(data["tokens"]), torch.from_numpy(data["labels"])
    common = dict(n_classes=int(cfg.world.n_classes), seed=int(cfg.seed), device=cfg.device,
                  ckpt_dir=cache_path(cfg, "bias", f"prior-uniform-{key}"), progress=bool(cfg.progress))
    if cfg.vqgm.family == "maskgit":
        from ..toy.maskgit import MaskGITConfig
        from ..toy.maskgit_training import train_prior as train_maskgit_prior

        recipe = MaskGITConfig(**{**profile_section(cfg.vqgm, "maskgit"), "prior_n_train": int(b.control_prior_n),
                                  "prior_steps": int(b.control_prior_steps)})
        prior, stats = train_maskgit_prior(recipe, tokens, labels, **common)
    else:
        from ..toy.prior import PriorConfig, train_prior

        recipe = PriorConfig(**{**profile_section(cfg.vqgm, "prior"), "n_train": int(b.control_prior_n),
                                "steps": int(b.control_prior_steps)})
        prior, stats = train_prior(recipe, tokens, labels, K=int(vqgm.K), **common)
    return vqgm.with_prior(prior), stats        # the same tokenizer, another prior


def sampled_images(cfg: DictConfig, vqgm) -> dict:
    """``bias.n_per_class`` images per species sampled from ``vqgm`` (the profile's sampler settings, seeded),
    decoded: {"tokens", "labels", "images"}."""
    n, C = int(cfg.bias.n_per_class), int(cfg.world.n_classes)
    labels = np.repeat(np.arange(C), n)
    s = cfg.data
    tokens = vqgm.sample(torch.from_numpy(labels), temperature=float(s.temperature), top_k=s.top_k, top_p=s.top_p,
                         seed=int(cfg.seed) + 8080).cpu()
    with torch.no_grad():
        images = to_uint8(vqgm.decode(tokens.to(vqgm.device)))
    return {"tokens": tokens.numpy(), "labels": labels.astype(np.int64), "images": images}


STATISTICS = ("detected", "counts")


def examine(cfg: DictConfig, data: dict, scene_sets: np.ndarray, classifier: torch.nn.Module, K: int) -> dict:
    """The bias test on one set of images (``data``: tokens, labels, images): per-image scene-token counts,
    token-detected and pixel-measured scenes, the (species, scene) deltas with intervals under each statistic
    (``deltas[statistic]``) and the preferred scenes they detect, the rate tables, their correlation, and per
    species whether the measured preferred-scene share exceeds uniform."""
    C, nb, seed = int(cfg.world.n_classes), int(cfg.bias.n_boot), replicate_seed(cfg)
    counts = scene_token_counts(data["tokens"], scene_sets, K)
    detected = detected_scenes(counts)
    measured = classify_scenes(classifier, data["images"], cfg.device)
    labels = data["labels"]
    per_image = {"detected": scene_onehot(detected, S), "counts": counts, "measured": scene_onehot(measured, S)}
    # a species' preferred scene is chosen among S scenes: its S intervals are Bonferroni-adjusted (family-wise
    # error bias.alpha per species), so a species with no bias is flagged with probability <= alpha / 2.
    # "measured" is the ground truth of every (species, scene) cell: the same test on the pixel classifier's scenes
    deltas = {st: group_deltas(v, labels, C, n_boot=nb, alpha=float(cfg.bias.alpha) / S, seed=seed)
              for st, v in per_image.items()}
    shows = {}
    for c in range(C):
        hit = measured[labels == c] == toyworld.PREFERRED_SCENE[c]
        share, lo, hi = bootstrap_ci(hit.astype(float), n_boot=nb, seed=seed + c)
        shows[c] = {"share": share, "lo": lo, "hi": hi, "biased": lo > UNIFORM}
    return {"counts": counts, "detected": detected, "measured": measured, "deltas": deltas,
            "preferred": {st: preferred_from_deltas(d) for st, d in deltas.items()}, "shows": shows,
            "token_rates": scene_rates(detected, labels, C, S), "measured_rates": scene_rates(measured, labels, C, S),
            "r": rates_correlation_ci(detected, measured, labels, C, S, n_boot=nb, seed=seed),
            "true_scenes": data.get("scenes")}


def token_check(cfg: DictConfig, data: dict, scene_sets: np.ndarray, K: int, name: str = "bias_scene_tokens"
                ) -> pd.DataFrame:
    """Ground truth for the scene concept tokens themselves, on real images with part masks (``data`` with
    "masks" and "scenes"): per scene, how many positions hold its tokens, the share of them on the background
    (not on the bird) and the share in images of that scene; and how often the token-detected scene is right."""
    from ..method.token_search import position_parts

    tokens, scenes = np.asarray(data["tokens"]), np.asarray(data["scenes"])
    parts = position_parts(data["masks"], tokens.shape[-1])                              # (N, m, m)
    detected = detected_scenes(scene_token_counts(tokens, scene_sets, K))
    rows = []
    for s_ in range(S):
        ids = scene_sets[s_][scene_sets[s_] >= 0]
        hold = np.isin(tokens, ids)                                                       # (N, m, m)
        n = int(hold.sum())
        rows.append({"scene": toyworld.SCENES[s_], "tokens": len(ids), "positions": n,
                     "on_background": float((parts[hold] == 0).mean()) if n else float("nan"),
                     "in_own_scene_images": float(hold[scenes == s_].sum() / n) if n else float("nan"),
                     "detected_right": float((detected[scenes == s_] == s_).mean())})
    df = pd.DataFrame(rows)
    write_table(df, cfg.paths.tables, name, display=df.round(3),
                caption="Scene concept tokens against ground truth (real toy images, scene independent of species): "
                        "positions holding each scene's tokens, the share on the background and in images of that "
                        "scene, and the share of the scene's images whose token-detected scene is right")
    return df.round(3)


def bias_table(cfg: DictConfig, results: dict, name: str = "bias") -> pd.DataFrame:
    """One row per (images, species): the world's preferred scene, its measured share with interval and whether
    it exceeds uniform; under each statistic the detected preferred scene (or 'none') and whether it is right;
    under the headline statistic (``bias.statistic``) the delta of the preferred scene with its interval."""
    names, head = class_names(cfg), str(cfg.bias.statistic)
    rows = []
    for world, r in results.items():
        d = r["deltas"][head].set_index(["group", "scene"])
        for c in range(int(cfg.world.n_classes)):
            pref, sh = int(toyworld.PREFERRED_SCENE[c]), r["shows"][c]
            dp = d.loc[(c, pref)]
            row = {"images": world, "species": names[c], "preferred": toyworld.SCENES[pref],
                   "measured_share": sh["share"], "measured_lo": sh["lo"], "measured_hi": sh["hi"],
                   "shows_bias": bool(sh["biased"])}
            for st in STATISTICS:
                det = r["preferred"][st][c]
                row[f"detected_{st}"] = toyworld.SCENES[det] if det >= 0 else "none"
                row[f"correct_{st}"] = det == pref
            row.update(delta=float(dp.delta), delta_lo=float(dp.lo), delta_hi=float(dp.hi))
            rows.append(row)
    df = pd.DataFrame(rows)
    disp = df.assign(
        measured=[f"{a:.2f} [{lo:.2f}, {hi:.2f}]" for a, lo, hi in zip(df.measured_share, df.measured_lo,
                                                                         df.measured_hi)],
        delta=[f"{a:+.2f} [{lo:+.2f}, {hi:+.2f}]" for a, lo, hi in zip(df.delta, df.delta_lo, df.delta_hi)],
    )[["images", "species", "preferred", "measured", "shows_bias", *[f"detected_{st}" for st in STATISTICS],
       "delta"]].rename(columns={"delta": f"delta ({head}) of preferred"})
    write_table(df, cfg.paths.tables, name, display=disp,
                caption="Scene bias per species: the world's preferred scene, the share of the images measured in it "
                        "by the pixel classifier (interval over images; shows_bias: above 0.25), the scene detected "
                        "from scene concept tokens under each statistic (largest Cliff's delta against the other "
                        f"species with its interval above 0), and the {head} delta of the preferred scene")
    return disp


def bias_summary(cfg: DictConfig, results: dict, accuracy: dict, name: str = "bias_summary") -> pd.DataFrame:
    """One row per (set of images, statistic): species whose images show the bias (measured), for how many of
    those the detected preferred scene is right, detections the measurement does not support (the same test on
    the pixel-measured scenes has no interval above 0 for the detected scene), the largest |delta|, the share of
    delta intervals containing 0, the correlation of the 40 deltas with the measured ones, and the correlation
    of token-detected with measured rates (the same for both statistics); the models' accuracy."""
    rows = []
    for world, r in results.items():
        C = len(r["shows"])
        biased = [c for c in range(C) if r["shows"][c]["biased"]]
        truth = r["deltas"]["measured"].set_index(["group", "scene"])
        for st in STATISTICS:
            pref, d = r["preferred"][st], r["deltas"][st]
            unsupported = [c for c in range(C) if pref[c] >= 0 and not truth.loc[(c, pref[c]), "lo"] > 0]
            rows.append({"images": world, "statistic": st, "species_biased": len(biased),
                         "detected_right": sum(pref[c] == int(toyworld.PREFERRED_SCENE[c]) for c in biased),
                         "detected_unsupported": len(unsupported),
                         "max_abs_delta": float(d.delta.abs().max()),
                         "deltas_spanning_0": float(((d.lo <= 0) & (d.hi >= 0)).mean()),
                         "delta_r_vs_measured": float(np.corrcoef(d.delta, r["deltas"]["measured"].delta)[0, 1]),
                         "r": r["r"][0], "r_lo": r["r"][1], "r_hi": r["r"][2]})
    df = pd.DataFrame(rows)
    if CONTROL in results and results[CONTROL].get("true_scenes") is not None:   # the classifier on known scenes
        accuracy = {**accuracy, "pixel_classifier_control_acc":
                    float((results[CONTROL]["measured"] == results[CONTROL]["true_scenes"]).mean())}
    for k, v in accuracy.items():
        df[k] = v
    disp = df.assign(r=[f"{a:.2f} [{lo:.2f}, {hi:.2f}]" for a, lo, hi in zip(df.r, df.r_lo, df.r_hi)]).drop(
        columns=["r_lo", "r_hi", *accuracy]).round(3)
    write_table(df, cfg.paths.tables, name, display=disp,
                caption="The bias test per set of images and per-image statistic: species whose images show their "
                        "preferred scene above uniform (measured), how many of those the tokens detect right, "
                        "detections the pixel-measured scenes do not support, the largest |Cliff's delta|, the share "
                        "of delta intervals containing 0, Pearson r of the (species x scene) deltas with the measured "
                        "ones, and of token-detected vs measured rates")
    return disp


def fig_bias(cfg: DictConfig, results: dict, worlds: tuple[str, ...] | None = None, name: str = "fig_bias"):
    """Per set of images (a row each): species x scene heat maps of token-detected rates, measured rates, and
    Cliff's delta of the headline statistic (dots: interval above 0; crosses: the world's preferred scene)."""
    import matplotlib.pyplot as plt

    from ..io.figures import save_figure

    worlds = tuple(worlds or results)
    names, head = class_names(cfg), str(cfg.bias.statistic)
    C = len(next(iter(results.values()))["shows"])
    fig, axes = plt.subplots(len(worlds), 3, figsize=(12, 0.6 + 3.4 * len(worlds)), sharey=True,
                             squeeze=False, layout="constrained")
    for row, world in zip(axes, worlds):
        r = results[world]
        piv = r["deltas"][head].pivot(index="group", columns="scene", values=["delta", "holds"])
        delta, holds = piv["delta"].to_numpy(float), piv["holds"].to_numpy(bool)
        rr, lo, hi = r["r"]
        panels = [(r["token_rates"], f"{world}\ntoken-detected scene (share of images)", "viridis", (0, 1)),
                  (r["measured_rates"], f"measured scene (pixel classifier); r = {rr:.2f} [{lo:.2f}, {hi:.2f}]",
                   "viridis", (0, 1)),
                  (delta, f"Cliff's δ ({head}) vs the other species", "RdBu_r", (-1, 1))]
        for j, (ax, (mat, title, cmap, (vlo, vhi))) in enumerate(zip(row, panels)):
            im = ax.imshow(mat, cmap=cmap, vmin=vlo, vmax=vhi, aspect="auto")
            for c in range(C):
                for s_ in range(S):
                    dark = mat[c, s_] < 0.55 if cmap == "viridis" else abs(mat[c, s_]) > 0.6
                    ax.text(s_, c, f"{mat[c, s_]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
                ax.plot(int(toyworld.PREFERRED_SCENE[c]), c, "x", color="red", ms=14, mew=1, alpha=0.6)
            if j == 2:
                ys, xs = np.nonzero(holds)
                ax.plot(xs + 0.33, ys - 0.28, ".", color="black", ms=5)
            ax.set_xticks(range(S), toyworld.SCENES)
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        row[0].set_yticks(range(C), names[:C])
    fig.suptitle("Scene bias per species (x: the world's preferred scene; dot: δ interval above 0)", fontsize=10)
    save_figure(fig, cfg.paths.figures, name)
    return fig


def scene_models(cfg: DictConfig, vqgm) -> dict:
    """Step 1 of the section: the scene extractor and the pixel scene classifier, trained (or loaded) on real
    toy images with scene independent of species, and the scene concept tokens from the extractor's TSVs:
    {"train", "val", "extractor", "classifier" (FitResults), "sets" (S, k), "accuracy"}."""
    _check_toy(cfg)
    b = cfg.bias
    train = scene_data(cfg, vqgm, "train", int(b.n_train), UNIFORM)
    val = scene_data(cfg, vqgm, "val", int(b.n_val), UNIFORM)
    ext, pix = scene_extractor(cfg, vqgm, train, val), scene_classifier(cfg, train, val)
    sets, _ = scene_concepts(cfg, vqgm, ext.model, train)
    return {"train": train, "val": val, "extractor": ext, "classifier": pix, "sets": sets,
            "accuracy": {"scene_extractor_val_acc": float(ext.best_val_acc),
                         "pixel_classifier_val_acc": float(pix.best_val_acc)}}


CONTROL = "real, scene_bias 0.25 (control)"
GENERATOR_CONTROL = "generated, prior trained at scene_bias 0.25 (control)"


def bias_worlds(cfg: DictConfig, vqgm) -> dict:
    """Step 2: the sets of images tested, {name: {"tokens", "labels", "images"[, "scenes", "masks"]}}: the
    generator's ("generated"), the unbiased real control, real images at the world's own bias, and with
    ``bias.generator_control`` the samples of a prior retrained on an unbiased world."""
    n = int(cfg.bias.n_per_class) * int(cfg.world.n_classes)
    worlds = {"generated": generated_images(cfg, vqgm),
              CONTROL: scene_data(cfg, vqgm, "control-uniform", n, UNIFORM),
              f"real, scene_bias {float(cfg.world.scene_bias):g}": scene_data(cfg, vqgm, "control-world", n,
                                                                              float(cfg.world.scene_bias))}
    if bool(cfg.bias.generator_control):
        worlds[GENERATOR_CONTROL] = sampled_images(cfg, control_generator(cfg, vqgm)[0])
    return worlds


def bias_results(cfg: DictConfig, vqgm) -> tuple[dict, dict, dict]:
    """Steps 1-3: the scene models, the sets of images tested and each set's test (:func:`examine`):
    (models, worlds, {world: results})."""
    models = scene_models(cfg, vqgm)
    worlds = bias_worlds(cfg, vqgm)
    results = {w: examine(cfg, d, models["sets"], models["classifier"].model, int(vqgm.K)) for w, d in worlds.items()}
    return models, worlds, results


def run(cfg: DictConfig, composed=None) -> SectionResult:
    """Everything notebook 08 shows: the scene models and their accuracy, the scene concept tokens checked
    against the part masks, the bias test on the generated images and on the controls, the tables and the
    figure."""
    from .run import get_vqgm

    setup(cfg)
    _check_toy(cfg)
    vqgm = composed.vqgm if composed is not None else get_vqgm(cfg)
    models, worlds, results = bias_results(cfg, vqgm)
    accuracy = models["accuracy"]
    out = SectionResult("bias")
    # with the opt-in generator control the tables get their own names: `make all`'s stay as they are
    sfx = "_generator_control" if bool(cfg.bias.generator_control) else ""
    out.tables["bias_scene_tokens"] = token_check(cfg, worlds[CONTROL], models["sets"], int(vqgm.K))
    out.tables["bias_summary"] = bias_summary(cfg, results, accuracy, name=f"bias_summary{sfx}")
    out.tables["bias"] = bias_table(cfg, results, name=f"bias{sfx}")
    out.figures["fig_bias"] = fig_bias(cfg, results, name=f"fig_bias{sfx}")
    out.values.update(results=results, models=models, accuracy=accuracy, worlds=worlds)
    return out
