"""Verdicts (cortex_nb.pipeline.verdicts) and seed replicates: the three-way rule on hand-made
evidence, the whole table read off hand-written replicate tables with known answers, the
area-matched choice of k, and what a replicate changes (seeds, keys, paths) and what it keeps."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cortex_nb import load_profile
from cortex_nb.pipeline import verdicts as V
from cortex_nb.pipeline.keys import replicate_seed


def ev(lo, hi, mean=None):
    mean = (lo + hi) / 2 if mean is None else mean
    return V.below(mean, lo, hi)


def test_judge_three_ways():
    sup, neutral, against = ev(-0.3, -0.1), ev(-0.1, 0.05), ev(0.1, 0.2)
    assert V.judge([sup, sup, sup], needed=3) == "holds"
    assert V.judge([sup, neutral, sup], needed=3) == "inconclusive"      # depends on the seed
    assert V.judge([neutral, neutral, against], needed=3) == "fails"
    assert V.judge([against, against, against], needed=3) == "fails (reversed)"
    assert V.judge([sup], needed=3) == "inconclusive"                    # too few replicates to say
    assert V.judge([], needed=3) == "no data"


def test_worst_case_decides_a_claim_over_several_cases():
    w = V._worst([ev(-0.3, -0.2), ev(-0.2, -0.01), ev(-0.5, -0.4)], below=True)
    assert (w.lo, w.hi, w.supports) == (-0.2, -0.01, True)
    w = V._worst([ev(-0.3, -0.2), ev(-0.1, 0.02)], below=True)
    assert w.hi == 0.02 and not w.supports and not w.against


def _write_replicate(d: Path, fig3_hi: float, t2_hi: float, t3_orig_hi: float):
    """Minimal tables of one replicate: one evaluator 'E', Fig. 3 at n = 1, 3, 5 (CE), Table 2's
    paired CE - frequency and CE - RE, Table 3's token - embedding."""
    d.mkdir(parents=True)
    rows = [{"method": "unmasked", "evaluator": "E", "n": 0, "d_random": np.nan, "d_random_lo": np.nan,
             "d_random_hi": np.nan}]
    for n, hi in ((1, 0.01), (3, fig3_hi), (5, -0.2)):
        rows.append({"method": "CE", "evaluator": "E", "n": n, "d_random": hi - 0.1, "d_random_lo": hi - 0.2,
                     "d_random_hi": hi})
    pd.DataFrame(rows).to_csv(d / "fig3_image_level.csv", index=False)
    pd.DataFrame([
        {"kind": "method", "evaluator": "E", "a": "CE", "b": "frequency", "metric": "dP", "mean": t2_hi - 0.1,
         "lo": t2_hi - 0.2, "hi": t2_hi},
        {"kind": "method", "evaluator": "E", "a": "CE", "b": "RE", "metric": "dP", "mean": 0.0, "lo": -0.02,
         "hi": 0.03},
    ]).to_csv(d / "table2_paired.csv", index=False)
    pd.DataFrame([
        {"evaluator": "E", "extractor": x, "a": "token", "b": "embedding", "metric": "dP_orig",
         "mean": t3_orig_hi - 0.1, "lo": t3_orig_hi - 0.2, "hi": t3_orig_hi + (0.0 if x == "CE" else -0.05)}
        for x in ("CE", "RE")
    ]).to_csv(d / "table3_paired.csv", index=False)


def test_verdict_frame_on_hand_written_replicates(tmp_path):
    cfg = load_profile("smoke")
    dirs = {}
    # Fig. 3 (n > 1): supported in all three; Table 2 vs frequency: in two of three; Table 3 ΔP_Orig: in none
    for r, (f3, t2, t3) in enumerate(((-0.05, -0.01, 0.02), (-0.02, 0.03, 0.01), (-0.07, -0.02, 0.04))):
        dirs[r] = tmp_path / f"r{r}" / "tables"
        _write_replicate(dirs[r], f3, t2, t3)
    df = V.verdict_frame(cfg, dirs).set_index("claim")
    assert df.loc["fig3_CE", "verdict"] == "holds"
    assert df.loc["fig3_CE", "case"] == "n = 3"                       # the least favourable n > 1 decides
    assert df.loc["fig3_n1", "verdict"] == "fails"                    # n = 1: hi = +0.01 everywhere
    assert df.loc["table2_frequency", "verdict"] == "inconclusive"
    assert df.loc["table2_frequency", "supported_in"] == 2
    assert df.loc["table3_orig", "verdict"] == "fails"
    assert df.loc["table3_orig", "case"] == "CE"                      # CE's interval is the less favourable
    assert df.loc["ce_re", "verdict"] == "holds"                      # [-0.02, 0.03] inside +-0.05
    np.testing.assert_allclose(df.loc["fig3_CE", ["seed_min", "seed_max"]].to_numpy(float), [-0.17, -0.12])
    assert df.loc["fig3_CE", "replicates"] == "0 1 2"
    # with only two replicates, nothing can hold or fail
    two = V.verdict_frame(cfg, {r: dirs[r] for r in (0, 1)})
    assert set(two.verdict) == {"inconclusive"}


