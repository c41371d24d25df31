"""The claims ledger (issue #18): interval semantics, seed sensitivity, the checks beyond the paper's comparisons."""
import pandas as pd
import pytest

from cortex_nb.io.config import load_profile
from cortex_nb.pipeline import ledger
from cortex_nb.pipeline.claims import Evidence


def ev(mean, lo, hi, below=False):
    """Evidence for 'mean above 0' (or below), classified from the interval by hand."""
    sup = hi < 0 if below else lo > 0
    against = lo > 0 if below else hi < 0
    return Evidence(mean, lo, hi, sup, against)


@pytest.mark.parametrize("cases, expected", [
    ({"a": ev(0.2, 0.1, 0.3), "b": ev(0.1, 0.05, 0.2)}, "holds"),
    ({"a": ev(0.2, 0.1, 0.3), "b": ev(0.0, -0.1, 0.1)}, "inconclusive"),     # b's interval overlaps 0
    ({"a": ev(0.2, 0.1, 0.3), "b": ev(-0.2, -0.3, -0.1)}, "fails"),          # b wholly on the other side
    ({"a": ev(0.0, -0.1, 0.1), "b": ev(-0.2, -0.3, -0.1)}, "fails"),
    ({}, "no data"),
])
def test_a_check_holds_when_every_case_holds_and_fails_when_any_fails(cases, expected):
    assert ledger.check_verdict(cases) == expected


def table1(path, ce, re):
    path.mkdir(parents=True, exist_ok=True)
    rows = [{"extractor": name, "top1": m, "top1_lo": lo, "top1_hi": hi}
            for name, (m, lo, hi) in (("CNN-based Extractor (CE)", ce), ("ResNet-based Extractor (RE)", re))]
    pd.DataFrame(rows).to_csv(path / "table1_extractor_accuracy.csv", index=False)


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path))
    return load_profile("toy"), tmp_path / "results" / "toy"


def row(df, key):
    return df.set_index("check").loc[key]


def test_table1_checks_against_chance_and_between_extractors(toy):
    cfg, res = toy
    table1(res / "tables", ce=(0.5, 0.4, 0.6), re=(0.12, 0.08, 0.16))   # chance is 1/10
    df = ledger.ledger_frame(cfg)
    assert row(df, "table1_above_chance").verdict == "inconclusive"           # RE's interval holds 0.1
    assert row(df, "table1_ce_vs_re").verdict == "holds"                      # 0.4 - 0.16 > 0
    assert "CE − RE: +0.380 [+0.240, +0.520]" in row(df, "table1_ce_vs_re").numbers
    table1(res / "tables", ce=(0.5, 0.4, 0.6), re=(0.55, 0.45, 0.65))
    df = ledger.ledger_frame(cfg)
    assert row(df, "table1_above_chance").verdict == "holds"
    assert row(df, "table1_ce_vs_re").verdict == "inconclusive"               # the intervals overlap
    assert row(df, "fig3_CE").verdict == "no data" and row(df, "fig3_CE").seeds == "no data"
    # every test image right: a one-point interval still shows its value (it used to print the case alone)
    table1(res / "tables", ce=(0.996, 0.99, 1.0), re=(1.0, 1.0, 1.0))
    numbers = row(ledger.ledger_frame(cfg), "table1_above_chance").numbers
    assert "RE: top-1 1.000 on every resample, chance 0.100" in numbers and "CE: +0.996 [+0.990, +1.000]" in numbers


def test_a_verdict_that_differs_between_seeds_is_inconclusive(toy):
    cfg, res = toy
    table1(res / "tables", ce=(0.5, 0.4, 0.6), re=(0.3, 0.2, 0.35))
    table1(res / "seeds" / "r1" / "tables", ce=(0.5, 0.4, 0.6), re=(0.45, 0.35, 0.5))
    r = row(ledger.ledger_frame(cfg), "table1_ce_vs_re")
    assert r.this_run == "holds" and r.verdict == "inconclusive (seed-sensitive)"
    assert r.seeds == "differ: holds in r0; inconclusive in r1"
    table1(res / "seeds" / "r1" / "tables", ce=(0.5, 0.45, 0.6), re=(0.3, 0.25, 0.4))
    r = row(ledger.ledger_frame(cfg), "table1_ce_vs_re")
    assert r.verdict == "holds" and r.seeds == "same in all 2 (r0, r1)"


