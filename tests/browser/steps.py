"""Steps shared by the browser tests (Voilà and JupyterLab): a search, then an intervention whose numbers
are checked against ``cortex_nb.method.intervene`` computed in the test process."""
from __future__ import annotations

import re
import time
from pathlib import Path


def search_and_intervene(page, app: str, token_select: str, shots: Path, timeout: float,
                         profile: str = "smoke") -> None:
    """In the rendered app: search the head and open the first result; then black out cells (1, 2) and (3, 0)
    of the panel's image and apply; the table's numbers must be the library's. Screenshots to ``shots``."""
    # 3. search: the head -> tokens listed; a click opens the first one in the token list
    page.select_option(f"{app} .cortex-search-part select", label="head", timeout=30_000)
    results = f"{app} .cortex-search-results select"
    page.wait_for_function("sel => { const s = document.querySelector(sel); return s && s.options.length >= 1; }",
                           arg=results, timeout=timeout * 1000)
    first = page.eval_on_selector(results, "s => s.options[0].textContent")
    found = int(re.search(r"token\s(\d+)", first).group(1))   # ipywidgets shows spaces as U+00A0
    page.select_option(results, index=0, timeout=30_000)
    deadline = time.monotonic() + timeout
    while True:       # the token list shows the searched token selected (as a concept token or 'search: ...')
        sel = page.eval_on_selector(token_select, "s => s.selectedIndex >= 0 ? s.options[s.selectedIndex].textContent : ''")
        if re.search(rf"token\s{found}\b", sel):
            break
        assert time.monotonic() < deadline, f"token {found} not opened after the search click; selected: {sel!r}"
        page.wait_for_timeout(250)

    # 4. intervention: two cells blacked out on the first gallery image; the numbers shown must be the
    # library's for the same edit (computed here, in this process, from the same caches)
    panel_select = ".cortex-intervene-image select"
    page.wait_for_function("sel => { const s = document.querySelector(sel); return s && s.options.length >= 1; }",
                           arg=panel_select, timeout=timeout * 1000)
    _settle(page, panel_select)          # the kernel has finished redrawing for the opened token
    for cell in ("cell (1, 2)", "cell (3, 0)"):
        page.locator(f'button[title="{cell}"]').click()
    page.locator("button", has_text="apply").first.click()
    table = ".cortex-intervene-table"
    subject = f"{table} caption.cortex-intervene-subject"
    page.wait_for_function("sel => { const e = document.querySelector(sel); return e && e.textContent.includes('cells'); }",
                           arg=subject, timeout=timeout * 1000)
    page.locator(table).scroll_into_view_if_needed()
    assert page.locator(table).is_visible(), "the intervention's table holds its numbers but is not shown"
    # what the numbers were computed for, as the kernel wrote it beside them (never read from another widget)
    caption = page.eval_on_selector(subject, "e => e.textContent").replace("\xa0", " ")
    shown_text = page.eval_on_selector(table, "e => e.innerText")
    target_label = page.eval_on_selector(".cortex-intervene-target select",
                                         "s => s.options[s.selectedIndex].textContent")
    image = int(re.search(r"image #(\d+)", caption).group(1))
    assert "cells (1, 2), (3, 0) · black" in caption, caption
    image_label = page.eval_on_selector(panel_select, "s => s.options[s.selectedIndex].textContent").replace("\xa0", " ")
    assert image_label.startswith(f"#{image} "), (image_label, caption)   # the dropdown names the judged image
    _check_intervention(shown_text, image, target_label, profile)
    page.locator(".cortex-intervene-table").screenshot(path=str(shots / f"{_prefix(profile)}intervention_table.png"))
    page.locator(".cortex-intervene-view").screenshot(path=str(shots / f"{_prefix(profile)}intervention.png"))


def _settle(page, panel_select: str, quiet_ms: int = 1500, timeout: float = 60) -> None:
    """Wait until the panel's image list has not changed for ``quiet_ms``: the kernel's answer to the last click
    (token opened, gallery and list redrawn) has arrived, so the cells clicked next belong to the image shown."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = page.eval_on_selector(panel_select, "s => [...s.options].map(o => o.textContent).join('|') + '@' + s.selectedIndex")
        if now != last:
            last, since = now, time.monotonic()
        elif (time.monotonic() - since) * 1000 >= quiet_ms:
            return
        page.wait_for_timeout(250)


def _prefix(profile: str) -> str:
    """Screenshot names: the smoke run's plain (make browser-test), another profile's prefixed ('toy_...'),
    so the README's toy screenshots survive the routine smoke run."""
    return "" if profile == "smoke" else f"{profile}_"


def _check_intervention(shown: str, i: int, target_name: str, profile: str = "smoke") -> None:
    """The table's numbers for gallery image i, cells (1, 2) and (3, 0) blacked out, equal judge(edit_image())."""
    import numpy as np
    import torch

    from cortex_nb import browser_data, compose, load_profile
    from cortex_nb.method.intervene import edit_image, judge
    from cortex_nb.pipeline.run import display_name

    cfg = load_profile(profile)
    run = compose(cfg)
    data = browser_data(cfg, run.vqgm, run.fits)
    m = run.vqgm.m
    tokens = np.asarray(data.gallery_tokens)[i].astype(np.int64).reshape(m, m)
    image, true = np.asarray(data.gallery_images)[i], int(np.asarray(data.gallery_labels)[i])
    cells = np.zeros((m, m), bool)
    cells[1, 2] = cells[3, 0] = True
    new_t, new_img = edit_image(run.vqgm, tokens, image, cells, "black")
    target = list(data.class_names).index(target_name.replace("\xa0", " "))
    got = judge(run.evaluators, run.extractors["CE"], run.vqgm.codebook, np.stack([image, new_img]),
                torch.stack([torch.as_tensor(tokens), new_t]), true=true, target=target)
    lines = {ln.split("\t")[0].replace("\xa0", " ").strip(): ln for ln in shown.splitlines()}
    for key, res in got.items():
        label = "extractor CE" if key == "extractor" else display_name(key)
        nums = [float(x) for x in re.findall(r"\d+\.\d{3}", lines[label])]
        expect = [res["p_true"][0], res["p_true"][1], res["p_target"][0], res["p_target"][1]]
        assert np.allclose(nums, expect, atol=1.5e-3), (label, nums, expect)
