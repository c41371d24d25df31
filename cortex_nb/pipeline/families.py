"""Two VQGM families side by side: every check of the claims ledger for the taming toy model (profile ``toy``)
and for another family on the same toy world (``toy-maskgit``), under the same rules and intervals.

:func:`families_frame` reads the two ledgers as written (``results/<p>/tables/ledger.csv``) and says for each
check where it holds: in both families, in one, or in neither, from each ledger's verdict (over the replicates
each has) and from the headline runs alone (replicate 0 of each, one run against one run, so that a family with
fewer replicates is not judged on other terms). ``python -m cortex_nb families --profile toy-maskgit`` writes it
as ``results/toy-maskgit/tables/families``; README shows it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from ..io.tables import read_table, write_table

__all__ = ["REFERENCE", "where_it_holds", "families_frame", "families_table", "run"]

#: the profile every other family on the toy world is compared with: the taming toy model, the paper's family
REFERENCE = "toy"


def where_it_holds(a: str, b: str, name_a: str, name_b: str) -> str:
    """'both', 'neither', '<name> only', 'open' when a verdict is neither holds nor fails in one family, or 'no data'
    when a family's ledger lacks the check."""
    if "no data" in (a, b):
        return "no data"
    held = {name_a: a == "holds", name_b: b == "holds"}
    settled = all(v in ("holds", "fails") for v in (a, b))
    if all(held.values()):
        return "both"
    if any(held.values()):
        return f"{next(n for n, h in held.items() if h)} only"
    return "neither" if settled else "open"


def families_frame(tables: dict[str, Path]) -> pd.DataFrame:
    """{family: tables dir} (two) -> a row per check of the first ledger: each family's verdict and headline-run
    verdict, and where the claim holds by each. A check one ledger lacks is 'no data' there."""
    (na, da), (nb, db) = tables.items()
    la, lb = read_table(da, "ledger"), read_table(db, "ledger")
    missing = [str(Path(d) / "ledger.csv") for d, led in ((da, la), (db, lb)) if led is None]
    if missing:
        raise FileNotFoundError(f"no claims ledger at {', '.join(missing)}: run make all for that profile first")
    lb = lb.set_index("check")
    rows = []
    for r in la.itertuples():
        o = lb.loc[r.check] if r.check in lb.index else None
        vb, tb = (o.verdict, o.this_run) if o is not None else ("no data", "no data")
        rows.append({"check": r.check, "claim": r.claim, f"verdict_{na}": r.verdict, f"verdict_{nb}": vb,
                     "holds_in": where_it_holds(r.verdict, vb, na, nb),
                     f"this_run_{na}": r.this_run, f"this_run_{nb}": tb,
                     "holds_in_this_run": where_it_holds(r.this_run, tb, na, nb),
                     f"numbers_{na}": r.numbers, f"numbers_{nb}": o.numbers if o is not None else "",
                     f"replicates_{na}": str(r.replicates), f"replicates_{nb}": str(o.replicates) if o is not None else ""})
    return pd.DataFrame(rows)


def families_table(df: pd.DataFrame, directory: str | Path, names: tuple[str, str]) -> pd.DataFrame:
    """Write ``families`` (CSV: every column; Markdown: the README's view) into ``directory``; returns the view."""
    na, nb = names
    disp = pd.DataFrame({"Check": df.check, f"{na}": df[f"verdict_{na}"], f"{nb}": df[f"verdict_{nb}"],
                         "Holds in": df.holds_in, "Headline runs alone": df.holds_in_this_run,
                         f"{nb}: estimate [95% interval] per case": df[f"numbers_{nb}"]})
    counts = df.holds_in.value_counts()
    reps = {n: sorted({r for x in df[f"replicates_{n}"] for r in str(x).split()}) for n in names}
    cap = (f"Every check of the claims ledger in two VQGM families on the same toy world, same rules: {na} "
           f"(replicates {' '.join(reps[na]) or 'none'}) and {nb} (replicates {' '.join(reps[nb]) or 'none'}). "
           + ", ".join(f"{k}: {v}" for k, v in counts.items())
           + ". 'open': inconclusive in a family (neither holds nor fails). 'Headline runs alone' compares replicate "
             "0 of each, one run against one run.")
    write_table(df, directory, "families", display=disp, caption=cap)
    return disp


def run(cfg: DictConfig) -> pd.DataFrame:
    """The profile's ledger beside the reference family's (:data:`REFERENCE`), written to the profile's tables."""
    if cfg.name == REFERENCE:
        raise ValueError(f"profile {REFERENCE!r} is the reference family: compare another profile with it "
                         f"(python -m cortex_nb families --profile toy-maskgit)")
    ref = Path(cfg.paths.root) / "results" / REFERENCE / "tables"
    df = families_frame({REFERENCE: ref, cfg.name: Path(cfg.paths.tables)})
    return families_table(df, cfg.paths.tables, (REFERENCE, cfg.name))
