"""Real-browser test of the token browser (notebooks/06_token_browser.ipynb) in headless Chromium.

Skipped unless CORTEX_BROWSER_TEST=1, Chromium is installed and ``playwright`` + ``voila`` import
(``make browser-test`` sets all of that up). The unit run (``pytest tests``) never needs a browser.

Why Voilà and not JupyterLab: Voilà executes the notebook on page load and renders the widget
outputs live (a real kernel, the real ipywidgets front end and comm round-trips), so the test does
not have to drive Lab's menus, dialogs and kernel pickers, which change between Lab versions and
are the usual source of flakiness. It installs from PyPI as one wheel (``pip install voila``).

What it checks: the app renders; changing the class (the ``class`` <select>) changes the gallery
image; choosing another token (the ``token`` <select>) changes it again; a search for the head lists
tokens and a click opens the first; an intervention (two cells blacked out, apply) shows the numbers
``cortex_nb.method.intervene`` computes for the same edit in this process. The gallery image is
compared by the SHA-256 of its PNG bytes (ipywidgets 8 serves ``Image`` as a blob: URL; the page
fetches the blob and hashes it). A full-page screenshot goes to results/browser/token_browser.png.

Environment knobs: CORTEX_CHROMIUM (default /usr/bin/chromium), CORTEX_BROWSER_TIMEOUT (seconds the
notebook may take to render the app; default 900 — with no smoke caches the notebook builds them).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steps import search_and_intervene  # tests/browser/steps.py (pytest puts this directory on sys.path)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "notebooks/06_token_browser.ipynb"
CHROMIUM = os.environ.get("CORTEX_CHROMIUM", "/usr/bin/chromium")
RENDER_TIMEOUT = float(os.environ.get("CORTEX_BROWSER_TIMEOUT", "900"))
CHANGE_TIMEOUT = 120.0       # s for the gallery to change after a control changes
SHOT = ROOT / "results" / "browser" / "token_browser.png"

if os.environ.get("CORTEX_BROWSER_TEST") != "1":
    pytest.skip("browser test: set CORTEX_BROWSER_TEST=1 (make browser-test)", allow_module_level=True)
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"browser test: no Chromium at {CHROMIUM}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="browser test: pip install -e '.[browser]'")
pytest.importorskip("voila", reason="browser test: pip install -e '.[browser]'")

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

# The app's outer VBox is the one whose HBox holds the class dropdown; its direct <img> child is the
# gallery (token/ranking/usage images sit inside nested boxes). No CSS hooks needed in widgets.py.
APP = ".widget-vbox:has(> .widget-hbox .widget-dropdown)"
GALLERY = f"{APP} > img.widget-image"
CLASS_SELECT = f"{APP} .cortex-class-select select"
TOKEN_SELECT = f"{APP} .cortex-token-select select"

# SHA-256 of the bytes behind an <img> (blob: or data: URL); null while it has no src
_DIGEST_JS = """async (el) => {
  if (!el || !el.src) return null;
  const buf = await (await fetch(el.src)).arrayBuffer();
  if (buf.byteLength === 0) return null;
  const h = await crypto.subtle.digest('SHA-256', buf);
  return Array.from(new Uint8Array(h)).map(b => b.toString(16).padStart(2, '0')).join('');
}"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Wait until the server accepts TCP connections (an HTTP GET of / would already start a kernel)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"voila did not listen on port {port} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (server + kernel), SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def voila_url(tmp_path_factory):
    """Voilà serving notebook 06 on a free 127.0.0.1 port, CORTEX_PROFILE=smoke in the kernel's env."""
    port = _free_port()
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    env = dict(os.environ, CORTEX_PROFILE="smoke", PYTHONHASHSEED="0", OMP_WAIT_POLICY="PASSIVE")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "voila", NOTEBOOK, "--no-browser", "--Voila.ip=127.0.0.1",
           f"--port={port}", "--Voila.port_retries=0", "--Voila.token=",
           "--VoilaConfiguration.show_tracebacks=True",
           f"--VoilaExecutor.timeout={int(RENDER_TIMEOUT)}", "--VoilaExecutor.startup_timeout=180"]
    with serve(cmd, env, port, log):
        yield f"http://127.0.0.1:{port}/", log


