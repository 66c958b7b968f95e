"""The Paper tab in Debian's Chromium: the paired comparison of basic and micl+late on the sample, its
per-query table, and a row that opens its query in Compare with both variants side by side.

Uses the server and page of test_workbench.py (a temp workspace, the sample, two tiny runs); screenshots land
in artifacts/screenshots/ (git-ignored)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api")

try:
    from test_workbench import TIMEOUT, app, no_error_on_the_page, open_tab, page, shot  # noqa: F401 (fixtures)
except ImportError:
    from tests.browser.test_workbench import TIMEOUT, app, no_error_on_the_page, open_tab, page, shot  # noqa: F401

SLOW = 240_000  # the first evaluation encodes the test notes under both tiny runs


def test_paper_compares_basic_with_notellm2_and_opens_a_query_in_compare(page, app):
    # the page has loaded its dataset (the Paper tab computes when shown, and again when the dataset arrives)
    page.wait_for_function("document.querySelector('#search-note input') && "
                           "document.querySelector('#search-note input').value.length > 0", timeout=SLOW)
    open_tab(page, "Paper")
    page.wait_for_function("document.querySelector('#paper-head').innerText.includes('sample')")
    page.wait_for_function("document.querySelector('#paper-summary').innerText.includes('test queries')",
                           timeout=SLOW)
    summary = page.locator("#paper-summary").inner_text()
    assert "tiny-basic" in summary and "tiny-micl-late" in summary and "sample" in summary
    # either the paired result or the sentence saying why Recall@10 is no result here
    assert "B − A" in summary or "not shown as a result" in summary
    assert page.locator("#paper-claims").inner_text().strip()  # the claims, or why none are judged
    rows = page.locator("#paper-ranks tr[data-note-id]")
    rows.first.wait_for()
    assert "Where B (tiny-micl-late) ranks the target higher" in page.locator("#paper-ranks").inner_text()
    shot(page, "09-paper")

    row = rows.first
    note_id = row.get_attribute("data-note-id")
    query_title = row.locator("td").first.inner_text()
    row.click()
    page.wait_for_selector("#tab-compare", state="visible")
    page.wait_for_function("(id) => { const box = document.querySelector('#compare-note input');"
                           " return box && box.value.includes('[' + id + ']'); }", arg=note_id, timeout=SLOW)
    # the first query under each run encodes the whole dataset
    page.wait_for_selector("#compare-side .wb-col >> nth=1", timeout=SLOW)
    page.wait_for_function("(id) => document.querySelector('#compare-note input').value.includes('[' + id + ']')",
                           arg=note_id)
    assert page.locator("#compare-side .wb-col").count() == 2
    side = page.locator("#compare-side").inner_text()
    assert "tiny-basic" in side and "tiny-micl-late" in side
    assert query_title.strip()[:20] in page.locator("#compare-query").inner_text()
    shot(page, "10-paper-to-compare")



def test_the_maps_button_opens_explore_on_the_aligned_image_only_maps(page, app):
    open_tab(page, "Paper")
    page.wait_for_selector("#paper-explore-btn", state="visible")
    page.locator("#paper-explore-btn").click()
    page.wait_for_selector("#tab-explore", state="visible")
    # The first map encodes the dataset under both runs (image only) and compiles UMAP's numba code.
    page.wait_for_function("""() => {
        const gd = document.querySelector('#explore-map .js-plotly-plot');
        return gd && gd._fullLayout && gd._fullLayout.xaxis2 !== undefined && gd._fullData.length > 0;
    }""", timeout=SLOW)
    titles = page.evaluate("""() => (document.querySelector('#explore-map .js-plotly-plot')._fullLayout
                              .annotations || []).map((a) => a.text)""")
    # Two subplots, basic first and NoteLLM-2 second, each titled with its run.
    assert len(titles) == 2 and titles[0].startswith("tiny-basic") and titles[1].startswith("tiny-micl-late"), titles
    points = page.evaluate("""() => document.querySelector('#explore-map .js-plotly-plot')._fullData
                              .filter((t) => t.type === 'scattergl')
                              .reduce((n, t) => n + Array.from(t.x || []).length, 0)""")
    assert points == 2 * 600  # every note of the sample on each map
    # The Explore controls say what is shown: both runs, image only.
    page.wait_for_function("(() => { const text = document.querySelector('#explore-variants').innerText;"
                           " return text.includes('tiny-basic') && text.includes('tiny-micl-late'); })()")
    assert "modality image" in page.locator("#tab-explore").inner_text()
    checked = page.evaluate("""() => [...document.querySelectorAll('#tab-explore input[type=radio]:checked')]
                               .map((input) => input.closest('label').innerText.trim())""")
    assert "image only" in checked, checked
    assert page.locator("#paper-maps-note").inner_text().strip() == ""  # no "train them first" sentence
    shot(page, "11-paper-to-explore-maps")
