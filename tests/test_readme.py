"""README's results section holds exactly the committed toy tables (make all rewrites it)."""
from cortex_nb.readme import END, START, results_block
from cortex_nb.config import repo_root


def test_readme_results_equal_committed_tables():
    text = (repo_root() / "README.md").read_text()
    block = START + text.split(START, 1)[1].split(END, 1)[0] + END
    assert block == results_block("toy"), "run `python -m cortex_nb.readme toy` (make all does)"