def test_notebook_05_judges_only_its_own_claims_and_writes_nothing(tmp_path):
    """Notebook 05 runs beside 03 and 04 under `make all`: it judges the Table 3 claims alone (the others read tables
    that may still be being written) and writes no table; `make all` writes the full table after every notebook."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(load_profile("smoke"), {"paths": {"tables": str(tmp_path / "out")}})
    dirs = {}
    for r, (f3, t2, t3) in enumerate(((-0.05, -0.01, 0.02), (-0.02, 0.03, 0.01), (-0.07, -0.02, 0.04))):
        dirs[r] = tmp_path / f"r{r}" / "tables"
        _write_replicate(dirs[r], f3, t2, t3)
    full = V.verdict_frame(cfg, dirs)
    own = V.verdict_frame(cfg, dirs, prefix="table3")
    assert set(own.claim) == {c for c in full.claim if c.startswith("table3")} and len(own) < len(full)
    pd.testing.assert_frame_equal(own.reset_index(drop=True),
                                  full[full.claim.str.startswith("table3")].reset_index(drop=True))
    disp = V.verdict_table(cfg, own, dirs, write=False)
    assert len(disp) == own.claim.nunique() and not (tmp_path / "out").exists()


def test_a_settings_variant_is_shown_beside_the_verdict_and_never_counted(tmp_path, monkeypatch):
    """results/<p>/variants/<name>: one run under other settings gets its own column (each case judged on
    its own interval), the caption names the settings it differs in, and the verdicts do not move."""
    import yaml
    from omegaconf import OmegaConf

    root = tmp_path / "results" / "smoke"
    cfg = OmegaConf.merge(load_profile("smoke"), {"paths": {"seeds": str(root / "seeds"),
                                                            "tables": str(tmp_path / "out")}})
    dirs = {}
    for r, (f3, t2, t3) in enumerate(((-0.05, -0.01, 0.02), (-0.02, 0.03, 0.01), (-0.07, -0.02, 0.04))):
        dirs[r] = (root / "tables") if r == 0 else (root / "seeds" / f"r{r}" / "tables")
        _write_replicate(dirs[r], f3, t2, t3)
        (dirs[r].parent / "profile.yaml").write_text(yaml.safe_dump({"profile": {"replicate": r,
                                                                                 "extractors": {"width": 32}}}))
    before = V.verdict_table(cfg, V.verdict_frame(cfg, dirs), dirs)
    assert V.variant_dirs(cfg) == {}
    var = root / "variants" / "wide" / "tables"
    _write_replicate(var, -0.05, -0.01, -0.01)                        # Table 3 supported in this one run
    (var.parent / "profile.yaml").write_text(yaml.safe_dump({"profile": {"extractors": {"width": 64}}}))
    assert V.variant_dirs(cfg) == {"wide": var}
    after = V.verdict_table(cfg, V.verdict_frame(cfg, dirs), dirs)
    col = "Under other settings, not counted: wide"
    pd.testing.assert_frame_equal(after.drop(columns=[col]), before)         # the verdicts do not move
    got = dict(zip(after.Claim, after[col]))
    t3 = next(c for c in got if c.startswith("Table 3 ΔP_Orig: token"))
    t2 = next(c for c in got if c.startswith("Table 2: CORTEX (CE) lowers"))
    assert got[t3] == "holds" and dict(zip(before.Claim, before.Verdict))[t3] == "fails"
    assert got[t2] == "holds"                                         # hi = -0.01 in this run alone
    assert V.settings_diff(var, dirs[0]) == "extractors.width: 64 (headline: 32)"
    assert "Variant wide (one run, not counted): extractors.width: 64 (headline: 32)" in \
        (tmp_path / "out" / "verdicts.md").read_text()


def test_area_matched_picks_the_baseline_k_with_the_closest_area():
    from cortex_nb.pipeline.s04_concept_level import area_matched

    curve = pd.DataFrame({"method": ["frequency"] * 3 + ["class-vs-rest"] * 3, "k": [1, 5, 25] * 2,
                          "evaluator": "E", "n_masked": [2.0, 7.0, 20.0, 1.0, 3.0, 9.0]})
    by_k = {1: "s1", 5: "s5", 25: "s25"}
    got = area_matched(curve, by_k, {"CE": 3.5})
    assert got == {("CE", "frequency"): (1, "s1"), ("CE", "class-vs-rest"): (5, "s5")}


def test_replicates_redraw_extractors_and_noise_only(tmp_path):
    base, r1 = load_profile("smoke"), load_profile("smoke", replicate=1)
    assert replicate_seed(base) == base.seed and replicate_seed(r1) == base.seed + 7919
    assert r1.paths.tables.endswith("results/smoke/seeds/r1/tables")
    assert r1.paths.cache == base.paths.cache                         # one cache; the keys tell runs apart
    assert r1.paths.figures != base.paths.figures
    from cortex_nb.pipeline import keys
    assert keys.evaluators_cache_key(r1) == keys.evaluators_cache_key(base)   # the evaluators are shared


def test_replicate_dirs_finds_the_headline_and_seed_tables(tmp_path, monkeypatch):
    cfg = load_profile("smoke")
    root = tmp_path / "results" / "smoke"
    for d in (root / "tables", root / "seeds" / "r1" / "tables", root / "seeds" / "r2" / "tables"):
        d.mkdir(parents=True)
        (d / "x.csv").write_text("a\n1\n")
    (root / "seeds" / "r3" / "tables").mkdir(parents=True)          # empty: not a replicate yet
    (root / "seeds" / "machine-avx2" / "tables").mkdir(parents=True)
    (root / "seeds" / "machine-avx2" / "tables" / "x.csv").write_text("a\n1\n")
    from omegaconf import OmegaConf
    cfg = OmegaConf.merge(cfg, {"paths": {"seeds": str(root / "seeds")}})
    assert V.replicate_dirs(cfg) == {0: root / "tables", 1: root / "seeds" / "r1" / "tables",
                                     2: root / "seeds" / "r2" / "tables",
                                     "machine-avx2": root / "seeds" / "machine-avx2" / "tables"}
    # a replicate run with other settings than the headline run is left out
    import yaml
    for d, steps, r in ((root, 300, 0), (root / "seeds" / "r1", 300, 1), (root / "seeds" / "r2", 50, 2)):
        (d / "profile.yaml").write_text(yaml.safe_dump({"profile": {"replicate": r, "threads": r + 1,
                                                                    "optimization": {"steps": steps}}}))
    assert set(V.replicate_dirs(cfg)) == {0, 1, "machine-avx2"}   # (no profile.yaml: not checked)
    # ... but a section no claim reads (notebook 07's faithfulness) may differ: r2 with the headline's
    # steps and another faithfulness section counts again
    (root / "seeds" / "r2" / "profile.yaml").write_text(yaml.safe_dump(
        {"profile": {"replicate": 2, "optimization": {"steps": 300}, "faithfulness": {"n_per_class": 3}}}))
    assert set(V.replicate_dirs(cfg)) == {0, 1, 2, "machine-avx2"}
    # ... nor do the robustness reports (`make robustness` rewrites the headline's profile.yaml with robustness on)
    (root / "seeds" / "r2" / "profile.yaml").write_text(yaml.safe_dump(
        {"profile": {"replicate": 2, "optimization": {"steps": 300}, "robustness": True}}))
    assert set(V.replicate_dirs(cfg)) == {0, 1, 2, "machine-avx2"}
    # a key added to the profiles after a replicate was recorded is read at its default: the headline records
    # world.classes: null and vqgm.n_samples: 20 (the base defaults), r1 predates them -- still the same settings
    (root / "profile.yaml").write_text(yaml.safe_dump({"profile": {
        "replicate": 0, "optimization": {"steps": 300}, "world": {"classes": None},
        "vqgm": {"n_samples": 20}, "dry_run": False}}))
    assert set(V.replicate_dirs(cfg)) == {0, 1, 2, "machine-avx2"}
    # ... but not when the headline's value is not the default
    (root / "profile.yaml").write_text(yaml.safe_dump({"profile": {
        "replicate": 0, "optimization": {"steps": 300}, "vqgm": {"n_samples": 3}}}))
    assert set(V.replicate_dirs(cfg)) == {0, "machine-avx2"}


@pytest.mark.parametrize("bad", [[0], [3, 3], "5", [1.5]])
def test_area_k_must_be_distinct_positive_ints(bad):
    from cortex_nb.io.config import ProfileError

    with pytest.raises(ProfileError, match="area_k"):
        load_profile("smoke", **{"saliency.area_k": bad})
