"""README's headline and docs/results.md hold exactly the committed toy tables (make all rewrites them)."""
import sys
from pathlib import Path

from cortex_nb.io.config import repo_root

TOOLS = Path(__file__).resolve().parents[1] / "tools"
if str(TOOLS) not in sys.path:  # make tooling, importable as `python tools/readme.py` sees it
    sys.path.insert(0, str(TOOLS))
from readme import END, HEAD_END, HEAD_START, START, headline_block, results_block  # noqa: E402  (tools/readme.py)


def test_readme_results_equal_committed_tables():
    text = (repo_root() / "docs" / "results.md").read_text()
    block = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert block == results_block("toy"), "run `python tools/readme.py toy` (make all does)"
    text = (repo_root() / "README.md").read_text()
    block = HEAD_START + text.split(HEAD_START, 1)[1].split(HEAD_END, 1)[0] + HEAD_END
    assert block == headline_block("toy"), "run `python tools/readme.py toy` (make all does)"


def test_readme_is_short_and_every_local_link_resolves():
    import re

    root = repo_root()
    text = (root / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        prose = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)          # links, not code
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
