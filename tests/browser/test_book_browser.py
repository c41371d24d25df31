"""Real-browser test of the static book (`make book`) in headless Chromium, opened from file://.

Skipped unless CORTEX_BROWSER_TEST=1 and Chromium and playwright are there (``make browser-test``). The book of
CORTEX_BOOK_PROFILE (default toy) is built first when it is missing (it needs that profile's executed notebooks:
``make all``). Every page of the book's table of contents is loaded; on each: no request leaves file:// (the
page must work offline and tell nobody it was read), no console error, every <img> decoded, every internal link
resolving to a file of the site. Then the search page finds a word of the ledger. Screenshots of the front page, a
notebook page and the ledger go to results/browser/book_*.png.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CORTEX_CHROMIUM", "/usr/bin/chromium")
PROFILE = os.environ.get("CORTEX_BOOK_PROFILE", "toy")
SHOTS = ROOT / "results" / "browser"

if os.environ.get("CORTEX_BROWSER_TEST") != "1":
    pytest.skip("browser test: set CORTEX_BROWSER_TEST=1 (make browser-test)", allow_module_level=True)
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"browser test: no Chromium at {CHROMIUM}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test: pip install -e '.[browser]'")

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--allow-file-access-from-files"]


@pytest.fixture(scope="module")
def site() -> Path:
    index = ROOT / "results" / PROFILE / "book" / "html" / "index.html"
    if not index.is_file():
        from cortex_nb.errors import UserError
        from cortex_nb.pipeline.book import build

        try:
            index = build(PROFILE, ROOT)
        except UserError as e:
            pytest.skip(f"book test: {e.one_line()}")
    return index.parent


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if not ({"_static", "_sources", "atlas"} & set(p.relative_to(site).parts))
                  and p.name != "genindex.html")


def test_every_page_loads_offline_with_its_images_and_links(site, browser):
    pages = _pages(site)
    assert len(pages) >= 10, pages            # README, ledger, the docs pages, the notebooks
    notebooks = [p for p in pages if p.parent.name == "notebooks"]
    assert len(notebooks) >= 9, notebooks
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    external, errors = [], []
    page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file://", "data:", "blob:",
                                                                                   "about:")) else None)
    page.on("console", lambda m: errors.append(f"{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"failed to load {r.url}"))
    for p in pages:
        external.clear(), errors.clear()
        page.goto(p.as_uri(), wait_until="load")
        page.wait_for_timeout(300)
        rel = p.relative_to(site)
        assert external == [], f"{rel} requested {external[:3]}"
        assert errors == [], f"{rel}: {errors[:3]}"
        broken = page.eval_on_selector_all("img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0))"
                                                  ".map(e => e.getAttribute('src'))")
        assert broken == [], f"{rel}: images not shown {broken[:5]}"
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            u = urlparse(href)
            if u.scheme != "file":
                continue
            assert Path(unquote(u.path)).exists(), f"{rel}: link to {href} does not resolve"
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, target in (("front", site / "index.html"), ("notebook", notebooks[min(3, len(notebooks) - 1)]),
                         ("ledger", site / "ledger.html")):
        if target.is_file():
            page.goto(target.as_uri(), wait_until="load")
            page.wait_for_timeout(500)
            page.screenshot(path=str(SHOTS / f"book_{PROFILE}_{name}.png"))
    page.close()


def test_search_finds_a_check_of_the_ledger(site, browser):
    page = browser.new_page()
    page.goto((site / "search.html").as_uri() + "?q=faith_deletion", wait_until="load")
    page.wait_for_selector("#search-results li", timeout=30_000)
    hits = page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.getAttribute('href'))")
    assert any("ledger" in h for h in hits), hits
    page.close()
