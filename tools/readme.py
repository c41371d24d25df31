"""Keep README.md's headline and docs/results.md equal to the committed tables (make tooling, not the package).

``python tools/readme.py [PROFILE]`` rewrites, from ``results/<profile>/tables/*.md`` and the key figures, the block
between the two results markers in ``docs/results.md`` (every table and figure) and the block between the two
headline markers in ``README.md`` (the claims ledger's counts, every check that does not hold, and the two VQGM
families side by side when ``results/toy-maskgit/tables/families.md`` exists); ``make all`` runs it at the end, and a
test checks that both hold exactly what the tables say.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cortex_nb.io.config import repo_root

START, END = "<!-- results:start -->", "<!-- results:end -->"
HEAD_START, HEAD_END = "<!-- headline:start -->", "<!-- headline:end -->"
RESULTS_PAGE = Path("docs") / "results.md"

# (table file stem, heading) in the order the paper presents them
TABLES = [
    ("ledger", "The claims ledger: each claim of the paper and of notebooks 07-08 as a check over this run and its "
               "replicates (`make all`; `make verify` re-evaluates it)"),
    ("gates", "Science gates of this run (`python -m cortex_nb gates`; `make all` ends with it)"),
    ("vqgm_quality", "The toy VQGM (notebook 00)"),
    ("toy_evaluators", "The toy evaluators (notebook 00)"),
    ("generated_test_accuracy", "Evaluators on generated test images (notebook 01; Acc and P of Table 2)"),
    ("table1_extractor_accuracy", "Table 1 (notebook 02)"),
    ("fill_check", "Is the fill a class feature? (notebook 03; chooses the headline fill)"),
    ("table2_concept_level", "Table 2 (notebook 04)"),
    ("table2_paired", "Table 2, paired between-method intervals (notebook 04)"),
    ("localisation", "Ground-truth localisation (notebook 04, beyond the paper)"),
    ("table3_optimization", "Table 3 (notebook 05)"),
    ("table3_controls", "Table 3 with its controls (notebook 05)"),
    ("faithfulness_auc", "Faithfulness: deletion / insertion areas of every attribution (notebook 07, beyond the paper)"),
    ("faithfulness_localisation", "Which attribution finds the head (notebook 07)"),
    ("faithfulness_sanity", "Sanity checks: Spearman ρ / Jaccard against the trained extractor (notebook 07)"),
    ("bias_summary", "Bias detection: does the generator inherit each species' scene? (notebook 08, the published "
                     "version's application)"),
    ("bias_scene_tokens", "The scene concept tokens against the part masks (notebook 08)"),
]
FIGURES = [
    ("toyworld", "The toy world"),
    ("reconstructions", "Reconstructions"),
    ("fig3_image_level", "Fig. 3: true-class probability vs masked tokens"),
    ("fig3_fills", "Fig. 3 under every fill"),
    ("table2_area_curve", "Table 2 at every masked area: ΔP as k varies"),
    ("fig2_token_visualisation", "Fig. 2: the same concept token across images"),
    ("fig4_editing", "Fig. 4: editing sequences"),
    ("faithfulness_curves", "Deletion and insertion curves (notebook 07)"),
    ("faithfulness_sanity", "Sanity checks: degradation under randomisation (notebook 07)"),
    ("fig_bias", "Scene bias per species: token-detected vs measured rates, Cliff's delta (notebook 08)"),
]


def results_block(profile: str = "toy", root: Path | None = None) -> str:
    """docs/results.md's block, built from the committed tables and figures (links relative to docs/)."""
    root = root or repo_root()
    tables = root / "results" / profile / "tables"
    parts = [START, "", f"Measured with `make all PROFILE={profile}` (tables: `results/{profile}/tables/`).", ""]
    for stem, heading in TABLES:
        path = tables / f"{stem}.md"
        if path.exists():
            parts += [f"## {heading}", "", path.read_text().strip(), ""]
    for stem, caption in FIGURES:
        if (root / "figures" / profile / f"{stem}.png").exists():
            parts += [f"![{caption}](../figures/{profile}/{stem}.png)", ""]
    parts.append(END)
    return "\n".join(parts)


def headline_block(profile: str = "toy", root: Path | None = None) -> str:
    """README's headline: the ledger's counts, each check that does not hold (one line), the families table."""
    import pandas as pd

    root = root or repo_root()
    led = pd.read_csv(root / "results" / profile / "tables" / "ledger.csv")
    counts = ", ".join(f"**{n} {v}**" for v, n in led.verdict.value_counts().items())
    reps = sorted({r for x in led.replicates.astype(str) for r in x.split() if r != "nan"})
    parts = [HEAD_START, "",
             f"The claims ledger of `make all PROFILE={profile}` judges {len(led)} checks (the paper's claims and this "
             f"companion's controls) over replicates {', '.join(reps)}: {counts}. Those that do not hold:", ""]
    for r in led[led.verdict != "holds"].itertuples():
        parts.append(f"- **{r.verdict}** `{r.check}` (notebook {int(r.notebook):02d}): {r.claim}")
    fam = root / "results" / "toy-maskgit" / "tables" / "families.md"
    if fam.exists():
        parts += ["", "Two VQGM families on the same toy world, every check under the same rules (`make all "
                  "PROFILE=toy-maskgit`; `results/toy-maskgit/tables/families`):", "", fam.read_text().strip()]
    parts += ["", HEAD_END]
    return "\n".join(parts)


def _replace(path: Path, start: str, end: str, block: str) -> bool:
    text = path.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = head + block + tail
    path.write_text(new)
    return new != text


def update_readme(profile: str = "toy", root: Path | None = None) -> bool:
    """Rewrite README.md's headline block and docs/results.md's results block; returns whether either changed."""
    root = root or repo_root()
    a = _replace(root / "README.md", HEAD_START, HEAD_END, headline_block(profile, root))
    b = _replace(root / RESULTS_PAGE, START, END, results_block(profile, root))
    return a or b


if __name__ == "__main__":
    print("README updated" if update_readme(*(sys.argv[1:2] or ["toy"])) else "README unchanged")
