"""The claims the ledger judges (cortex_nb.pipeline.claims) and seed replicates: the least favourable case of a
claim, the ledger read off hand-written replicate tables with known answers (one rule, seed sensitivity, the spread
across replicates, settings variants beside it and never counted), the area-matched choice of k, and what a
replicate changes (seeds, keys, paths) and what it keeps."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cortex_nb import load_profile
from cortex_nb.pipeline import claims as V
from cortex_nb.pipeline import ledger as L
from cortex_nb.pipeline.keys import replicate_seed


def ev(lo, hi, mean=None):
    mean = (lo + hi) / 2 if mean is None else mean
    return V.below(mean, lo, hi)


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


def _replicates(root: Path, width: int = 32) -> dict:
    """Three replicates under root (r0 = root/tables, r1, r2 under root/seeds): Fig. 3 (n > 1) supported in all
    three; Table 2 vs frequency in r0 and r2 only; Table 3 ΔP_Orig: CE's interval overlaps 0 in every one (RE's
    lies below), each with a profile.yaml of the same settings."""
    import yaml

    dirs = {}
    for r, (f3, t2, t3) in enumerate(((-0.05, -0.01, 0.02), (-0.02, 0.03, 0.01), (-0.07, -0.02, 0.04))):
        dirs[r] = (root / "tables") if r == 0 else (root / "seeds" / f"r{r}" / "tables")
        _write_replicate(dirs[r], f3, t2, t3)
        (dirs[r].parent / "profile.yaml").write_text(yaml.safe_dump({"profile": {"replicate": r,
                                                                                 "extractors": {"width": width}}}))
    return dirs


def _smoke(root: Path, tables: Path):
    from omegaconf import OmegaConf

    return OmegaConf.merge(load_profile("smoke"), {"paths": {"seeds": str(root / "seeds"), "tables": str(tables)}})


def test_the_ledger_on_hand_written_replicates(tmp_path):
    """One rule per replicate (a case holds / fails when its interval lies wholly on one side), a verdict that
    differs between replicates is seed-sensitive, and each case's estimate is shown across the replicates."""
    root = tmp_path / "results" / "smoke"
    dirs = _replicates(root)
    cfg = _smoke(root, tmp_path / "out")
    df = L.ledger_frame(cfg, dirs, variants={}).set_index("check")
    assert df.loc["fig3_CE", "verdict"] == "holds" and df.loc["fig3_CE", "seeds"] == "same in all 3 (r0, r1, r2)"
    assert df.loc["fig3_CE", "numbers"] == "E: -0.150 [-0.250, -0.050] (n = 3)"    # the least favourable n > 1
    assert df.loc["fig3_CE", "across_replicates"] == "E: -0.170 … -0.120"
    # n = 1: [-0.19, +0.01] in every replicate overlaps 0: inconclusive, not "fails" (nothing lies against it)
    assert df.loc["fig3_n1", "verdict"] == "inconclusive"
    assert df.loc["table2_frequency", "verdict"] == "inconclusive (seed-sensitive)"
    assert df.loc["table2_frequency", "seeds"] == "differ: holds in r0, r2; inconclusive in r1"
    assert df.loc["table3_orig", "verdict"] == "inconclusive"                     # CE overlaps 0, RE holds
    assert df.loc["ce_re", "verdict"] == "holds"                                   # [-0.02, 0.03] inside +-0.05
    assert df.loc["fig3_CE", "replicates"] == "0 1 2" and df.loc["localisation", "seeds"] == "no data"
    # with one replicate nothing is seed-sensitive, and there is no spread to show
    one = L.ledger_frame(cfg, {0: dirs[0]}, variants={}).set_index("check")
    assert one.loc["table2_frequency", "verdict"] == "holds" and one.loc["fig3_CE", "across_replicates"] == ""
    assert one.loc["table2_frequency", "seeds"] == "untested (only this run has the tables)"


def test_a_settings_variant_is_shown_beside_the_verdict_and_never_counted(tmp_path):
    """results/<p>/variants/<name>: one run under other settings gets its own column (judged by the same rule, on
    its own), the caption names the settings it differs in, and the verdicts do not move."""
    import yaml

    root = tmp_path / "results" / "smoke"
    dirs = _replicates(root)
    cfg = _smoke(root, tmp_path / "out")
    assert V.variant_dirs(cfg) == {}
    before = L.write_ledger(cfg)
    var = root / "variants" / "wide" / "tables"
    _write_replicate(var, -0.05, -0.01, -0.01)                        # Table 3: CE's interval below 0 here
    (var.parent / "profile.yaml").write_text(yaml.safe_dump({"profile": {"extractors": {"width": 64}}}))
    assert V.variant_dirs(cfg) == {"wide": var}
    after = L.write_ledger(cfg)
    pd.testing.assert_frame_equal(after.drop(columns=["variant:wide"]), before)   # the verdicts do not move
    got = after.set_index("check")["variant:wide"]
    assert got["table3_orig"] == "holds" and before.set_index("check").loc["table3_orig", "verdict"] == "inconclusive"
    assert got["table2_frequency"] == "holds" and got["localisation"] == "no data"
    assert V.settings_diff(var, dirs[0]) == "extractors.width: 64 (headline: 32)"
    md = (tmp_path / "out" / "ledger.md").read_text()
    assert "Variant wide (one run under other settings, never counted): extractors.width: 64 (headline: 32)." in md
    view = L.ledger_view(after).set_index("Check")
    assert view.loc["table3_orig", "Under other settings, not counted"] == "wide: holds"
    assert "Under other settings, not counted" not in L.ledger_view(before).columns


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
