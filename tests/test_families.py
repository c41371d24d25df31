"""The two VQGM families side by side (cortex_nb.pipeline.families): each check placed by both ledgers' verdicts,
on hand-written ledgers."""
import pandas as pd

from cortex_nb.pipeline.families import families_frame, families_table, where_it_holds


def _ledger(d, rows):
    d.mkdir(parents=True)
    pd.DataFrame([{"check": c, "notebook": "03", "claim": f"claim {c}", "verdict": v, "this_run": t,
                   "numbers": f"n {c}", "cases_holding": "1/1", "seeds": "", "replicates": reps,
                   "tables": "x"} for c, v, t, reps in rows]).to_csv(d / "ledger.csv", index=False)


def test_where_it_holds():
    assert where_it_holds("holds", "holds", "a", "b") == "both"
    assert where_it_holds("holds", "fails", "a", "b") == "a only"
    assert where_it_holds("inconclusive", "holds", "a", "b") == "b only"
    assert where_it_holds("fails", "fails", "a", "b") == "neither"
    assert where_it_holds("fails", "inconclusive (seed-sensitive)", "a", "b") == "open"
    assert where_it_holds("holds", "no data", "a", "b") == "no data"


def test_families_frame_places_every_check_of_the_first_ledger(tmp_path):
    _ledger(tmp_path / "a", [("c1", "holds", "holds", "0 1 2"), ("c2", "holds", "holds", "0 1 2"),
                             ("c3", "fails", "fails", "0 1 2"), ("c4", "inconclusive (seed-sensitive)", "holds", "0 1 2")])
    _ledger(tmp_path / "b", [("c1", "holds", "holds", "0"), ("c2", "inconclusive", "inconclusive", "0"),
                             ("c4", "holds", "holds", "0")])
    df = families_frame({"toy": tmp_path / "a", "mg": tmp_path / "b"}).set_index("check")
    assert list(df.index) == ["c1", "c2", "c3", "c4"]
    assert df.holds_in.to_dict() == {"c1": "both", "c2": "toy only", "c3": "no data", "c4": "mg only"}
    assert df.holds_in_this_run.to_dict() == {"c1": "both", "c2": "toy only", "c3": "no data", "c4": "both"}
    assert df.loc["c3", "verdict_mg"] == "no data"
    disp = families_table(df.reset_index(), tmp_path / "out", ("toy", "mg"))
    assert len(disp) == 4 and (tmp_path / "out" / "families.md").read_text().count("both") >= 1
    assert "replicates 0 1 2" in (tmp_path / "out" / "families.md").read_text()
