"""The claims ledger (issue #18): each quantitative claim of the paper, and of the sections this companion
adds, as a named check over a run's tables, with the numbers it used. It is the companion's one verdict table:
notebook 05, README, the atlas, the book and `make verify` read it, and no other rule set judges a claim.

A check reads one run's tables and gives, for each of its cases (an evaluator, an extractor, a rival), an
estimate and its 95 % interval (:class:`~cortex_nb.pipeline.claims.Evidence`: paired where the tables
pair, conservative where they cannot). A case

- **holds** when its interval lies wholly on the claimed side (of zero, of chance, inside a margin),
- **fails** when it lies wholly on the other side,
- is **inconclusive** when it overlaps the boundary;

a check holds when every case holds, fails when any case fails, and is inconclusive otherwise.

The same check runs on every seed and machine replicate that has its tables
(:func:`~cortex_nb.pipeline.claims.replicate_dirs`). The ledger's verdict is the headline run's when every
replicate gives the same, and **inconclusive (seed-sensitive)** when they differ: a verdict that depends
on the seed or the machine is not a result. A check whose tables only the headline run has says so
("seeds: untested"). Beside the verdict: each case's estimate across the replicates (min … max), what the toy
world builds in, and what each settings variant (``results/<p>/variants/<name>``: one run under other settings,
never counted) says on its own under the same rule.

``python -m cortex_nb ledger`` writes ``tables/ledger`` (README's first table; a page of the token
atlas); `make all` runs it before the manifest. `make verify` evaluates the ledger again
(:func:`verify_ledger`) and fails naming every check recorded as holding that no longer holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from omegaconf import DictConfig

from ..io.tables import read_table, write_table
from .claims import (CLAIMS, Evidence, above, below, built_in, fmt_case, machine, replicate_dirs, settings_diff,
                     unpaired, variant_dirs)

__all__ = ["Check", "CHECKS", "case_verdict", "check_verdict", "ledger_frame", "ledger_view", "write_ledger", "verify_ledger",
           "seed_sensitivity"]


@dataclass(frozen=True)
class Check:
    """A named claim: the notebook whose tables it reads, the claim in words, those tables, how to read
    its cases off a tables directory (``evidence``: (tables dir, cfg) -> {case: Evidence}, {} without data), and
    what the toy world builds in for it (a template :func:`~cortex_nb.pipeline.claims.built_in` fills in)."""
    key: str
    notebook: str
    text: str
    tables: tuple[str, ...]
    evidence: Callable[[Path, DictConfig], dict[str, Evidence]]
    built_in: str = ""


def case_verdict(e: Evidence) -> str:
    return "holds" if e.supports else "fails" if e.against else "inconclusive"


def check_verdict(cases: dict[str, Evidence]) -> str:
    """holds (every case), fails (any case), inconclusive (otherwise); 'no data' without cases."""
    if not cases:
        return "no data"
    v = [case_verdict(e) for e in cases.values()]
    return "holds" if all(x == "holds" for x in v) else "fails" if "fails" in v else "inconclusive"


# ------------------------------------------------------------------------------------------------
# the checks beyond the paper's comparisons (claims.CLAIMS has those)


def _extractor_rows(df: pd.DataFrame) -> dict[str, pd.Series]:
    """{'CE': row, 'RE': row} of Table 1 (rows named 'CNN-based Extractor (CE)' ...)."""
    out = {}
    for _, r in df.iterrows():
        name = str(r.extractor)
        out[name[name.rfind("(") + 1:-1] if name.endswith(")") else name] = r
    return out


def _chance(cfg: DictConfig) -> float:
    classes = cfg.world.get("classes")
    return 1.0 / (len(classes) if classes else int(cfg.world.n_classes))


def _table1_chance(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    df = read_table(tables, "table1_extractor_accuracy")
    if df is None:
        return {}
    c = _chance(cfg)
    # an interval of one point (every test image right: 1.000 [1.000, 1.000]) names its value in the case, which is
    # all the ledger prints of a one-point interval
    return {k: Evidence(float(r.top1), float(r.top1_lo), float(r.top1_hi), bool(r.top1_lo > c), bool(r.top1_hi < c),
                        (f"top-1 {float(r.top1):.3f} on every resample, chance {c:.3f}"
                         if float(r.top1_lo) == float(r.top1_hi) == float(r.top1) else f"top-1, chance {c:.3f}"))
            for k, r in _extractor_rows(df).items()}


def _table1_ce_re(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    """CE's top-1 minus RE's; the tables hold no per-image pairing, so the interval is the conservative
    difference of the two intervals (CE's low end minus RE's high end, and vice versa)."""
    df = read_table(tables, "table1_extractor_accuracy")
    rows = _extractor_rows(df) if df is not None else {}
    if not {"CE", "RE"} <= set(rows):
        return {}
    ce, re = rows["CE"], rows["RE"]
    d = unpaired(ce.top1, ce.top1_lo, ce.top1_hi, re.top1, re.top1_lo, re.top1_hi)
    return {"CE − RE": above(*d, f"top-1 {ce.top1:.3f} vs {re.top1:.3f}, unpaired")}


def _localisation(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    """CE's and RE's head share minus each rival's (random, frequency, class-vs-rest); conservative interval."""
    df = read_table(tables, "localisation")
    if df is None:
        return {}
    rows = {r.method: r for r in df.itertuples()}
    out = {}
    for m in ("CE", "RE"):
        for rival in ("random", "frequency", "class-vs-rest"):
            if m in rows and rival in rows:
                a, b = rows[m], rows[rival]
                d = unpaired(a.head_share, a.lo, a.hi, b.head_share, b.lo, b.hi)
                out[f"{m} vs {rival}"] = above(*d, f"{a.head_share:.3f} vs {b.head_share:.3f} on the head")
    return out


