"""The toy world's science gates: what a cheaper or retrained toy pipeline (fewer steps, narrower
models, shipped or retrained artifacts, another CPU) must still give before its tables mean anything.

Each gate reads one run's tables (``results/<p>/tables`` or a seed replicate's) and says pass / FAIL
with the number it rests on:

- **tokenizer**: every evaluator recognises the VQGM's reconstructions of held-out real images at
  >= 90 % of its accuracy on the real images (``vqgm_quality``, toy VQGM only);
- **prior samples**: the evaluators recognise the generated test images well above chance: mean
  accuracy over evaluators >= 80 % (``generated_test_accuracy``; chance is 1 / classes);
- **Fig. 3**: masking CORTEX's top-n tokens (CE and RE) lowers P(true) more than n random tokens at
  every n > 1 on every evaluator: the paired interval's upper end < 0 (``fig3_image_level``);
- **Table 2 area**: CE's concept sets mask fewer patches than the frequency baseline's
  (``table2_concept_level``: CE's upper end below frequency's lower end);
- **Table 2 ΔP**: CE lowers P(true) more than the frequency baseline on every evaluator (paired,
  class-cluster interval's upper end < 0; ``table2_paired``);
- **localisation**: on real images with ground-truth parts, CE's and RE's top-n positions fall on the
  head more often than the random, frequency and class-vs-rest choices (intervals disjoint;
  ``localisation``).

``python -m cortex_nb gates --profile P`` prints the table and writes ``tables/<p>/gates``; it exits
with status 1 when a gate fails (``make all`` runs it last on the toy profile; after ``make all
FROM_SCRATCH=1`` it is the check that retrained artifacts pass the same gates). Table 3's claims are
not gates: they are the paper's claims under test, judged in the verdict table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from ..io.tables import read_table, write_table

__all__ = ["Gate", "GATES", "MODEL_GATES", "science", "check", "gate_table", "run"]


@dataclass(frozen=True)
class Gate:
    name: str
    rule: str
    #: tables dir -> (passed, the numbers it rests on), or None when the run has no such table
    test: Callable[[Path], tuple[bool, str] | None]


def _tokenizer(tables: Path):
    df = read_table(tables, "vqgm_quality")
    if df is None:
        return None
    worst = df.loc[df.ratio.idxmin()]
    return bool((df.ratio >= 0.9).all()), f"lowest {worst.ratio:.3f} ({worst.evaluator})"


def _prior(tables: Path):
    df = read_table(tables, "generated_test_accuracy")
    if df is None:
        return None
    mean = float(df.acc.mean())
    return mean >= 0.8, f"mean {100 * mean:.1f}% (" + ", ".join(f"{e} {100 * a:.1f}%" for e, a in zip(df.evaluator, df.acc)) + ")"


def _fig3(tables: Path):
    df = read_table(tables, "fig3_image_level")
    if df is None:
        return None
    d = df[df.method.isin(["CE", "RE"]) & (df.n > 1)]
    if "mode" in d:
        d = d[d["mode"] == "equal_area"]
    worst = d.loc[d.d_random_hi.idxmax()]
    return bool((d.d_random_hi < 0).all()), (f"{int((d.d_random_hi < 0).sum())}/{len(d)} (method, evaluator, n) below "
                                             f"random; weakest {worst.method} {worst.evaluator} n = {int(worst.n)}: "
                                             f"{worst.d_random:+.3f} [{worst.d_random_lo:+.3f}, {worst.d_random_hi:+.3f}]")


def _area(tables: Path):
    df = read_table(tables, "table2_concept_level")
    if df is None:
        return None
    ce, fr = (df[df.method == m].iloc[0] for m in ("CE", "frequency"))
    return bool(ce.n_masked_hi < fr.n_masked_lo), f"CE {ce.n_masked:.1f} vs frequency {fr.n_masked:.1f} patches"


def _table2(tables: Path):
    df = read_table(tables, "table2_paired")
    if df is None:
        return None
    d = df[(df.kind == "method") & (df.a == "CE") & (df.b == "frequency") & (df.metric == "dP")]
    worst = d.loc[d.hi.idxmax()]
    return bool((d.hi < 0).all()), (f"CE − frequency ΔP, weakest {worst.evaluator}: {worst['mean']:+.3f} "
                                    f"[{worst.lo:+.3f}, {worst.hi:+.3f}]")


def _localisation(tables: Path):
    df = read_table(tables, "localisation")
    if df is None:
        return None
    r = df.set_index("method")
    others = [m for m in ("random", "frequency", "class-vs-rest") if m in r.index]
    top = max(r.loc[m, "hi"] for m in others)
    ok = all(r.loc[a, "lo"] > top for a in ("CE", "RE") if a in r.index)
    return ok, ", ".join(f"{m} {100 * r.loc[m, 'head_share']:.1f}%" for m in r.index)


GATES = (
    Gate("tokenizer", "every evaluator recognises reconstructions at >= 90% of its real accuracy", _tokenizer),
    Gate("prior samples", "generated test images recognised at >= 80% mean over evaluators", _prior),
    Gate("Fig. 3", "CE and RE below random at every n > 1 on every evaluator (paired interval)", _fig3),
    Gate("Table 2 area", "CE's concept sets mask fewer patches than the frequency baseline's", _area),
    Gate("Table 2 ΔP", "CE lowers P(true) more than the frequency baseline on every evaluator (paired)", _table2),
    Gate("localisation", "CE's and RE's top-n positions on the head more often than random / frequency / "
                         "class-vs-rest", _localisation),
)


#: the gates on the model itself; the others were set on the taming toy model's CORTEX results, which they protect
MODEL_GATES = ("tokenizer", "prior samples")


def science(cfg: DictConfig) -> bool:
    """Whether the profile's run is held to the science gates too: the taming toy model's, whose results they were
    set on. Another family's (the toy MaskGIT's) results are what is under test there: the claims ledger judges them,
    and only the model gates (:data:`MODEL_GATES`) are gates."""
    return cfg.vqgm.family == "taming"


def check(tables: str | Path, science: bool = True) -> pd.DataFrame:
    """One row per gate whose table exists: gate, rule, passed, evidence (the model gates alone without
    ``science``)."""
    rows = []
    for g in (GATES if science else [g for g in GATES if g.name in MODEL_GATES]):
        res = g.test(Path(tables))
        if res is not None:
            rows.append({"gate": g.name, "rule": g.rule, "passed": bool(res[0]), "evidence": res[1]})
    return pd.DataFrame(rows, columns=["gate", "rule", "passed", "evidence"])


def gate_table(cfg: DictConfig, df: pd.DataFrame) -> pd.DataFrame:
    """Writes tables/<p>/gates (CSV, Markdown, LaTeX) and returns the display frame."""
    disp = df.assign(passed=np.where(df.passed, "pass", "FAIL"))
    disp.columns = ["Gate", "Rule", "Result", "Evidence"]
    write_table(df, cfg.paths.tables, "gates", display=disp,
                caption="Science gates of this run (cortex_nb.pipeline.gates): what a cheaper or retrained toy "
                        "pipeline must still give")
    return disp


def run(cfg: DictConfig) -> pd.DataFrame:
    """Check the profile's tables (the replicate's, for r > 0) and write the gate table."""
    df = check(cfg.paths.tables, science(cfg))
    gate_table(cfg, df)
    return df
