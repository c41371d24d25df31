"""`make book`: the static site is assembled from executed notebooks without running them, widgets become
notes, links resolve, and the built pages load nothing from the network."""
import json
import re

import pytest

from cortex_nb.errors import UserError
from cortex_nb.pipeline.book import WIDGET_MIME, assemble, build, strip_widgets

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def _notebook(widget=True, marker="a result computed by make all"):
    outs = [{"output_type": "stream", "name": "stdout", "text": [marker + "\n"]},
            {"output_type": "display_data", "metadata": {}, "data": {"text/plain": ["<Figure>"],
                                                                     "image/png": "iVBORw0KGgo="}}]
    if widget:
        outs.append({"output_type": "display_data", "metadata": {},
                     "data": {WIDGET_MIME: {"model_id": "abc", "version_major": 2, "version_minor": 0},
                              "text/plain": ["TokenBrowser(...)"]}})
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}}},
            "cells": [{"cell_type": "markdown", "id": "m", "metadata": {}, "source": ["# Notebook zero\n", "$E = mc^2$"]},
                      {"cell_type": "code", "id": "c", "metadata": {}, "execution_count": 1,
                       "source": ["print('x')"], "outputs": outs}]}


def test_widget_outputs_become_a_note_and_other_outputs_stay():
    nb = _notebook()
    assert strip_widgets(nb, atlas=False) == 1
    outs = nb["cells"][1]["outputs"]
    assert not any(WIDGET_MIME in o.get("data", {}) for o in outs)
    assert any("image/png" in o.get("data", {}) for o in outs)
    notes = [o["data"]["text/markdown"] for o in outs if "text/markdown" in o.get("data", {})]
    assert len(notes) == 1 and "make lab" in notes[0] and "make atlas" in notes[0]
    assert "widgets" not in nb["metadata"]
    nb = _notebook()
    strip_widgets(nb, atlas=True)
    assert "atlas/index.html" in [o for o in nb["cells"][1]["outputs"] if "text/markdown" in o.get("data", {})][0][
        "data"]["text/markdown"]
    assert strip_widgets(_notebook(widget=False), atlas=False) == 0


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "figures" / "p").mkdir(parents=True)
    (root / "figures" / "p" / "fig.png").write_bytes(PNG)
    (root / "README.md").write_text(
        "# Front page\n\nSee [the findings](docs/findings.md), the figure ![a figure](figures/p/fig.png), "
        "[the tables folder](results/p/tables/), [a missing file](results/p/gone.csv), [notebook 00]"
        "(notebooks/00_zero.ipynb), [a report](results/report.md) and [the web](https://example.org).\n")
    (root / "results").mkdir()
    (root / "results" / "report.md").write_text("# A report\n\nWith ![its figure](../figures/p/fig.png).\n")
    (root / "docs" / "findings.md").write_text("# Findings\n\nBack to [the README](../README.md); "
                                               "[the figure](../figures/p/fig.png).\n")
    ex = root / "results" / "p" / "executed"
    ex.mkdir(parents=True)
    (ex / "00_zero.ipynb").write_text(json.dumps(_notebook()))
    (ex / "01_one.ipynb.123.tmp.ipynb").write_text("{not json: a stage in flight")
    (root / "results" / "p" / "tables").mkdir()
    (root / "results" / "p" / "tables" / "ledger.md").write_text("| Check | Verdict |\n|---|---|\n| fig3_CE | holds |\n")
    return root


def test_assemble_copies_executed_notebooks_and_what_pages_link_to(checkout):
    src = assemble("p", checkout)
    assert sorted(p.name for p in (src / "notebooks").iterdir()) == ["00_zero.ipynb"]
    nb = json.loads((src / "notebooks" / "00_zero.ipynb").read_text())
    assert "a result computed by make all" in json.dumps(nb) and WIDGET_MIME not in json.dumps(nb)
    readme = (src / "README.md").read_text()
    assert "[the findings](docs/findings.md)" in readme and "![a figure](figures/p/fig.png)" in readme
    assert "[notebook 00](notebooks/00_zero.ipynb)" in readme and "(https://example.org)" in readme
    assert "the tables folder (`results/p/tables`)" in readme and "a missing file (`results/p/gone.csv`)" in readme
    assert (src / "figures" / "p" / "fig.png").read_bytes() == PNG
    assert "fig3_CE | holds" in (src / "ledger.md").read_text()
    toc = (src / "_toc.yml").read_text()
    assert "notebooks/00_zero" in toc and "ledger" in toc and "docs/findings" in toc
    assert "results/report" in toc and "[a report](results/report.md)" in readme     # a linked report is a page


def test_no_executed_notebooks_is_a_user_error(tmp_path):
    (tmp_path / "results" / "p" / "executed").mkdir(parents=True)
    with pytest.raises(UserError, match="make all PROFILE=p"):
        assemble("p", tmp_path)


def test_built_site_has_every_page_and_no_network_resource(checkout):
    index = build("p", checkout)
    html = index.parent
    assert index.is_file() and (html / "search.html").is_file() and (html / "searchindex.js").is_file()
    nb_page = (html / "notebooks" / "00_zero.html").read_text()
    assert "a result computed by make all" in nb_page and "needs a live kernel" in nb_page
    assert '<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline"><mrow><mi>E</mi><mo>&#x0003D;</mo>' \
        in nb_page and "MathJax" not in nb_page
    pages = [p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts]
    assert {p.relative_to(html).as_posix() for p in pages} >= {"index.html", "README.html", "ledger.html",
                                                                "docs/findings.html", "notebooks/00_zero.html",
                                                                "results/report.html"}
    assert 'href="results/report.html"' in (html / "README.html").read_text()
    for page in pages:
        text = page.read_text(errors="replace")
        loaded = re.findall(r'<(?:script|link|img|iframe)[^>]+(?:src|href)="(https?:)?//', text)
        assert not loaded, f"{page} loads a resource from the network"
        for target in re.findall(r'(?:src|href)="([^"#?]+)', text):
            if target.startswith(("http://", "https://", "mailto:", "javascript:")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(html)}: {target} does not resolve"