def _faithfulness(direction: str) -> Callable:
    """Random's deletion (insertion) area minus the TSV's, paired on the same images, above (below) 0."""
    def ev(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
        df = read_table(tables, "faithfulness_auc")
        if df is None:
            return {}
        d = df[(df.method == "random") & (df.direction == direction) & df.d_tsv.notna()]
        f = above if direction == "deletion" else below
        return {f"{r.evaluator} vs {r.vs_tsv_of}": f(r.d_tsv, r.d_tsv_lo, r.d_tsv_hi, f"random {r.auc:.3f}")
                for r in d.itertuples()}
    return ev


def _sanity(measure: str, scale_check: str) -> Callable:
    """After cascading randomisation of every block, the TSV's ``measure`` (spearman: the whole map;
    jaccard: T*_concept) against the trained extractor's, minus the same measure on ``scale_check`` (the
    scale row: 'two trained extractors' = CE vs RE, 'two random initialisations' per extractor), below 0:
    the randomised model's explanation is further from the trained one's than that scale. Conservative
    interval (different image sets or pairings)."""
    def ev(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
        df = read_table(tables, "faithfulness_sanity")
        if df is None:
            return {}
        tsv = df[df.method == "TSV"]
        out = {}
        for ex, g in tsv[tsv.check == "cascading"].groupby("extractor", sort=False):
            last = g.loc[g.step.idxmax()]
            shared = scale_check == "two trained extractors"          # one row for both extractors (CE vs RE)
            scale = tsv[(tsv.check == scale_check) & ((tsv.extractor == ex) | shared)]
            if scale.empty:
                continue
            s = scale.iloc[0]
            cols = [measure, f"{measure}_lo", f"{measure}_hi"]
            d = unpaired(*last[cols], *s[cols])
            out[str(ex)] = below(*d, f"{last[measure]:.3f} fully randomised vs {s[measure]:.3f} for {scale_check}")
        return out
    return ev


def _sanity_control(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    """The frequency baseline reads no model: every randomisation must leave it exactly as it was (ρ = J = 1)."""
    df = read_table(tables, "faithfulness_sanity")
    if df is None:
        return {}
    d = df[df.method.str.startswith("frequency")]
    out = {}
    for ex, g in d.groupby("extractor", sort=False):
        low = float(min(g.spearman.min(), g.jaccard.min()))
        out[str(ex)] = Evidence(low, low, low, low > 1 - 1e-9, low < 1 - 1e-9,
                                f"lowest ρ or Jaccard {low:g} over {len(g)} randomisations")
    return out


def _bias_row(tables: Path, images: str, statistic: str):
    df = read_table(tables, "bias_summary")
    if df is None:
        return None
    d = df[(df.images.str.startswith(images)) & (df.statistic == statistic)]
    return None if d.empty else d.iloc[0]


def _bias_detected(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
    r = _bias_row(tables, "generated", "detected")
    if r is None:
        return {}
    right, biased = int(r.detected_right), int(r.species_biased)
    return {"generated": Evidence(right, right, right, biased > 0 and right == biased, right < biased,
                                  f"{right} of {biased} biased species; token-detected vs measured rates "
                                  f"r {r.r:.2f} [{r.r_lo:.2f}, {r.r_hi:.2f}]")}


def _bias_control(statistic: str) -> Callable:
    """The unbiased real world: no flag the measured scenes do not support, every |δ| negligible."""
    def ev(tables: Path, cfg: DictConfig) -> dict[str, Evidence]:
        from ..method.bias import NEGLIGIBLE_DELTA

        r = _bias_row(tables, "real, scene_bias 0.25", statistic)
        if r is None:
            return {}
        bad, big = int(r.detected_unsupported), float(r.max_abs_delta)
        ok = bad == 0 and big < NEGLIGIBLE_DELTA
        return {"control": Evidence(big, big, big, ok, not ok,
                                    f"{bad} unsupported flag(s), max |δ| {big:.3f} (negligible < {NEGLIGIBLE_DELTA})")}
    return ev


_CLAIM = {c.key: c for c in CLAIMS}


def _from_claim(key: str, notebook: str, tables: tuple[str, ...]) -> Check:
    c = _CLAIM[key]
    return Check(key, notebook, c.text, tables, c.evidence, c.built_in)


#: the checks, in the paper's order, then the sections beyond it
CHECKS: tuple[Check, ...] = (
    Check("table1_above_chance", "02", "Table 1: the information extractors (CE, RE) classify the generated images' "
          "token embeddings above chance (top-1)", ("table1_extractor_accuracy",), _table1_chance),
    Check("table1_ce_vs_re", "02", "Table 1: CE is more accurate than RE (paper: 53.07 vs 51.43 % top-1)",
          ("table1_extractor_accuracy",), _table1_ce_re),
    _from_claim("fig3_CE", "03", ("fig3_image_level",)),
    _from_claim("fig3_RE", "03", ("fig3_image_level",)),
    _from_claim("fig3_n1", "03", ("fig3_image_level",)),
    _from_claim("table2_fewer", "04", ("table2_concept_level",)),
    _from_claim("table2_frequency", "04", ("table2_paired",)),
    _from_claim("table2_frequency_area", "04", ("table2_paired",)),
    _from_claim("table2_class_vs_rest", "04", ("table2_paired",)),
    _from_claim("robust_vit", "04", ("table2_paired",)),
    _from_claim("ce_re", "04", ("table2_paired",)),
    _from_claim("table3_orig", "05", ("table3_paired",)),
    _from_claim("table3_targ", "05", ("table3_paired",)),
    _from_claim("table3_orig_control", "05", ("table3_paired",)),
    _from_claim("table3_targ_control", "05", ("table3_paired",)),
    Check("localisation", "04", "Beyond the paper: CE's and RE's top-n positions fall on the head (ground truth) "
          "more often than random, frequency and class-vs-rest positions", ("localisation",), _localisation),
    Check("faith_deletion", "07", "Faithfulness: deleting the TSV's most salient positions first lowers P(true) "
          "faster than deleting random ones (deletion area, paired)", ("faithfulness_auc",), _faithfulness("deletion")),
    Check("faith_insertion", "07", "Faithfulness: inserting the TSV's most salient positions first raises P(true) "
          "faster than random ones (insertion area, paired)", ("faithfulness_auc",), _faithfulness("insertion")),
    Check("sanity_concept", "07", "Sanity check: T*_concept of a fully randomised extractor overlaps the trained "
          "one's less than two trained extractors (CE, RE) overlap each other (Jaccard)",
          ("faithfulness_sanity",), _sanity("jaccard", "two trained extractors")),
    Check("sanity_map", "07", "Sanity check: the whole TSV map of a fully randomised extractor is further from the "
          "trained one's than two random initialisations are from each other (Spearman ρ)",
          ("faithfulness_sanity",), _sanity("spearman", "two random initialisations")),
    Check("sanity_control", "07", "Sanity check's control: the frequency baseline, which reads no model, is "
          "unchanged by every randomisation", ("faithfulness_sanity",), _sanity_control),
    Check("bias_detected", "08", "Bias (the published version's application): the scene concept tokens find "
          "every species' preferred scene in the generator's images", ("bias_summary",), _bias_detected),
    Check("bias_control", "08", "Bias control: on real images with scene independent of species the "
          "token-detected test flags no bias the measured scenes do not show", ("bias_summary",),
          _bias_control("detected")),
    Check("bias_counts_control", "08", "Bias control for the published version's statistic (counts of the scene's "
          "concept tokens): no unsupported flag on the unbiased world", ("bias_summary",), _bias_control("counts")),
)


# ------------------------------------------------------------------------------------------------
# the ledger


def _fmt(name: str, e: Evidence) -> str:
    if e.lo == e.hi == e.mean:
        return f"{name}: {e.case}" if e.case else f"{name}: {e.mean:g}"
    return fmt_case(name, e.mean, e.lo, e.hi, e.case)


def seed_sensitivity(per_rep: dict) -> str:
    """In words: which replicates gave which verdict."""
    if len(per_rep) < 2:
        return "untested (only this run has the tables)"
    groups: dict[str, list[str]] = {}
    for r, v in per_rep.items():
        groups.setdefault(v, []).append(f"r{r}" if isinstance(r, int) else str(r))
    if len(groups) == 1:
        return f"same in all {len(per_rep)} ({', '.join(next(iter(groups.values())))})"
    return "differ: " + "; ".join(f"{v} in {', '.join(rs)}" for v, rs in groups.items())


def _spread(per_rep_cases: dict) -> str:
    """Each case's point estimate across the replicates that have it, 'case: min … max'; '' with one replicate."""
    if len(per_rep_cases) < 2:
        return ""
    names = list(dict.fromkeys(n for cases in per_rep_cases.values() for n in cases))
    parts = []
    for n in names:
        means = [cases[n].mean for cases in per_rep_cases.values() if n in cases]
        parts.append(f"{n}: {min(means):+.3f} … {max(means):+.3f}")
    return "; ".join(parts)


def ledger_frame(cfg: DictConfig, dirs: dict | None = None, notebook: str | None = None,
                 variants: dict | None = None) -> pd.DataFrame:
    """A row per check: its verdict, the headline run's verdict and numbers, each replicate's verdict, each case's
    estimate across the replicates, what the toy world builds in, and a column ``variant:<name>`` per settings
    variant (what that run alone says, by the same rule; never counted). ``notebook``: only the checks of that
    notebook's tables (notebook 05 shows its own while the others may still be running); ``variants``: {name: tables
    dir}, default the profile's (:func:`~cortex_nb.pipeline.claims.variant_dirs`)."""
    dirs = replicate_dirs(cfg) if dirs is None else dirs
    variants = variant_dirs(cfg) if variants is None else variants
    rows = []
    for check in CHECKS:
        if notebook is not None and check.notebook != notebook:
            continue
        per_rep_cases = {r: c for r, d in dirs.items() if (c := check.evidence(d, cfg))}
        per_rep = {r: check_verdict(c) for r, c in per_rep_cases.items()}
        head_cases: dict[str, Evidence] = per_rep_cases.get(0, {})
        this_run = check_verdict(head_cases)
        verdict = this_run if len(set(per_rep.values())) <= 1 else "inconclusive (seed-sensitive)"
        row = {"check": check.key, "notebook": check.notebook, "claim": check.text, "verdict": verdict,
               "this_run": this_run, "numbers": "; ".join(_fmt(n, e) for n, e in head_cases.items()),
               "cases_holding": f"{sum(e.supports for e in head_cases.values())}/{len(head_cases)}",
               "seeds": seed_sensitivity(per_rep) if per_rep else "no data",
               "replicates": " ".join(str(r) for r in per_rep), "across_replicates": _spread(per_rep_cases),
               "built_in": built_in(check.built_in, cfg), "tables": " ".join(check.tables)}
        for name, d in variants.items():
            row[f"variant:{name}"] = check_verdict(check.evidence(d, cfg))
        rows.append(row)
    return pd.DataFrame(rows)


def ledger_view(df: pd.DataFrame) -> pd.DataFrame:
    """The ledger as people read it (README, notebook 05, the book): check, claim, notebook, verdict, the headline
    run's estimates and intervals, what the seeds and machines say and how far each estimate moves across them; what
    the toy world builds in and what each settings variant says on its own, where the frame has them."""
    view = pd.DataFrame({"Check": df.check, "Claim": df.claim, "NB": df.notebook, "Verdict": df.verdict,
                         "This run: estimate [95% interval] per case": df.numbers, "Seeds and machines": df.seeds})
    if "across_replicates" in df and df.across_replicates.fillna("").astype(str).str.len().any():
        view["Across replicates (min … max)"] = df.across_replicates.fillna("")
    if "built_in" in df and df.built_in.fillna("").astype(str).str.len().any():
        view["Toy world builds in"] = df.built_in.fillna("")
    variants = [c for c in df.columns if c.startswith("variant:")]
    if variants:
        view["Under other settings, not counted"] = [
            "; ".join(f"{c.split(':', 1)[1]}: {r[c]}" for c in variants) for _, r in df.iterrows()]
    return view


def write_ledger(cfg: DictConfig, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write ``tables/ledger`` (CSV: every column; Markdown: the README's view); returns the frame."""
    dirs = replicate_dirs(cfg)
    variants = variant_dirs(cfg)
    df = ledger_frame(cfg, dirs, variants=variants) if df is None else df
    disp = ledger_view(df)
    counts = df.verdict.value_counts()
    cap = (f"The claims ledger: {len(df)} checks over this run's tables and the replicates that have them "
           f"({'; '.join(f'r{r}: {machine(d)}' if isinstance(r, int) else f'{r}: {machine(d)}' for r, d in dirs.items())}). " + ", ".join(f"{v}: {n}" for v, n in counts.items()) + ". A case holds "
           "when its 95 % interval lies wholly on the claimed side, fails when wholly on the other, is inconclusive "
           "when it overlaps; a check holds when every case holds and fails when any fails. A verdict that differs "
           "between replicates is inconclusive (seed-sensitive). `make verify` fails when a check recorded here "
           "as holding no longer holds.")
    head = dirs.get(0)
    for name, d in variants.items():
        diff = settings_diff(d, head) if head is not None else ""
        cap += f" Variant {name} (one run under other settings, never counted)" + (f": {diff}." if diff else ".")
    write_table(df, cfg.paths.tables, "ledger", display=disp, caption=cap)
    return df


def verify_ledger(cfg: DictConfig) -> list[str]:
    """Problems: each check the recorded ledger (``tables/ledger.csv``) says holds that, evaluated again on
    the tables now, does not -- named, with the numbers it now rests on."""
    recorded = read_table(cfg.paths.tables, "ledger")
    if recorded is None:
        return [f"{Path(cfg.paths.tables) / 'ledger.csv'}: no recorded ledger (run `make all PROFILE={cfg.name}`)"]
    now = ledger_frame(cfg).set_index("check")
    problems = []
    for r in recorded.itertuples():
        if r.verdict != "holds":
            continue
        if r.check not in now.index:
            problems.append(f"claim {r.check}: recorded as holding, and no such check exists any more")
            continue
        cur = now.loc[r.check]
        if cur.verdict != "holds":
            problems.append(f"claim {r.check} ({r.claim}): recorded as holding, now {cur.verdict} -- "
                            f"{cur.numbers or 'no data'}; seeds: {cur.seeds}")
    return problems


def run(cfg: DictConfig) -> pd.DataFrame:
    return write_ledger(cfg)

