"""The paper's claims as evidence readers, and where a run's replicates are: what the claims ledger
(:mod:`cortex_nb.pipeline.ledger`, the one verdict table) judges.

A :class:`Claim` reads one replicate's tables and gives, per evaluator, the paired estimate and 95 % interval of its
least favourable case (:class:`Evidence`): a method minus its comparison on the same images, resampling the unit
the result is about (images for Fig. 3 with each image's random seeds averaged; classes for Tables 2 and 3). For a
claim over several cases (every n > 1, both extractors) the least favourable case decides, and it is the one shown.

Replicates (:func:`replicate_dirs`): r = 0 is the headline run's tables in ``results/<p>/tables``; r >= 1 the
seed replicates in ``results/<p>/seeds/r<r>/tables`` (:mod:`cortex_nb.pipeline.seeds`); machine replicates
(``results/<p>/seeds/machine-<name>/``: the headline run repeated on another CPU, its tables and profile.yaml copied
there) count like seed replicates. Settings variants (``results/<p>/variants/<name>/``: one run under other
settings, e.g. the toy profile before a cost cut) never count; the ledger shows what each says on its own, and
:func:`settings_diff` the settings it differs in, so a verdict that moves with a setting is visible.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from omegaconf import DictConfig, OmegaConf

from ..io.tables import read_table

log = logging.getLogger("cortex_nb")

__all__ = ["Evidence", "Claim", "CLAIMS", "below", "above", "unpaired", "fmt_case", "built_in",
           "replicate_dirs", "variant_dirs", "settings_diff", "machine"]


@dataclass(frozen=True)
class Evidence:
    """One replicate's evidence on one claim for one evaluator: the least favourable case's
    paired estimate and interval, whether it supports the claim and whether it is wholly against."""
    mean: float
    lo: float
    hi: float
    supports: bool
    against: bool
    case: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim of the paper (or of this companion's controls), how to read it off a replicate's
    tables (``evidence``: tables dir -> {evaluator: Evidence}) and what the toy world builds in."""
    key: str
    text: str
    evidence: Callable[[Path, DictConfig], dict[str, Evidence]]
    built_in: str


def below(mean, lo, hi, case="") -> Evidence:
    """The claim is 'a lower than b': supported when the interval of a - b lies below 0."""
    return Evidence(float(mean), float(lo), float(hi), bool(hi < 0), bool(lo > 0), case)


def above(mean, lo, hi, case="") -> Evidence:
    return Evidence(float(mean), float(lo), float(hi), bool(lo > 0), bool(hi < 0), case)


def unpaired(a, a_lo, a_hi, b, b_lo, b_hi) -> tuple[float, float, float]:
    """(a - b, lo, hi) for two estimates the tables cannot pair: the conservative interval, a's low end minus b's
    high end and a's high end minus b's low end."""
    return a - b, a_lo - b_hi, a_hi - b_lo


def fmt_case(name: str, mean: float, lo: float, hi: float, case: str = "") -> str:
    """'name: +0.123 [+0.100, +0.150] (case)': one case of a claim as the ledger shows it."""
    return f"{name}: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (f" ({case})" if case else "")


def _worst(items: list[Evidence], below: bool) -> Evidence | None:
    """The least favourable case: the highest upper bound for 'below' claims, the lowest lower bound
    for 'above' claims; it decides (every case must support the claim)."""
    if not items:
        return None
    w = max(items, key=lambda e: e.hi) if below else min(items, key=lambda e: e.lo)
    return Evidence(w.mean, w.lo, w.hi, all(e.supports for e in items), all(e.against for e in items), w.case)


