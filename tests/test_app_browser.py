"""The demo page in a real browser: Debian's chromium, headless, driven by playwright (no browser download).
It types a prompt, presses Generate, waits for the gallery to hold the ranked images with their CLIP scores,
saves a screenshot, and checks that the page asked nothing of any host but the demo server.

DEMO_SCREENSHOT=docs/demo.png DEMO_PIPELINE=runs/shapes/pipeline pytest tests/test_app_browser.py
writes the README's screenshot from a trained pipeline (the tests use tiny random components)."""

import os
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_app import Server, pipeline_dir  # noqa: F401  (the tiny saved pipeline fixture)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                 reason="Debian's chromium is missing: apt-get install -y chromium")]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_a_browser_generates_and_sees_ranked_images(pipeline_dir, tmp_path):  # noqa: F811
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser "
                                                                   "download: it drives Debian's chromium)")
    server = Server(Path(os.environ.get("DEMO_PIPELINE", pipeline_dir)), "--batch-wait", "0")
    hosts = set()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda request: hosts.add(urlparse(request.url).hostname))
            page.goto(server.url, wait_until="networkidle")
            page.locator("#prompt textarea").fill("a small red circle in the top left")
            page.locator("#generate").click()
            status = page.locator("#status")
            status.filter(has_text="Done").wait_for(timeout=240_000)
            done = status.inner_text()
            captions = page.locator("#gallery .caption-label, #gallery figcaption").all_inner_texts()
            if not captions:  # where the gallery keeps captions differs between Gradio releases
                captions = [t for t in page.locator("#gallery").inner_text().split("\n") if "CLIP" in t]
            page.wait_for_timeout(500)  # the last images paint
            shot = Path(os.environ.get("DEMO_SCREENSHOT", tmp_path / "demo.png"))
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        server.stop()
    scores = [float(c.split()[1]) for c in captions if c.startswith("CLIP ")]
    assert len(scores) >= 2 and scores == sorted(scores, reverse=True), captions
    assert re.search(r"seed \d+", done), done  # the random seed drawn for this run is shown
    assert shot.stat().st_size > 10_000
    assert hosts <= {"127.0.0.1"}, f"the page fetched from outside: {sorted(hosts - {'127.0.0.1'})}"
