"""cortex_nb.pipeline.gates: each gate passes on tables that meet its rule, fails on tables that break
it by a little, and is skipped when its table is missing; the committed toy run passes every gate."""
import pandas as pd
import pytest

from cortex_nb.io.config import repo_root
from cortex_nb.pipeline import gates


def _write(d, name, rows):
    pd.DataFrame(rows).to_csv(d / f"{name}.csv", index=False)


@pytest.fixture
def tables(tmp_path):
    """A run's tables that pass every gate (the columns the pipeline writes)."""
    _write(tmp_path, "vqgm_quality", [{"evaluator": "A", "ratio": 0.95}, {"evaluator": "B", "ratio": 0.90}])
    _write(tmp_path, "generated_test_accuracy", [{"evaluator": "A", "acc": 0.85}, {"evaluator": "B", "acc": 0.75}])
    rows = [{"method": m, "evaluator": e, "n": n, "mode": "equal_area", "d_random": -0.1, "d_random_lo": -0.2,
             "d_random_hi": -0.01} for m in ("CE", "RE") for e in ("A", "B") for n in (1, 3, 5)]
    rows[0]["d_random_hi"] = 0.05                                           # n = 1 is not gated
    rows += [{"method": "CE", "evaluator": "A", "n": 3, "mode": "token_ids", "d_random": 0.0, "d_random_lo": -0.1,
              "d_random_hi": 0.1}]                                          # the other mode is not gated
    _write(tmp_path, "fig3_image_level", rows)
    _write(tmp_path, "table2_concept_level", [
        {"evaluator": "A", "method": "CE", "n_masked": 3.5, "n_masked_lo": 3.4, "n_masked_hi": 3.7},
        {"evaluator": "A", "method": "frequency", "n_masked": 13.9, "n_masked_lo": 13.0, "n_masked_hi": 14.5}])
    _write(tmp_path, "table2_paired", [
        {"kind": "method", "evaluator": e, "a": "CE", "b": "frequency", "metric": "dP", "mean": -0.3, "lo": -0.4,
         "hi": -0.2} for e in ("A", "B")] + [
        {"kind": "method", "evaluator": "A", "a": "CE", "b": "RE", "metric": "dP", "mean": 0.1, "lo": 0.0, "hi": 0.2}])
    _write(tmp_path, "localisation", [
        {"method": m, "n": 5, "head_share": s, "lo": s - 0.01, "hi": s + 0.01}
        for m, s in (("CE", 0.58), ("RE", 0.52), ("frequency", 0.03), ("class-vs-rest", 0.25), ("random", 0.13))])
    return tmp_path


def _passed(d) -> dict:
    df = gates.check(d)
    return dict(zip(df.gate, df.passed))


def test_tables_that_meet_every_rule_pass_every_gate(tables):
    assert _passed(tables) == {g.name: True for g in gates.GATES}


@pytest.mark.parametrize("gate,table,column,row,value", [
    ("tokenizer", "vqgm_quality", "ratio", 1, 0.899),
    ("prior samples", "generated_test_accuracy", "acc", 1, 0.74),          # mean 79.5 %
    ("Fig. 3", "fig3_image_level", "d_random_hi", 5, 0.001),                 # CE B n = 3 touches 0
    ("Table 2 area", "table2_concept_level", "n_masked_hi", 0, 13.1),        # overlaps frequency's interval
    ("Table 2 ΔP", "table2_paired", "hi", 1, 0.0),
    ("localisation", "localisation", "lo", 1, 0.25),                          # RE reaches class-vs-rest
])
def test_breaking_one_rule_by_a_little_fails_that_gate_only(tables, gate, table, column, row, value):
    df = pd.read_csv(tables / f"{table}.csv")
    df.loc[row, column] = value
    df.to_csv(tables / f"{table}.csv", index=False)
    got = _passed(tables)
    assert got[gate] is False
    assert all(v for k, v in got.items() if k != gate)


def test_a_missing_table_skips_its_gate(tables):
    (tables / "vqgm_quality.csv").unlink()                                 # imagenet: no toy tokenizer table
    assert "tokenizer" not in set(gates.check(tables).gate)


def test_the_committed_toy_run_passes_every_gate():
    df = gates.check(repo_root() / "results" / "toy" / "tables")
    assert len(df) == len(gates.GATES)
    assert df.passed.all(), df[~df.passed].to_string()
