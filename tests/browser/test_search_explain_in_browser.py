"""Search results that explain themselves, clickable cards, a newest-wins search, and the Compare cards, in
Debian's Chromium against the real app (the same server and page as test_workbench.py).

Screenshots land in artifacts/screenshots/ (git-ignored) for a person to look at."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api")

try:
    from test_workbench import app, no_error_on_the_page, open_tab, page, pick, shot  # noqa: F401 (fixtures)
except ImportError:
    from tests.browser.test_workbench import app, no_error_on_the_page, open_tab, page, pick, shot  # noqa: F401

pytestmark = pytest.mark.browser

# Emoji and pictographs a Chromium without an emoji font draws as empty boxes.
# A first search encodes the sample and loads an encoder: minutes on two busy cores.
SLOW = 300_000
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u23E9-\u23FF\uFE0F]")


def note_value(page) -> str:
    return page.locator("#search-note input").first.input_value()


def search_ready(page):
    open_tab(page, "Search")
    page.wait_for_function("document.querySelector('#search-note input') && "
                           "document.querySelector('#search-note input').value.length > 0")
    page.wait_for_function("document.querySelector('#search-variant input').value.length > 0")


def test_the_first_query_is_chosen_by_the_data(page, app):
    search_ready(page)
    chosen = app.backend.workbench.default_query("sample")
    note = app.backend.workbench.note("sample", chosen)
    assert note.title and note.image and len(app.backend.related("sample").get(chosen, ())) >= 1
    assert f"[{chosen}]" in note_value(page), note_value(page)


def test_a_card_says_why_it_is_a_neighbour(page, app):
    search_ready(page)
    page.locator("#search-btn").click()
    page.wait_for_selector("#search-results .wb-card .wb-why", timeout=SLOW)
    first = page.locator("#search-results .wb-card").first
    text_score = first.locator(".wb-sim.text .wb-sim-value").inner_text()
    image_score = first.locator(".wb-sim.image .wb-sim-value").inner_text()
    assert re.fullmatch(r"-?[01]\.\d{3}", text_score) and re.fullmatch(r"-?[01]\.\d{3}", image_score)
    assert "why this neighbour" in first.inner_text().lower()  # shown in capitals by the CSS
    # the scores are core's: the cosines of the variant's text-only and image-only vectors
    query_id = re.search(r"\[([^\]]+)\]$", note_value(page)).group(1)
    variant = page.locator("#search-variant input").first.input_value()
    name = variant.split(" · ")[0]  # the dropdown shows "<name> · <what it is>"
    hit_id = first.get_attribute("data-note-id")
    why = app.backend.workbench.explain(name, "sample", [hit_id], note_id=query_id)[0]
    assert text_score == f"{why.text_score:.3f}" and image_score == f"{why.image_score:.3f}"
    assert page.locator("#search-results .wb-card.wb-clickable").count() == 12
    shot(page, "search-explain-1-cards")


def test_clicking_a_card_searches_from_its_note(page, app):
    search_ready(page)
    if not page.locator("#search-results .wb-card").count():
        page.locator("#search-btn").click()
        page.wait_for_selector("#search-results .wb-card", timeout=SLOW)
    card = page.locator("#search-results .wb-card").nth(2)
    target = card.get_attribute("data-note-id")
    title = app.backend.workbench.note("sample", target).title
    card.click()
    page.wait_for_function("(id) => document.querySelector('#search-note input').value.endsWith('[' + id + ']')",
                           arg=target)
    page.wait_for_function("(title) => document.querySelector('#search-query').innerText.includes(title)",
                           arg=title, timeout=SLOW)
    page.wait_for_function("(id) => { const cards = document.querySelectorAll('#search-results .wb-card');"
                           " return cards.length === 12 && ![...cards].some((c) => c.dataset.noteId === id); }",
                           arg=target, timeout=SLOW)
    shot(page, "search-explain-2-from-a-card")


def test_quick_changes_end_on_the_last_query(page, app):
    """Modality clicked three times in a row, then another variant: the results shown are those of the last
    choice, and the query card is the note in the picker."""
    search_ready(page)
    modality = page.locator("#search-modality")
    for label in ("image only", "text only", "image + text", "image only"):
        modality.get_by_text(label, exact=True).click()
    pick(page, "search-variant", "tiny-basic")
    page.wait_for_function("(() => { const s = document.querySelector('#search-summary').innerText;"
                           " return s.includes('tiny-basic') && s.includes('modality image only'); })()",
                           timeout=SLOW)
    page.wait_for_timeout(2500)  # anything still queued would land now
    summary = page.locator("#search-summary").inner_text()
    assert "tiny-basic" in summary and "modality image only" in summary, summary
    query_id = re.search(r"\[([^\]]+)\]$", note_value(page)).group(1)
    assert app.backend.workbench.note("sample", query_id).title in page.locator("#search-query").inner_text()
    ids = page.locator("#search-results .wb-card").evaluate_all("cards => cards.map((c) => c.dataset.noteId)")
    expected = [hit.note_id for hit in app.backend.workbench.neighbours("tiny-basic", "sample", note_id=query_id,
                                                                        k=12, modality="image")]
    assert ids == expected
    modality.get_by_text("image + text", exact=True).click()
    page.wait_for_function("document.querySelector('#search-summary').innerText.includes('modality image + text')",
                           timeout=SLOW)


def test_compare_rank_and_score_are_apart_and_rows_line_up(page, app):
    open_tab(page, "Compare")
    page.wait_for_function("document.querySelectorAll('#compare-variants .token, #compare-variants [class*=token]')"
                           ".length >= 2")
    page.locator("#compare-btn").click()
    page.wait_for_selector("#compare-side .wb-col >> nth=1", timeout=SLOW)
    page.wait_for_selector("#compare-side .wb-card .wb-score")
    boxes = page.locator("#compare-side .wb-card").evaluate_all("""cards => cards.map((card) => {
        const rank = card.querySelector('.wb-rank').getBoundingClientRect();
        const score = card.querySelector('.wb-score').getBoundingClientRect();
        return {gap: score.left - rank.right, top: card.getBoundingClientRect().top,
                rank: card.querySelector('.wb-rank').innerText};
    })""")
    assert boxes and all(box["gap"] >= 4 for box in boxes), boxes
    by_rank = {}
    for box in boxes:
        by_rank.setdefault(box["rank"], set()).add(round(box["top"]))
    assert all(len(tops) == 1 for tops in by_rank.values()), by_rank  # the n-th cards share a row
    # badges inside their card, not cut at its edge
    clipped = page.locator("#compare-side .wb-card .wb-badge").evaluate_all("""badges => badges.filter((b) => {
        const card = b.closest('.wb-card').getBoundingClientRect(), r = b.getBoundingClientRect();
        return r.bottom > card.bottom + 0.5 || r.right > card.right + 0.5;
    }).length""")
    assert clipped == 0
    slider = page.locator("#compare-k").inner_text()
    assert "Neighbours per variant" in slider
    summary = page.locator("#tab-compare").inner_text()
    assert "modality image + text" in summary and "modality both" not in summary
    shot(page, "search-explain-3-compare")


def test_no_emoji_boxes_on_the_search_and_compare_pages(page, app):
    for tab in ("Search", "Compare"):
        open_tab(page, tab)
        page.wait_for_timeout(300)
        text = page.locator("body").inner_text()
        assert not EMOJI.findall(text), (tab, sorted(set(EMOJI.findall(text))))
    marks = page.locator(".wb-badge.related .wb-mark").evaluate_all(
        "marks => marks.filter((m) => m.offsetParent !== null).map((m) => m.getBoundingClientRect().width)")
    assert all(width > 5 for width in marks)
