"""Keep README.md's results section equal to the committed tables (make tooling, not the package).

``python tools/readme.py [PROFILE]`` rewrites the block between the two markers below from
``results/<profile>/tables/*.md`` and the key figures; ``make all`` runs it at the end, and a test
checks that the README holds exactly what the tables say.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cortex_nb.io.config import repo_root

START, END = "<!-- results:start -->", "<!-- results:end -->"

# (table file stem, heading) in the order the paper presents them
TABLES = [
    ("ledger", "The claims ledger: each claim of the paper and of notebooks 07-08 as a check over this run and its "
               "replicates (`make all`; `make verify` re-evaluates it)"),
    ("verdicts", "Verdicts: which of the paper's claims hold in the toy world (notebook 05; `make seeds`)"),
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
    """The README's results section, built from the committed tables and figures."""
    root = root or repo_root()
    tables = root / "results" / profile / "tables"
    parts = [START, "", f"Measured with `make all PROFILE={profile}` (tables: `results/{profile}/tables/`).", ""]
    for stem, heading in TABLES:
        path = tables / f"{stem}.md"
        if path.exists():
            parts += [f"#### {heading}", "", path.read_text().strip(), ""]
    for stem, caption in FIGURES:
        if (root / "figures" / profile / f"{stem}.png").exists():
            parts += [f"![{caption}](figures/{profile}/{stem}.png)", ""]
    parts.append(END)
    return "\n".join(parts)


def update_readme(profile: str = "toy", root: Path | None = None) -> bool:
    """Rewrite the results block of README.md; returns whether it changed."""
    root = root or repo_root()
    readme = root / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + results_block(profile, root) + tail
    readme.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README updated" if update_readme(*(sys.argv[1:2] or ["toy"])) else "README unchanged")