def _fig3(method: str, which: str) -> Callable:
    """Fig. 3: ``method`` minus random (paired per image) below 0 -- at every n > 1 ('n>1') or at the
    smallest n ('n1')."""
    def ev(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
        df = read_table(tables, "fig3_image_level")
        if df is None:
            return {}
        d = df[(df.method == method) & df.d_random.notna()]
        d = d[d.n > 1] if which == "n>1" else d[d.n == d.n.min()]
        return {ev: _worst([below(r.d_random, r.d_random_lo, r.d_random_hi, f"n = {r.n}") for r in g.itertuples()],
                           below=True) for ev, g in d.groupby("evaluator", sort=False)}
    return ev


def _table2(a: str, b: str, kind: str = "method") -> Callable:
    """Table 2: ΔP(a) - ΔP(b) below 0 (a hurts more), class-cluster interval; ``b`` may be a prefix
    (area-matched rows name b's k)."""
    def ev(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
        df = read_table(tables, "table2_paired")
        if df is None:
            return {}
        d = df[(df.kind == kind) & (df.a == a) & df.b.astype(str).str.startswith(b) & (df.metric == "dP")]
        return {r.evaluator: below(r.mean, r.lo, r.hi, str(r.b) if kind != "method" else "") for r in d.itertuples()}
    return ev


def _fewer_patches(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    """Table 2: CE's concept sets mask fewer patches than the frequency baseline's (mean masked
    patches; the sets are the same for every evaluator). Interval: CE's upper bound minus the
    baseline's lower bound and vice versa (conservative; unpaired)."""
    df = read_table(tables, "table2_concept_level")
    if df is None:
        return {}
    ce, fr = df[df.method == "CE"].iloc[0], df[df.method == "frequency"].iloc[0]
    d = unpaired(ce.n_masked, ce.n_masked_lo, ce.n_masked_hi, fr.n_masked, fr.n_masked_lo, fr.n_masked_hi)
    return {"all": below(*d, f"{ce.n_masked:.1f} vs {fr.n_masked:.1f} patches")}


def _ce_re(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    """CE ~ RE: Table 2's ΔP(CE) - ΔP(RE) inside +-margin (an equivalence test at the interval level)."""
    df = read_table(tables, "table2_paired")
    if df is None:
        return {}
    m = float(cfg.verdicts.equivalence_margin)
    d = df[(df.kind == "method") & (df.a == "CE") & (df.b == "RE") & (df.metric == "dP")]
    return {r.evaluator: Evidence(float(r.mean), float(r.lo), float(r.hi), bool(r.lo > -m and r.hi < m),
                                  bool(r.lo > m or r.hi < -m), f"margin ±{m:g}") for r in d.itertuples()}


def _robust(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    """ViT-B/16 (toy: ViT-p4) the most robust: its ΔP under CE's concept masking minus every other
    evaluator's, on the same images, above 0 (it loses less); the least favourable rival decides."""
    df = read_table(tables, "table2_paired")
    if df is None:
        return {}
    d = df[(df.kind == "evaluator") & (df.metric == "dP")]
    if d.empty:
        return {}
    w = _worst([above(r.mean, r.lo, r.hi, f"vs {r.b}") for r in d.itertuples()], below=False)
    return {"all": w}


def _table3(a: str, b: str, metric: str) -> Callable:
    """Table 3: ΔP(a) - ΔP(b) for ``metric`` (final state, central region, class-cluster interval),
    below 0 for dP_orig and above 0 for dP_targ, for every extractor (the least favourable decides)."""
    lower = metric == "dP_orig"

    def ev(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
        df = read_table(tables, "table3_paired")
        if df is None:
            return {}
        d = df[(df.a == a) & (df.b == b) & (df.metric == metric)]
        f = below if lower else above
        return {evn: _worst([f(r.mean, r.lo, r.hi, str(r.extractor)) for r in g.itertuples()], below=lower)
                for evn, g in d.groupby("evaluator", sort=False)}
    return ev


HEAD = ("species pairs differ only in the head, a few tokens of the grid: a concept is a handful of "
        "tokens by construction")
SCENE = ("scenes correlate with species (scene_bias {scene_bias}): the baselines' frequent ids are scene ids, "
         "which carry class information too")

#: the claims judged, in README order
CLAIMS: tuple[Claim, ...] = (
    Claim("fig3_CE", "Fig. 3: masking CORTEX's (CE) top-n tokens lowers P(true) more than n random tokens, "
          "at every n > 1", _fig3("CE", "n>1"), HEAD),
    Claim("fig3_RE", "Fig. 3: the same with RE", _fig3("RE", "n>1"), HEAD),
    Claim("fig3_n1", "Fig. 3 at the smallest n (1 token; the paper's n = 5): CE below random",
          _fig3("CE", "n1"), HEAD),
    Claim("table2_fewer", "Table 2: CORTEX's (CE) concept sets mask fewer patches than the frequency baseline's",
          _fewer_patches, SCENE),
    Claim("table2_frequency", "Table 2: CORTEX (CE) lowers P(true) more than the frequency baseline",
          _table2("CE", "frequency"), SCENE),
    Claim("table2_frequency_area", "Table 2 at matched masked area: CE lowers P(true) more than the frequency "
          "baseline with k chosen to mask the same area", _table2("CE", "frequency", "area-matched"), HEAD),
    Claim("table2_class_vs_rest", "Beyond the paper: CE lowers P(true) more than the class-vs-rest baseline",
          _table2("CE", "class-vs-rest"), HEAD),
    Claim("table3_orig", "Table 3 ΔP_Orig: token selection lowers P(original) more than embedding optimisation "
          "(CE and RE)", _table3("token", "embedding", "dP_orig"),
          "pairs differ only in the head; the edited block is {region} of the grid"),
    Claim("table3_orig_control", "Table 3 ΔP_Orig beyond the control: token selection lowers P(original) more "
          "than random tokens in the same region (CE and RE)", _table3("token", "random-tokens", "dP_orig"),
          "random ids in the region already break the image: the control measures that"),
    Claim("table3_targ", "Table 3 ΔP_Targ: token selection raises P(target) more than embedding optimisation "
          "(CE and RE)", _table3("token", "embedding", "dP_targ"), "pairs differ only in the head"),
    Claim("table3_targ_control", "Table 3 ΔP_Targ beyond the control: token selection raises P(target) more than "
          "random tokens (CE and RE)", _table3("token", "random-tokens", "dP_targ"), "pairs differ only in the head"),
    Claim("ce_re", "CE ≈ RE: Table 2's ΔP under CE's and RE's concept sets agree within the margin",
          _ce_re, "an easy extraction task (both extractors ~98 % top-1 on the toy world)"),
    Claim("robust_vit", "ViT-B/16 (toy stand-in ViT-p4) is the most robust evaluator under CORTEX masking "
          "(Table 2)", _robust, "the toy ViT-p4 is a small ViT trained here, not the pretrained ViT-B/16"),
)


def built_in(template: str, cfg: DictConfig) -> str:
    """What the toy world gives a claim by construction (``template``: its :attr:`Claim.built_in`), filled in from
    the profile; '' for a VQGM that is not the toy world's, or a claim without one."""
    if not template or cfg.vqgm.source != "toy":
        return ""
    from ..method.optimize import central_region
    from ..toy.tokenizer import TokenizerConfig

    m = TokenizerConfig(**OmegaConf.to_container(cfg.vqgm.tokenizer, resolve=True)).grid
    size = cfg.optimization.region_size
    region = central_region(m, None if size is None else int(size))
    share = f"{int(region.sum())} of {m * m} positions"
    return template.format(scene_bias=cfg.world.scene_bias, region=share)


def replicate_dirs(cfg: DictConfig) -> dict:
    """{r: tables dir} of every replicate whose tables exist: r = 0 in results/<p>/tables, r >= 1 in
    results/<p>/seeds/r<r>/tables (the headline run's dir is the profile's, whatever cfg.replicate),
    and machine replicates ``"machine-<name>"`` in results/<p>/seeds/machine-<name>/tables: the
    headline run (replicate 0) made on another machine, its tables and profile.yaml copied there --
    a verdict must survive it as it survives a seed.
    A replicate whose recorded profile differs from the headline run's (other than the replicate
    number and count, threads, device, progress) is left out with a warning: its verdicts would mix settings."""
    seeds = Path(cfg.paths.seeds)
    out: dict = {0: seeds.parent / "tables"}
    for d in sorted(seeds.glob("r*/tables")):
        try:
            out[int(d.parent.name[1:])] = d
        except ValueError:
            continue
    for d in sorted(seeds.glob("machine-*/tables")):  # the headline run repeated on another machine
        out[d.parent.name] = d
    out = {r: d for r, d in out.items() if d.exists() and any(d.glob("*.csv"))}
    head = _settings(out[0]) if 0 in out else None
    keep = {}
    for r, d in out.items():
        mine = _settings(d)
        if r and head is not None and mine is not None and mine != head:
            log.warning("ledger: replicate %s (%s) ran with other settings than the headline run; left out "
                        "(rerun `make seeds`)", r, d)
            continue
        keep[r] = d
    return keep


#: profile keys that may differ between the replicates of one ledger: run plumbing, and the
#: sections no claim of the table reads (notebook 07's faithfulness tests, notebook 08's bias test, the robustness
#: reports), so adding or changing them does not orphan the replicates
_FREE = ("replicate", "replicates", "progress", "threads", "device", "faithfulness", "bias", "robustness")


def variant_dirs(cfg: DictConfig) -> dict[str, Path]:
    """{name: tables dir} of the settings variants in results/<p>/variants/<name>/tables: a run of the
    same claims under OTHER settings (its profile.yaml beside its tables, e.g. the toy profile before a
    cost cut). They never count towards a verdict; the ledger shows what each would say, so a
    verdict that moves with a setting is visible."""
    root = Path(cfg.paths.seeds).parent / "variants"
    return {d.parent.name: d for d in sorted(root.glob("*/tables")) if any(d.glob("*.csv"))}


def settings_diff(tables: Path, head: Path) -> str:
    """The profile keys (dotted) whose values differ between two runs' profile.yaml, as
    'key: theirs (headline: ours)'; '' when either is not recorded."""
    a, b = _settings(tables), _settings(head)
    if a is None or b is None:
        return ""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    fa, fb = flat(a), flat(b)
    keys = [k for k in dict.fromkeys([*fb, *fa]) if fa.get(k, "(absent)") != fb.get(k, "(absent)")
            and not k.startswith("paths.")]
    return ", ".join(f"{k}: {fa.get(k, '(absent)')} (headline: {fb.get(k, '(absent)')})" for k in keys)


def _with_defaults(recorded: dict, base: dict) -> dict:
    """``recorded`` with every key it lacks taken from ``base`` (nested): a key added to the profiles after a run
    was recorded is read at its default, and a new key's default is, by the project's rule, the behaviour before
    it existed (world.classes null = every class, dry_run false, ...)."""
    out = dict(recorded)
    for k, v in base.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def _settings(tables: Path) -> dict | None:
    """The profile a tables directory was written with (its profile.yaml beside it, keys added since taken at
    their defaults), less the keys a replicate may change; None when it is not recorded."""
    from ..io.config import PROFILE_DIR

    rec = _recorded(tables)
    if rec is None:
        return None
    base = yaml.safe_load((PROFILE_DIR / "_base.yaml").read_text()) or {}
    prof = _with_defaults(rec.get("profile", {}), {k: v for k, v in base.items() if k != "name"})
    return {k: v for k, v in prof.items() if k not in _FREE}


def _recorded(tables: Path) -> dict | None:
    """The resolved profile.yaml beside ``tables`` ({"profile", "run"}), None when not recorded."""
    p = Path(tables).parent / "profile.yaml"
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else None


def machine(tables: Path) -> str:
    """The CPU capability (and model, where recorded) of the run that wrote ``tables``."""
    rec = _recorded(tables)
    if rec is None:
        return "?"
    run = rec.get("run", {})
    return " ".join(str(x) for x in (run.get("cpu"), run.get("cpu_capability"), f"{run.get('threads')} threads")
                    if x and x != "None threads")