@contextlib.contextmanager
def serve(cmd: list[str], env: dict, port: int, log: Path):
    """Run a server (Voilà, JupyterLab) from the checkout, output to ``log``, in its own process group (so
    stopping it stops its kernels too); yields once it listens on ``port``; stopped on exit."""
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, 120, log)
        yield proc
    finally:
        _stop(proc)
        fh.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        try:
            pg = ctx.pages[0] if ctx.pages else ctx.new_page()
            yield pg
        finally:
            ctx.close()


def _digest(pg) -> str | None:
    return pg.eval_on_selector(GALLERY, _DIGEST_JS)


def _wait_change(pg, old: str, what: str, timeout: float = CHANGE_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = _digest(pg)
        if d is not None and d != old:
            return d
        pg.wait_for_timeout(250)
    raise AssertionError(f"the gallery image did not change within {timeout:.0f} s after {what}")


def _other_option(pg, selector: str) -> str:
    """The value of an option of <select> other than the selected one (the next, or the first)."""
    values = pg.eval_on_selector(selector, "s => Array.from(s.options).map(o => o.value)")
    current = pg.eval_on_selector(selector, "s => s.value")
    assert len(values) >= 2, f"{selector} offers fewer than 2 options: {values}"
    i = values.index(current) if current in values else -1
    return values[(i + 1) % len(values)]


def test_token_browser_in_chromium(voila_url, page):
    url, log = voila_url
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    t0 = time.monotonic()
    page.goto(url, timeout=RENDER_TIMEOUT * 1000, wait_until="commit")
    try:   # Voilà streams the page while the kernel runs the cells; wait for the app's gallery PNG
        page.wait_for_function(
            "sel => { const el = document.querySelector(sel); return !!(el && el.src && el.naturalWidth > 0); }",
            arg=GALLERY, timeout=RENDER_TIMEOUT * 1000, polling=500)
    except Exception:
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOT.with_name("token_browser_failed.png")), full_page=True)
        raise AssertionError(f"app did not render in {RENDER_TIMEOUT:.0f} s; page errors {errors}; "
                             f"voila log tail:\n{log.read_text()[-4000:]}")
    print(f"\napp rendered after {time.monotonic() - t0:.1f} s")
    g0 = _digest(page)
    assert g0, "gallery image has no bytes"

    # 1. another class -> the gallery must change
    cls = _other_option(page, CLASS_SELECT)
    page.select_option(CLASS_SELECT, value=cls, timeout=30_000)
    g1 = _wait_change(page, g0, f"selecting class option {cls!r}")

    # 2. another token (after the class change the token list holds the new class's ranking)
    page.wait_for_function("sel => { const s = document.querySelector(sel); return s && s.options.length >= 2; }",
                           arg=TOKEN_SELECT, timeout=CHANGE_TIMEOUT * 1000)
    tok = _other_option(page, TOKEN_SELECT)
    page.select_option(TOKEN_SELECT, value=tok, timeout=30_000)
    g2 = _wait_change(page, g1, f"selecting token option {tok!r}")

    # Voilà's page scrolls inside a container, so full_page alone stops at the viewport: grow the
    # viewport to the tallest scroll height first (capped), then take the full-page screenshot.
    h = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
    page.set_viewport_size({"width": 1400, "height": int(min(max(h, 1000), 8000)) + 40})
    page.wait_for_timeout(1000)   # relayout + let the other views settle before the screenshot
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOT), full_page=True)
    page.locator(GALLERY).screenshot(path=str(SHOT.with_name("token_browser_gallery.png")))
    print(f"screenshot: {SHOT}")

    assert g0 != g1, "gallery unchanged after the class change"
    assert g1 != g2, "gallery unchanged after the token change"

    search_and_intervene(page, APP, TOKEN_SELECT, SHOT.parent, CHANGE_TIMEOUT)
    assert not [e for e in errors if "widget" in e.lower()], f"page errors: {errors}"
