"""Cold start in Debian's Chromium: a fresh workspace with the real shipped demo checkpoints. The banner lists each
demo variant as warm, and the first search after that answers from the vectors shipped beside the checkpoints:
no note is encoded and no model is loaded for it.

The time from the page saying ready to the first answer is printed and written to artifacts/cold-start.json
(a figure for a person; nothing here asserts on time). Screenshots land in artifacts/screenshots/."""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
START_UP_TIMEOUT = 600_000  # the sample's import on a busy 2-core machine; the warm-up itself reads files
TIMEOUT = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_of(selector: str) -> str:
    return f"((document.querySelector({json.dumps(selector)}) || {{}}).innerText || '')"


@pytest.fixture(scope="module")
def cold_app(tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.backend import Backend
    from core.demo import DEMO_VARIANTS, demo_run_name
    from core.runs import SHIPPED_CHECKPOINTS
    from launch import serve

    with pytest.MonkeyPatch.context() as patch:
        # Other app tests point this at no checkpoints (they use tiny runs); this one is about the real ones.
        patch.setenv("NOTELLM2_CHECKPOINTS", str(SHIPPED_CHECKPOINTS))
        backend = Backend(tmp_path_factory.mktemp("fresh") / "workspace")
        encoded, loaded = [], []
        encode, encoder = backend.workbench.encode, backend.workbench.encoder

        def counted_encode(name, notes, *args, **kwargs):
            encoded.append((name, len(notes), time.time()))
            return encode(name, notes, *args, **kwargs)

        def counted_encoder(name):
            loaded.append((name, time.time()))
            return encoder(name)

        backend.workbench.encode, backend.workbench.encoder = counted_encode, counted_encoder
        # The baselines' background encoding is left out: it would be counted, and it is not what is tested.
        backend.start_background(warm_zero_shot=())
        port = free_port()
        demo, backend = serve(backend.workspace.root, port=port, block=False, backend=backend)
        try:
            yield {"url": f"http://127.0.0.1:{port}/", "backend": backend, "encoded": encoded, "loaded": loaded,
                   "runs": [demo_run_name(v) for v in DEMO_VARIANTS]}
        finally:
            demo.close()


@pytest.fixture(scope="module")
def page(cold_app):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(TIMEOUT)
        page.goto(cold_app["url"])
        page.wait_for_selector("#wb-banner")
        yield page
        browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_first_search_on_a_fresh_workspace_answers_from_shipped_vectors(page, cold_app):
    runs = cold_app["runs"]
    warm = " && ".join(f"{text_of('#wb-banner')}.includes({json.dumps(run + ': warm')})" for run in runs)
    page.wait_for_function(f"{warm} && !{text_of('#wb-banner')}.includes('Starting up')", timeout=START_UP_TIMEOUT)
    ready = time.time()
    assert cold_app["backend"].startup.state == "ready"
    banner = page.locator("#wb-banner").inner_text()
    assert all(f"{run}: warm" in banner for run in runs), banner
    page.screenshot(path=str(ARTIFACTS / "screenshots" / "cold-start-ready.png"), full_page=True)

    page.get_by_role("tab", name="Search").click()
    page.wait_for_function("document.querySelector('#search-note input') && "
                           "document.querySelector('#search-note input').value.length > 0")
    page.wait_for_function("document.querySelector('#search-variant input').value.length > 0")
    variant = page.locator("#search-variant input").input_value()
    clicked = time.time()
    page.locator("#search-btn").click()
    page.wait_for_selector("#search-results .wb-card")
    answered = time.time()
    assert page.locator("#search-results .wb-card").count() == 12
    summary = page.locator("#search-summary").inner_text()
    assert any(run in summary for run in runs), summary  # a shipped variant answered
    page.screenshot(path=str(ARTIFACTS / "screenshots" / "cold-start-first-search.png"), full_page=True)

    # Two modality switches in a row: the newer one is what the page ends on, still without encoding.
    page.locator("#search-modality").get_by_text("image only", exact=True).click()
    page.locator("#search-modality").get_by_text("text only", exact=True).click()
    page.wait_for_function(f"{text_of('#search-summary')}.includes('modality text only')")
    page.wait_for_timeout(1500)  # an older answer arriving late would overwrite it now
    assert "modality text only" in page.locator("#search-summary").inner_text()

    encoded = [(name, count) for name, count, at in cold_app["encoded"]]
    loaded = [name for name, at in cold_app["loaded"]]
    assert not encoded, f"notes were encoded although the vectors were shipped: {encoded}"
    assert not loaded, f"an encoder was loaded for a search the shipped vectors answer: {loaded}"
    figures = {"variant": variant, "ready_to_click_s": round(clicked - ready, 3),
               "ready_to_first_answer_s": round(answered - ready, 3),
               "click_to_first_answer_s": round(answered - clicked, 3)}
    (ARTIFACTS / "cold-start.json").write_text(json.dumps(figures, indent=1))
    print("cold start:", figures)
    assert re.match(r"^demo-", variant)