def test_sanity_checks_read_the_fully_randomised_step_against_their_scale(toy):
    cfg, res = toy
    (res / "tables").mkdir(parents=True)
    rows = []
    for step, rho in ((0, 1.0), (1, 0.9), (2, 0.6)):
        rows.append(dict(extractor="CE", check="trained" if step == 0 else "cascading", step=step, method="TSV",
                         spearman=rho, spearman_lo=rho - 0.02, spearman_hi=rho + 0.02, jaccard=rho / 3,
                         jaccard_lo=rho / 3 - 0.05, jaccard_hi=rho / 3 + 0.05))
        rows.append(dict(extractor="CE", check="trained" if step == 0 else "cascading", step=step,
                         method="frequency (control)", spearman=1.0, spearman_lo=1.0, spearman_hi=1.0, jaccard=1.0,
                         jaccard_lo=1.0, jaccard_hi=1.0))
    rows.append(dict(extractor="CE vs RE", check="two trained extractors", step=0, method="TSV", spearman=0.8,
                     spearman_lo=0.78, spearman_hi=0.82, jaccard=0.3, jaccard_lo=0.28, jaccard_hi=0.32))
    rows.append(dict(extractor="CE", check="two random initialisations", step=0, method="TSV", spearman=0.61,
                     spearman_lo=0.59, spearman_hi=0.63, jaccard=0.2, jaccard_lo=0.1, jaccard_hi=0.3))
    pd.DataFrame(rows).to_csv(res / "tables" / "faithfulness_sanity.csv", index=False)
    df = ledger.ledger_frame(cfg)
    # step 2 (the last): J 0.2 [0.15, 0.25] vs CE-vs-RE 0.3 [0.28, 0.32] -> below; rho 0.6 [0.58, 0.62] vs 0.61 -> overlap
    assert row(df, "sanity_concept").verdict == "holds"
    assert "CE: -0.100 [-0.170, -0.030]" in row(df, "sanity_concept").numbers
    assert row(df, "sanity_map").verdict == "inconclusive"
    assert row(df, "sanity_control").verdict == "holds"
    bad = pd.DataFrame(rows)
    bad.loc[(bad.method != "TSV") & (bad.step == 2), "jaccard"] = 0.9        # the control moved: the test is broken
    bad.to_csv(res / "tables" / "faithfulness_sanity.csv", index=False)
    assert row(ledger.ledger_frame(cfg), "sanity_control").verdict == "fails"


def test_bias_checks(toy):
    cfg, res = toy
    (res / "tables").mkdir(parents=True)
    base = dict(max_abs_delta=0.4, r=0.9, r_lo=0.85, r_hi=0.95)
    rows = [dict(images="generated", statistic="detected", species_biased=10, detected_right=9, detected_unsupported=0, **base),
            dict(images="real, scene_bias 0.25 (control)", statistic="detected", species_biased=0, detected_right=0,
                 detected_unsupported=0, **{**base, "max_abs_delta": 0.1}),
            dict(images="real, scene_bias 0.25 (control)", statistic="counts", species_biased=0, detected_right=0,
                 detected_unsupported=0, **{**base, "max_abs_delta": 0.2})]
    pd.DataFrame(rows).to_csv(res / "tables" / "bias_summary.csv", index=False)
    df = ledger.ledger_frame(cfg)
    assert row(df, "bias_detected").verdict == "fails"          # one species missed
    assert row(df, "bias_control").verdict == "holds"
    assert row(df, "bias_counts_control").verdict == "fails"    # no flag, but |delta| 0.2 is not negligible


def test_the_committed_toy_ledger_is_what_the_committed_tables_give():
    cfg = load_profile("toy")
    recorded = pd.read_csv(f"{cfg.paths.tables}/ledger.csv")
    now = ledger.ledger_frame(cfg)
    assert list(recorded.check) == [c.key for c in ledger.CHECKS]
    assert recorded.verdict.tolist() == now.verdict.tolist()
    assert recorded.numbers.tolist() == now.numbers.tolist()


def test_a_dry_run_ledger_says_its_numbers_are_meaningless(tmp_path, monkeypatch):
    """`python -m cortex_nb ledger` never calls setup(); under paper-dry its table must still carry the banner."""
    from cortex_nb.io import provenance
    from cortex_nb.io import tables
    from cortex_nb.__main__ import main

    monkeypatch.setenv("CORTEX_RESULTS", str(tmp_path))
    monkeypatch.setattr(provenance, "_DRY_RUN", [False])
    table1(tmp_path / "results" / "paper-dry" / "tables", ce=(0.5, 0.4, 0.6), re=(0.3, 0.2, 0.35))
    assert main(["ledger", "--profile", "paper-dry"]) == 0
    md = (tmp_path / "results" / "paper-dry" / "tables" / "ledger.md").read_text()
    assert md.startswith(f"**{tables.DRY_CAPTION}**")
    assert provenance.dry_run()
    main(["ledger", "--profile", "toy"])
    assert not provenance.dry_run()                                            # reset by the next profile


def test_a_notebooks_own_checks_are_the_whole_ledgers_rows_for_it():
    """Notebook 05 shows ledger_frame(cfg, notebook="05"): the same rows the whole ledger has for its tables."""
    cfg = load_profile("toy")
    whole = ledger.ledger_frame(cfg)
    own = ledger.ledger_frame(cfg, notebook="05")
    assert len(own) and set(own.notebook) == {"05"} and len(own) < len(whole)
    pd.testing.assert_frame_equal(own.reset_index(drop=True), whole[whole.notebook == "05"].reset_index(drop=True))
    assert list(ledger.ledger_view(own).columns)[:4] == ["Check", "Claim", "NB", "Verdict"]
