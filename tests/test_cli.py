"""The CLI's handling of bad input: one line plus the fix on stderr, exit status 2, no traceback
(unless --debug), and nothing written when the input is refused."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from cortex_nb.__main__ import main
from cortex_nb.io.config import ProfileError


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def results(tmp_path, monkeypatch):
    root = tmp_path / "out"
    root.mkdir()
    monkeypatch.setenv("CORTEX_RESULTS", str(root))
    return root


@pytest.mark.parametrize("setting, names", [
    ("data.shard_size=0", "data.shard_size = 0"),
    ("data=1", "data = 1"),
    ("data.n_test=abc", "data.n_test = 'abc'"),
    ("data.n_test=0", "data.n_test = 0"),
    ("evaluators.names=[resnet99]", "evaluators.names = ['resnet99']"),
])
def test_bad_override_is_one_line_with_fix_and_writes_nothing(results, capsys, setting, names):
    rc = main(["generate", "--profile", "smoke", "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: profile 'smoke': " + names), err
    assert "\n  fix: " in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2
    assert _files(results) == []  # refused before anything was created (n_test=0 used to leave test/)


def test_debug_shows_the_traceback(results):
    with pytest.raises(ProfileError, match="data.shard_size = 0"):
        main(["generate", "--profile", "smoke", "--set", "data.shard_size=0", "--debug"])


def test_set_without_equals_is_a_clear_error(results, capsys):
    assert main(["vqgm", "--profile", "smoke", "--set", "data.n_test"]) == 2
    assert "--set expects KEY=VALUE, got 'data.n_test'" in capsys.readouterr().err


def test_unwritable_results_directory_is_reported_before_any_work(tmp_path, monkeypatch, capsys):
    # a file where results/ must be: unwritable for every user, root included (chmod does not stop root)
    root = tmp_path / "out"
    root.mkdir()
    (root / "results").write_text("not a directory")
    monkeypatch.setenv("CORTEX_RESULTS", str(root))
    assert main(["vqgm", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to the results directory {root / 'results' / 'smoke'}" in err
    assert "CORTEX_RESULTS" in err and "Traceback" not in err
    assert _files(root) == ["results"]  # no cache, no figures: nothing started


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_results_directory(tmp_path, monkeypatch, capsys):
    root = tmp_path / "out"
    (root / "results" / "smoke").mkdir(parents=True)
    (root / "results" / "smoke").chmod(0o555)
    monkeypatch.setenv("CORTEX_RESULTS", str(root))
    try:
        assert main(["vqgm", "--profile", "smoke"]) == 2
    finally:
        (root / "results" / "smoke").chmod(0o755)
    assert "cannot write to the results directory" in capsys.readouterr().err


def test_module_runs_as_a_program_and_fails_cleanly(tmp_path):
    env = {**os.environ, "CORTEX_RESULTS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cortex_nb", "tsv", "--profile", "smoke", "--set", "saliency.fill=pink"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("error: profile 'smoke': saliency.fill = 'pink' is not allowed; expected one of "
                                 "black, mean, blur")
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------------------
# the section commands run headless, on a tiny untrained taming VQGM (no toy training)
# --------------------------------------------------------------------------------------

TINY = ["threads=1", "device=cpu", "progress=false", "data.n_train=2", "data.n_val=1", "data.n_test=1",
        "data.shard_size=8", "data.batch_size=512", "extractors.width=8", "extractors.epochs=1",
        "extractors.batch_size=16", "evaluators.names=[vit_p4]", "evaluators.n_train=32", "evaluators.n_val=16",
        "evaluators.fit.max_steps_per_epoch=1", "saliency.chunk=8", "saliency.n_samples=2",
        "saliency.random_seeds=1", "optimization.steps=2", "optimization.record_every=1"]


@pytest.fixture(scope="module")
def tiny_vqgm(tmp_path_factory):
    """(config.yaml, model.ckpt) of an untrained class-conditional VQGM: 10 classes, 32 px, 8 x 8 tokens."""
    import torch
    from omegaconf import OmegaConf

    from cortex_nb.vqgm.taming_ckpt import save_taming_checkpoint
    from cortex_nb.vqgm.taming_config import build_from_config
    from cortex_nb.vqgm.taming_shapes import tiny_cin_config

    d = tmp_path_factory.mktemp("tiny-vqgm")
    config = tiny_cin_config(n_classes=10, resolution=32, ch_mult=(1, 2, 2))
    torch.manual_seed(0)
    save_taming_checkpoint(build_from_config(config), d / "model.ckpt", epoch=0, global_step=0)
    OmegaConf.save(config, d / "config.yaml")
    return d / "config.yaml", d / "model.ckpt"


def test_help_lists_every_section_command():
    from cortex_nb.__main__ import SECTIONS, STAGES, parser

    text = parser().format_help()
    assert set(SECTIONS) | {"vqgm", "evaluators", "tsv", "all", "seeds", "gates", "ledger", "families",
                            "manifest", "verify", "atlas", "book"} == set(STAGES)
    for command in STAGES:
        assert f"\n  {command} " in text, command


def test_fig3_table2_table3_run_headless_and_write_their_outputs(results, tiny_vqgm, capsys):
    """The sections of notebooks 03-05 from the command line: every table and figure written,
    the resolved profile beside them, the tables printed."""
    config, ckpt = tiny_vqgm
    sets = [a for s in [*TINY, "vqgm.source=taming", f"vqgm.config={config}", f"vqgm.ckpt={ckpt}"]
            for a in ("--set", s)]
    for command in ("fig3", "table2", "table3", "faithfulness"):
        assert main([command, "--profile", "smoke", *sets]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    tables, figures = results / "results" / "smoke" / "tables", results / "figures" / "smoke"
    for name in ("fig3_image_level", "fig3_image_level_token_ids_mode", "fig3_fills", "fill_check",
                 "table2_concept_level", "table2_paired", "table2_area_curve", "table2_fills",
                 "table3_optimization", "table3_optimization_all", "table3_controls", "table3_paired",
                 "faithfulness_auc", "faithfulness_cost", "faithfulness_curves", "faithfulness_fills",
                 "faithfulness_sanity"):
        assert all((tables / f"{name}.{ext}").stat().st_size > 0 for ext in ("csv", "md", "tex")), name
    for name in ("fig3_image_level", "fig3_image_level_token_ids_mode", "fig3_fills", "fig2_token_visualisation",
                 "fig5_token_visualisation", "table2_area_curve", "fig4_editing", "fig6_pairs", "faithfulness_curves"):
        assert (figures / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name
    assert not (tables / "localisation.csv").exists()                   # toy world only
    assert "fig3 (smoke): fig3: 2 tables, 5 figures; 1 process" in out
    assert "table2 (smoke): table2: 3 tables, 1 figure" in out and "table2_concept_level:" in out
    assert "table3 (smoke): table3: 4 tables, 2 figures" in out and "ViT-p4" in out  # + the saliency region
    assert "faithfulness (smoke): faithfulness: 4 tables, 3 figures" in out  # no localisation: toy only
    import yaml

    written = yaml.safe_load((results / "results" / "smoke" / "profile.yaml").read_text())
    assert written["profile"]["optimization"]["steps"] == 2 and "cpu_capability" in written["run"]
    # a warm rerun (random baseline from its JSON cache) writes the same bytes as the cold run
    # (a cached row used to come back key-sorted and reorder the columns of the normal-mode table)
    before = {n: (tables / f"{n}.csv").read_bytes() for n in ("fig3_image_level", "fig3_image_level_token_ids_mode")}
    assert main(["fig3", "--profile", "smoke", *sets]) == 0
    for name, data in before.items():
        assert (tables / f"{name}.csv").read_bytes() == data, name
    assert before["fig3_image_level"].split(b"\n")[0] == (b"method,evaluator,n,p,p_lo,p_hi,acc,n_masked,d_random,"
                                                          b"d_random_lo,d_random_hi,modal_share,masked_fraction,mode,fill")
    # a seed replicate (retrained extractors, redrawn noise) and the claims ledger over both
    assert main(["seeds", "--profile", "smoke", *sets, "--set", "replicates=2"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    r1 = results / "results" / "smoke" / "seeds" / "r1" / "tables"
    for name in ("fig3_image_level", "table1_extractor_accuracy", "table2_concept_level", "table2_paired",
                 "table3_optimization_all", "table3_paired", "faithfulness_auc", "faithfulness_sanity"):
        assert (r1 / f"{name}.csv").stat().st_size > 0, name
    auc = pd.read_csv(r1 / "faithfulness_auc.csv")
    assert set(auc.method) == {"TSV", "random", "class-vs-rest"}                # no captum rivals in a replicate
    assert not list((r1.parent / "figures").glob("*.png"))               # frames only, no figures
    led = pd.read_csv(tables / "ledger.csv", keep_default_na=False).set_index("check")
    assert "ledger:" in out and not (tables / "verdicts.csv").exists()
    for check in ("fig3_CE", "table2_frequency", "table3_orig", "faith_deletion"):
        assert led.loc[check, "replicates"] == "0 1", check                   # the replicate's frames are read
    assert led.loc["table1_above_chance", "replicates"] == "1"                # the headline ran no Table 1 here
    assert set(led.verdict) <= {"holds", "fails", "inconclusive", "inconclusive (seed-sensitive)", "no data"}
