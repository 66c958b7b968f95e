"""The real app in Debian's Chromium: search, switch variants, compare, map, start and stop a tiny fine-tune.

Screenshots land in artifacts/screenshots/ (git-ignored) for a person to look at."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

try:
    from workbench_server import launch
except ImportError:
    try:
        from tests.app.workbench_server import launch
    except ImportError:  # run from tests/browser alone
        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "app"))
        from workbench_server import launch

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
TIMEOUT = 60_000


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    launched = launch(tmp_path_factory.mktemp("workspace"))
    yield launched
    launched.demo.close()


@pytest.fixture(scope="module")
def page(app):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.set_default_timeout(TIMEOUT)
        page.goto(app.url)
        page.wait_for_selector("#wb-banner")
        page.errors = errors
        yield page
        browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# What the app puts on the page when something failed: an error notice, an error toast, or the sentence
# `app.backend.message` and the tabs' status lines start with.
ERROR_SELECTORS = ".wb-notice.error, .toast-body.error"
ERROR_MARKS = ("⚠️", "❌", "Something went wrong", "Traceback")
MARKED = ".wb-mark.error"  # the CSS error mark (app.render.mark) before a status line: the line is an error


def errors_shown(page) -> list[str]:
    shown = [text for text in page.locator(ERROR_SELECTORS).all_inner_texts() if text.strip()]
    shown += page.locator(MARKED).evaluate_all("marks => marks.filter((m) => m.offsetParent !== null)"
                                               ".map((m) => (m.parentElement.innerText || 'error mark').trim())")
    body = page.locator("body").inner_text()
    return shown + [line for line in body.splitlines() if any(mark in line for mark in ERROR_MARKS)]


@pytest.fixture(autouse=True)
def no_error_on_the_page(request):
    """Every test fails when the page it leaves behind shows an error, even if what it waited for appeared."""
    yield
    if "page" in request.fixturenames:
        page = request.getfixturevalue("page")
        page.wait_for_timeout(300)  # an error toast or notice arriving with the last update
        shown = errors_shown(page)
        assert not shown, f"the page shows an error after {request.node.name}: {shown}"


def shot(page, name):
    page.wait_for_timeout(400)  # let plots finish their transitions
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def open_tab(page, label):
    page.get_by_role("tab", name=label).click()


def pick(page, elem_id, option):
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=re.compile(re.escape(option))).first.click()


def test_search_and_switch_variant(page, app):
    open_tab(page, "Search")
    page.wait_for_function("document.querySelector('#search-note input') && "
                           "document.querySelector('#search-note input').value.length > 0")
    page.wait_for_function("document.querySelector('#search-variant input').value.length > 0")
    page.locator("#search-btn").click()
    page.wait_for_selector("#search-results .wb-card")
    assert page.locator("#search-results .wb-card").count() == 12
    shot(page, "01-search")
    first = page.locator("#search-summary").inner_text()
    pick(page, "search-variant", "tiny-basic")
    page.wait_for_function("document.querySelector('#search-summary').innerText.includes('tiny-basic')")
    assert page.locator("#search-results .wb-card").count() == 12
    assert page.locator("#search-summary").inner_text() != first
    page.locator("#search-modality").get_by_text("text only", exact=True).click()
    page.wait_for_function("document.querySelector('#search-summary').innerText.includes('modality text only')")
    shot(page, "02-search-variant-switched")


def test_compare(page, app):
    open_tab(page, "Compare")
    page.wait_for_function("document.querySelectorAll('#compare-variants .token, #compare-variants [class*=token]')"
                           ".length >= 2")
    page.locator("#compare-btn").click()
    page.wait_for_selector("#compare-side .wb-col >> nth=1")
    assert page.locator("#compare-side .wb-col").count() == 2
    shot(page, "03-compare")


def test_explore_map(page, app):
    open_tab(page, "Explore")
    page.wait_for_function("document.querySelectorAll('#explore-variants .token, #explore-variants "
                           "[class*=token]').length >= 1")
    page.locator("#explore-btn").click()
    page.wait_for_selector("#explore-map .js-plotly-plot", timeout=120_000)
    # hover the first point of the map with the real mouse: its image floats beside the cursor
    page.wait_for_function("(() => { const gd = document.querySelector('#explore-map .js-plotly-plot');"
                           " return gd && gd._fullLayout && gd._fullData && gd._fullData.length > 0; })()")
    x, y = page.evaluate("""() => {
        const gd = document.querySelector('#explore-map .js-plotly-plot');
        // _fullData: plotly.py may ship coordinates as typed-array blobs that only the full data decodes
        const trace = gd._fullData.find((t) => Array.from(t.customdata || []).some((d) => d[1]));
        const i = Array.from(trace.customdata).findIndex((d) => d[1]);
        const axis = (name, letter) => gd._fullLayout[letter + 'axis' + (name.length > 1 ? name.slice(1) : '')];
        const xa = axis(trace.xaxis || 'x', 'x'), ya = axis(trace.yaxis || 'y', 'y');
        const box = gd.getBoundingClientRect();
        return [box.left + xa._offset + xa.l2p(trace.x[i]), box.top + ya._offset + ya.l2p(trace.y[i])];
    }""")
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=5)
    page.wait_for_function("(() => { const box = document.getElementById('explore-hover-thumb');"
                           " const img = box && box.querySelector('img');"
                           " return box && box.style.display === 'block' && img.complete && img.naturalWidth > 0; })()")
    shot(page, "04-explore-hover")
    page.mouse.move(5, 5)
    pick(page, "explore-note", "[")
    page.wait_for_selector("#explore-neighbours .wb-card")
    shot(page, "04-explore")


def test_attention(page, app):
    open_tab(page, "Attention")
    page.wait_for_function("document.querySelector('#attn-variant input').value.length > 0")
    page.locator("#saliency-btn").click()
    page.wait_for_selector("#attn-saliency .js-plotly-plot")
    page.locator("#heat-btn").click()
    # the overlay and its caption (an error would be a caption too: the autouse check fails the test then)
    page.wait_for_function("document.querySelector('#attn-heat-text').innerText.trim().length > 0")
    page.locator("#gate-btn").click()
    page.wait_for_selector("#attn-gates .js-plotly-plot")
    shot(page, "05-attention")


def test_start_and_stop_a_tiny_finetune(page, app):
    open_tab(page, "Fine-tune")
    page.locator("#ft-preset").get_by_text("tiny", exact=True).click()
    steps = page.locator("#ft-steps input")
    steps.fill("400")
    steps.press("Tab")
    page.locator("#ft-run textarea, #ft-run input").first.fill("browser-tiny")
    page.locator("#ft-start").click()
    page.wait_for_function("document.querySelector('#ft-progress').innerText.includes('running')")
    page.wait_for_function("/step [1-9]/.test(document.querySelector('#ft-progress').innerText)")
    shot(page, "06-finetune-running")
    page.locator("#ft-stop").click()
    page.wait_for_function("/cancel|stopp/i.test(document.querySelector('#ft-progress').innerText)")
    shot(page, "07-finetune-stopped")


def test_data_tab(page, app):
    open_tab(page, "Data")
    page.wait_for_selector("#data-gallery img")
    assert "600 notes" in page.locator("#data-summary").inner_text()
    shot(page, "08-data")
