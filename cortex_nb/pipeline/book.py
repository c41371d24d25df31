"""The companion as a static site (`make book`): Jupyter Book over a profile's *executed* notebooks.

Nothing is executed again. :func:`assemble` copies into ``results/<profile>/book/src``:

- README.md (the front page) and every page of ``docs/``,
- the executed notebooks of ``results/<profile>/executed/`` (what `make all` wrote), with each
  ipywidgets output replaced by a note (a widget needs a live kernel: ``make lab``, or the token
  atlas) and the static images it came with kept,
- the claims ledger of the profile as its own page,
- every file those pages link to that exists in the checkout (figures, tables, benchmarks), at the
  same relative path, so the links resolve; a link to a folder or to a file that is not there becomes
  plain text naming the path,

then :func:`build` runs Jupyter Book (Sphinx + MyST-NB) into ``results/<profile>/book/html`` and turns every formula
into MathML (``latex2mathml``), which browsers draw natively: the site opens from ``file://`` and makes no network
request at view time (MathJax would come from a CDN, or load web fonts that Chromium refuses from ``file://``).
The token atlas, when ``make atlas`` wrote it, is copied in beside the pages (``atlas/index.html``).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import UserError
from ..io.config import repo_root

__all__ = ["assemble", "build", "WIDGET_MIME", "NOTEBOOK_TITLES"]

#: the MIME type of an ipywidgets view in a notebook's outputs
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
#: the order of the docs pages in the book's table of contents (any other page of docs/ follows)
DOCS_ORDER = ("findings", "results", "running", "browser", "imagenet", "performance", "protocol", "your-model", "tests")
#: the part of the table of contents each notebook falls in
NOTEBOOK_TITLES = "The notebooks (executed by `make all`)"
_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
_SKIP = ("http://", "https://", "mailto:", "#", "data:")
#: Jupyter Book always loads sphinx-thebe (live code cells on a remote kernel, fetched from unpkg.com when used): a
#: static companion has no kernel to offer, and the extension's config script, included twice per page, is a
#: JavaScript error ("THEBE_JS_URL has already been declared"). Its scripts are taken out of every page.
_THEBE = re.compile(r'\s*<script>const THEBE_JS_URL = [^<]*</script>|\s*<script async="async" src="[^"]*sphinx-thebe\.js[^"]*"></script>'
                    r'|\s*<script type="text/x-thebe-config">.*?</script>', re.S)
#: the theme's first script reads the colour mode from localStorage, or "" on a first visit, which its next script
#: then logs as a console error ("Got invalid theme mode"); the book's pages start in light mode instead
_MODE = 'document.documentElement.dataset.mode = localStorage.getItem("mode") || "";'


def _widget_note(atlas: bool) -> dict:
    where = ("the token atlas (`atlas/index.html` in this site) is its static version"
             if atlas else "`make atlas` writes its static version")
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/markdown": f"*An interactive widget: it needs a live kernel. `make lab` opens this notebook "
                                      f"with one; {where}.*"}}


def strip_widgets(nb: dict, atlas: bool) -> int:
    """Replace every ipywidgets output of ``nb`` (in place) by a note, keeping the other representations
    of that output (a static image a widget was shown with). Returns how many outputs were replaced."""
    n = 0
    for cell in nb.get("cells", []):
        outs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                n += 1
                rest = {k: v for k, v in data.items() if k not in (WIDGET_MIME, "text/plain")}
                if rest:
                    outs.append({**out, "data": rest})
                outs.append(_widget_note(atlas))
            else:
                outs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outs
    nb.get("metadata", {}).pop("widgets", None)
    return n


def _rewrite_links(text: str, page: Path, root: Path, src: Path, reports: set | None = None) -> str:
    """Copy what the page's relative links point to into ``src`` (same relative path); a link to a folder or a
    missing file becomes plain text naming its path."""
    def sub(m: re.Match) -> str:
        bang, label, target = m.groups()
        if target.startswith(_SKIP):
            return m.group(0)
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve()
        try:
            rel = dest.relative_to(root)
        except ValueError:
            return f"{label} (`{path}`)" if not bang else ""
        if dest.is_file():
            if rel.suffix not in (".md", ".ipynb") or not (src / rel).exists():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                if not (src / rel).exists():
                    shutil.copy2(dest, src / rel)
            if rel.suffix == ".md" and rel.parts[0] not in ("docs", "README.md") and reports is not None:
                reports.add(rel.with_suffix("").as_posix())     # a report page (benchmarks, chaos): in the contents
            return m.group(0)
        if rel.suffix == ".ipynb" and (src / rel).exists():      # a notebook: its executed copy is in the book
            return m.group(0)
        return f"{label} (`{rel.as_posix()}`)" if not bang else f"*(figure `{rel.as_posix()}` not written yet)*"
    return _LINK.sub(sub, text)


def assemble(profile: str, root: Path | None = None) -> Path:
    """Write the book's sources for ``profile`` under ``results/<profile>/book/src`` (fresh); returns that folder.
    Raises UserError when the profile has no executed notebooks (run `make all` first)."""
    root = Path(root or repo_root()).resolve()
    results = root / "results" / profile
    executed = sorted(p for p in (results / "executed").glob("[0-9][0-9]_*.ipynb")
                      if re.fullmatch(r"\d\d_[^.]+\.ipynb", p.name))      # not a stage's temporary file in flight
    if not executed:
        raise UserError(f"no executed notebooks in {results / 'executed'}: the book is built from what `make all` "
                        "executed, it runs nothing itself", fix=f"make all PROFILE={profile}, then make book PROFILE={profile}")
    book = results / "book"
    src = book / "src"
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    atlas = (results / "atlas" / "index.html").is_file()
    for p in executed:
        nb = json.loads(p.read_text(encoding="utf-8"))
        strip_widgets(nb, atlas)
        (src / "notebooks" / p.name).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    pages = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    for page in pages:
        rel = page.relative_to(root)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
    ledger = results / "tables" / "ledger.md"
    extra = []
    if ledger.is_file():
        (src / "ledger.md").write_text(
            f"# The claims ledger ({profile})\n\nEvery claim as a named check, judged by one rule set over the run "
            f"and its seed replicates (how each is judged: [the findings](docs/findings.md)). Written by `make all` "
            f"(`python -m cortex_nb ledger --profile {profile}`).\n\n" + ledger.read_text(encoding="utf-8") + "\n",
            encoding="utf-8")
        extra.append("ledger")
    if atlas:
        (src / "atlas.md").write_text(
            "# The token atlas\n\nA static site of CE's concept tokens, a page per class and per token (`make atlas`): "
            "<a href=\"atlas/index.html\">open the atlas</a>.\n", encoding="utf-8")
        extra.append("atlas")
    reports: set = set()
    for page in pages:
        rel = page.relative_to(root)
        (src / rel).write_text(_rewrite_links(page.read_text(encoding="utf-8"), page, root, src, reports),
                               encoding="utf-8")
    for rel in sorted(reports):                 # the reports' own links resolve too (their figures, tables)
        f = src / f"{rel}.md"
        f.write_text(_rewrite_links(f.read_text(encoding="utf-8"), root / f"{rel}.md", root, src), encoding="utf-8")
    _write_config(src, profile, executed, [p.stem for p in pages[1:]], extra, sorted(reports))
    return src


def _write_config(src: Path, profile: str, executed: list[Path], docs: list[str], extra: list[str],
                  reports: list[str] = ()) -> None:
    import yaml

    order = [d for d in DOCS_ORDER if d in docs] + [d for d in docs if d not in DOCS_ORDER]
    toc = {"format": "jb-book", "root": "README", "parts": [
        {"caption": NOTEBOOK_TITLES, "chapters": [{"file": f"notebooks/{p.stem}"} for p in executed]},
        {"caption": "Results", "chapters": [{"file": e} for e in extra if e == "ledger"]
         + [{"file": f"docs/{d}"} for d in order if d in ("findings", "results")]},
        {"caption": "Using the companion", "chapters": [{"file": f"docs/{d}"} for d in order
                                                        if d not in ("findings", "results")]
         + [{"file": e} for e in extra if e == "atlas"]},
        {"caption": "Reports the pages link to", "chapters": [{"file": r} for r in reports]}]}
    toc["parts"] = [p for p in toc["parts"] if p["chapters"]]
    config = {
        "title": f"cortex-nb: the CORTEX companion ({profile})",
        "author": "cortex-nb",
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        "html": {"use_repository_button": False, "use_issues_button": False, "use_edit_page_button": False,
                 "use_download_button": False, "home_page_in_navbar": True, "extra_footer":
                 f"Built by <code>make book PROFILE={profile}</code> from the executed notebooks; nothing was re-run."},
        "launch_buttons": {"notebook_interface": "", "binderhub_url": "", "jupyterhub_url": "", "thebe": False,
                           "colab_url": ""},
        "parse": {"myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence"]},
        "sphinx": {"config": {
            # math becomes MathML when the book is built (build()); MathJax would fetch web fonts, which Chromium
            # refuses to load from file://, or come from a CDN
            "mathjax_path": "mathjax-not-used.js",
            "suppress_warnings": ["myst.header", "mystnb.unknown_mime_type"],
            # an explicit mode: from file:// the theme finds no stored one and logs an error before falling back
            "html_theme_options": {"search_bar_text": "Search the companion…", "use_download_button": False,
                                   "use_fullscreen_button": False, "default_mode": "light"},
        }},
    }
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")


_MATH = re.compile(r'<(span|div) class="math notranslate nohighlight">\s*\\[(\[](.*?)\\[)\]]\s*</\1>', re.S)
_MATHJAX = re.compile(r'\s*<script[^>]*>[^<]*MathJax[^<]*</script>|\s*<script[^>]*src="[^"]*mathjax-not-used\.js"[^>]*></script>')


def _mathml(page: str) -> str:
    """Every TeX formula of a built page as MathML (latex2mathml), which browsers draw natively, offline, with the
    reader's fonts; MathJax's scripts out. A formula latex2mathml cannot read stays as its TeX source."""
    from html import unescape

    from latex2mathml.converter import convert

    def sub(m: re.Match) -> str:
        tag, tex = m.group(1), unescape(m.group(2))
        try:
            return convert(tex, display="block" if tag == "div" else "inline")
        except Exception:  # noqa: BLE001 - an unsupported command: show the source rather than nothing
            return f"<code>{m.group(2)}</code>"
    return _MATHJAX.sub("", _MATH.sub(sub, page))


def build(profile: str, root: Path | None = None) -> Path:
    """Assemble and build the book of ``profile``; returns the site's ``index.html``
    (``results/<profile>/book/html``)."""
    root = Path(root or repo_root()).resolve()
    src = assemble(profile, root)
    book = src.parent
    out = book / "html"
    work = book / "build"
    for d in (out, work):
        if d.exists():
            shutil.rmtree(d)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--builder", "html",
           "--path-output", str(work), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"jupyter-book failed building {src}:\n{(proc.stdout + proc.stderr)[-3000:]}",
                        fix="pip install -e '.[book]' (make book does), then make book again")
    html = work / "_build" / "html"
    atlas = root / "results" / profile / "atlas"
    if (atlas / "index.html").is_file():
        shutil.copytree(atlas, html / "atlas")
    for page in html.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        lean = _mathml(_THEBE.sub("", text).replace(_MODE, _MODE.replace('|| ""', '|| "light"')))
        if lean != text:
            page.write_text(lean, encoding="utf-8")
    html.rename(out)
    shutil.rmtree(work)
    return out / "index.html"
