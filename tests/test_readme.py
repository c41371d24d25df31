"""README's results section holds exactly the committed toy tables (make all rewrites it)."""
import sys
from pathlib import Path

from cortex_nb.io.config import repo_root

TOOLS = Path(__file__).resolve().parents[1] / "tools"
if str(TOOLS) not in sys.path:  # make tooling, importable as `python tools/readme.py` sees it
    sys.path.insert(0, str(TOOLS))
from readme import END, START, results_block  # noqa: E402  (tools/readme.py)


def test_readme_results_equal_committed_tables():
    text = (repo_root() / "README.md").read_text()
    block = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert block == results_block("toy"), "run `python tools/readme.py toy` (make all does)"
