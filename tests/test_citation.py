"""CITATION.cff (issue #18): valid Citation File Format 1.2.0, citing the paper, at the package's version."""
import copy
import datetime
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import cortex_nb

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "tests/data/citation-file-format-1.2.0.schema.json").read_text())


def load_cff() -> dict:
    """CITATION.cff as the format defines it: YAML whose dates are strings (YAML's own date type stringified)."""
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list):
            return [plain(v) for v in x]
        return x.isoformat() if isinstance(x, datetime.date) else x
    return plain(yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8")))


def validator():
    return jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def test_citation_cff_is_valid_cff_1_2_0():
    cff = load_cff()
    errors = sorted(validator().iter_errors(cff), key=str)
    assert errors == [], [e.message for e in errors]
    assert cff["cff-version"] == "1.2.0"


def test_citation_cites_the_paper_at_this_version():
    cff = load_cff()
    assert cff["version"] == cortex_nb.__version__
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("CORTEX: Concept-Oriented Token Explanation in Vector-Quantized Generative")
    assert paper["authors"]
    assert any("Taming Transformers" in r["title"] for r in cff["references"])


@pytest.mark.parametrize("breakage", ["no authors", "bad version", "unknown key"])
def test_the_schema_check_rejects_a_broken_citation(breakage):
    """The validator is live: each breakage of a copy is refused."""
    cff = copy.deepcopy(load_cff())
    if breakage == "no authors":
        cff["authors"] = []
    elif breakage == "bad version":
        cff["cff-version"] = "1.2"
    else:
        cff["citation"] = "x"
    assert list(validator().iter_errors(cff))
