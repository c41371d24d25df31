"""The token browser in JupyterLab itself (issue #15): the README tells users to open notebook 06 in Lab,
so Lab is tested too -- not only Voilà, which hides Lab-only problems.

JupyterLab is served on 127.0.0.1 (no token, rooted at the checkout as ``make lab`` does) with
CORTEX_PROFILE=smoke; headless Chromium opens notebooks/06_token_browser.ipynb, checks that opening it does
not mark it modified, runs every cell (Run > Run All Cells), waits for the app, makes a search and an
intervention (``steps.search_and_intervene``: the page's numbers must equal cortex_nb's for the same edit),
and, separately, clicks through the token atlas from file:// (index -> class -> token, every image loaded).
Skipped unless CORTEX_BROWSER_TEST=1 (``make browser-test``). Screenshots under results/browser/.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from steps import _prefix, search_and_intervene
from test_token_browser_browser import CHANGE_TIMEOUT, CHROMIUM, CHROMIUM_ARGS, RENDER_TIMEOUT, ROOT, _free_port, serve

NOTEBOOK = "notebooks/06_token_browser.ipynb"
SHOTS = ROOT / "results" / "browser"
#: the profile the Lab test runs notebook 06 on (smoke; CORTEX_BROWSER_PROFILE=toy after `make all` makes the
#: README's screenshots)
PROFILE = os.environ.get("CORTEX_BROWSER_PROFILE", "smoke")
APP = ".jp-OutputArea .widget-vbox:has(> .widget-hbox .cortex-class-select)"
GALLERY = f"{APP} > img.widget-image"
TOKEN_SELECT = f"{APP} .cortex-token-select select"

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def lab_url(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    home = tmp_path_factory.mktemp("lab-home")          # Lab's workspace / settings: not the user's
    env = dict(os.environ, CORTEX_PROFILE=PROFILE, PYTHONHASHSEED="0", OMP_WAIT_POLICY="PASSIVE",
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # never autosave: the test runs a tracked notebook, whose outputs must not be written back
    docmanager = home / "settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    apputils = home / "settings" / "@jupyterlab" / "apputils-extension"     # no "Jupyter news?" pop-up
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={ROOT}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate"] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0
                                                else [])
    with serve(cmd, env, port, log):
        yield f"http://127.0.0.1:{port}", log


def test_token_browser_in_jupyterlab(lab_url):
    url, log = lab_url
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            t0 = time.monotonic()
            page.goto(f"{url}/lab/tree/{NOTEBOOK}", timeout=120_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus", timeout=120_000)
            page.wait_for_timeout(3000)
            # opening must not mark the notebook modified (a save would rewrite a tracked file)
            assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, "opening marked the notebook modified"
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
            page.wait_for_function(
                "sel => { const el = document.querySelector(sel); return !!(el && el.src && el.naturalWidth > 0); }",
                arg=GALLERY, timeout=RENDER_TIMEOUT * 1000, polling=500)
            print(f"\napp usable in JupyterLab after {time.monotonic() - t0:.1f} s")
            page.screenshot(path=str(SHOTS / f"{_prefix(PROFILE)}jupyterlab_browser.png"), full_page=False)
            check_readable(page)
            search_and_intervene(page, APP, TOKEN_SELECT, SHOTS, CHANGE_TIMEOUT, PROFILE)
            page.locator(f"{APP} .cortex-search-results").first.screenshot(path=str(SHOTS / f"{_prefix(PROFILE)}search.png"))
            page.set_viewport_size({"width": 1500, "height": 2700})   # the whole app inside Lab's scrolling panel
            page.locator(APP).first.scroll_into_view_if_needed()
            page.evaluate(f"document.querySelector({APP!r}).scrollIntoView({{block: 'start'}})")
            page.wait_for_timeout(500)
            page.locator(APP).first.screenshot(path=str(SHOTS / f"{_prefix(PROFILE)}jupyterlab_app.png"))
            assert not [e for e in errors if "widget" in e.lower()], f"page errors: {errors}"
        except Exception:
            page.screenshot(path=str(SHOTS / f"{_prefix(PROFILE)}jupyterlab_failed.png"), full_page=True)
            print(log.read_text()[-3000:])
            raise
        finally:
            browser.close()


SNAPSHOT = ".jp-Notebook .jp-Cell:last-child .jp-RenderedImage img"


def check_readable(page) -> None:
    """Every chart of the app shown at its own pixel size (none stretched or blurred); the arrow keys move the
    focused token list's selection, not the notebook's cell cursor; the static snapshot follows the app."""
    sizes = page.eval_on_selector_all(f"{APP} img.widget-image", "imgs => imgs.filter(i => i.naturalWidth > 0)"
                                      ".map(i => [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight])")
    assert len(sizes) >= 4, sizes
    stretched = [s for s in sizes if abs(s[0] - s[2]) > 1 or abs(s[1] - s[3]) > 1]
    assert not stretched, f"images shown at another size than drawn (natural w, h, shown w, h): {stretched}"

    active = ("() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')]"
              ".findIndex(c => c.classList.contains('jp-mod-active'))")
    page.wait_for_function(f"() => document.querySelector({SNAPSHOT!r}) !== null", timeout=CHANGE_TIMEOUT * 1000)
    snap0 = page.eval_on_selector(SNAPSHOT, "i => i.src")
    page.locator(TOKEN_SELECT).focus()                 # focusing makes the app's cell the active one
    i0, cell0 = page.eval_on_selector(TOKEN_SELECT, "s => s.selectedIndex"), page.evaluate(active)
    page.keyboard.press("ArrowDown")
    page.wait_for_function(f"sel => document.querySelector(sel).selectedIndex === {i0 + 1}", arg=TOKEN_SELECT,
                           timeout=10_000)
    assert page.evaluate(active) == cell0, "ArrowDown in the token list moved the notebook's cell cursor"
    page.wait_for_function(f"src => document.querySelector({SNAPSHOT!r}).src !== src", arg=snap0,
                           timeout=CHANGE_TIMEOUT * 1000)   # the kernel redrew the views and the snapshot


def test_the_atlas_clicks_through_from_file_urls(tmp_path):
    """The token atlas opened from file:// (no server): index -> a class page -> a token page, every image
    on the way loaded."""
    from cortex_nb import load_profile
    from cortex_nb.pipeline.atlas import build_atlas

    index = build_atlas(load_profile("smoke"), out=tmp_path / "atlas")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        try:
            page.goto(index.as_uri())
            for link in ('a[href^="class_"]', 'a[href^="token_"]'):
                page.locator(link).first.click()
                page.wait_for_load_state("load")
                broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && "
                                                              "i.naturalWidth > 0)).map(i => i.src)")
                assert not broken, f"{page.url}: images not loaded: {broken}"
            assert page.url.startswith("file://") and "/token_" in page.url
            page.screenshot(path=str(SHOTS / "atlas_smoke_token.png"))
        finally:
            browser.close()
