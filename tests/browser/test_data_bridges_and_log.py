"""Debian's Chromium on the Data tab's bridges and the Fine-tune log: a Parquet table imports as notes, Export
offers one .zip holding the dataset as Parquet and CSV, and the training log is a box of one height that
follows the newest line as a job writes.

Same server and page fixtures as test_workbench.py (sample dataset, two tiny runs); screenshots in
artifacts/screenshots/."""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workbench import app, no_error_on_the_page, open_tab, page, shot  # noqa: E402,F401,F811

SLOW = 240_000
# The element of the log box that scrolls: the first one at or around #ft-log whose overflow is auto or scroll.
SCROLLER = """() => {
    const root = document.querySelector('#ft-log');
    const box = [...root.querySelectorAll('*'), root].find(
        (e) => ['auto', 'scroll'].includes(getComputedStyle(e).overflowY));
    return box ? [box.clientHeight, box.scrollTop, box.scrollHeight] : null;
}"""
# The box's outer height, sampled often while lines arrive: an update that lets it shrink for a moment shakes
# the page below it, so every sample must be the same.
WATCH_HEIGHT = """() => {
    window.ftLogHeights = [];
    window.ftLogWatch = setInterval(() => window.ftLogHeights.push(
        Math.round(document.querySelector('#ft-log').getBoundingClientRect().height)), 50);
}"""


def test_the_training_log_keeps_its_height_and_follows_new_lines(page, app):
    # Runs before the import below, which makes a two-note dataset without pairs the one in use.
    open_tab(page, "Fine-tune")
    page.wait_for_function("document.querySelector('#ft-dataset').innerText.includes('sample')")
    page.locator("#ft-preset").get_by_text("tiny", exact=True).click()
    steps = page.locator("#ft-steps input")
    steps.fill("5000")
    steps.press("Tab")
    page.locator("#ft-run textarea, #ft-run input").first.fill("browser-log")
    page.locator("#ft-start").click()
    page.wait_for_function("document.querySelector('#ft-progress').innerText.includes('running')")
    assert page.evaluate(SCROLLER) is not None, "the log box does not scroll"
    page.evaluate(WATCH_HEIGHT)
    # Enough lines arrive to overflow the box (a plain progress line every few seconds, wrapped).
    page.wait_for_function(f"(() => {{ const s = ({SCROLLER})(); return s && s[2] > s[0] + 40; }})()",
                           timeout=SLOW)
    page.wait_for_timeout(2_500)  # a poll or two more, and Gradio's scroll after the update
    heights = page.evaluate("() => { clearInterval(window.ftLogWatch); return window.ftLogHeights; }")
    assert len(heights) > 20 and max(heights) - min(heights) <= 2, f"the log box changed height: {sorted(set(heights))}"
    height, top, full = page.evaluate(SCROLLER)
    assert top + height >= full - 4, f"the log box is not at its newest line: {top} + {height} of {full}"
    shot(page, "13-finetune-log")
    page.locator("#ft-stop").click()
    page.wait_for_function("/cancel|stopp/i.test(document.querySelector('#ft-progress').innerText)",
                           timeout=SLOW)


def test_a_parquet_upload_imports_and_export_offers_a_zip(page, app, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    images = []
    for colour in ((200, 30, 30), (30, 30, 200)):
        out = io.BytesIO()
        Image.new("RGB", (24, 24), colour).save(out, format="PNG")
        images.append(out.getvalue())
    notes = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"note_id": ["r", "b"], "title": ["Red square", "Blue square"],
                             "content": ["red", "blue"], "image": images}), notes)
    open_tab(page, "Data")
    page.get_by_text("Import a dataset").click()
    page.locator("#import-notes input[type=file]").set_input_files(str(notes))
    page.get_by_placeholder("my-notes").fill("from-parquet")
    page.wait_for_timeout(500)  # the upload reaches the server
    page.locator("#import-btn").click()
    page.wait_for_function("document.querySelector('#import-report').innerText.includes('2 of 2 notes')",
                           timeout=SLOW)
    assert "from-parquet" in app.backend.dataset_names()
    assert all(note.image for note in app.backend.store.notes("from-parquet"))

    # Export the dataset in use (the import chose the new one): notes, pairs, images, Parquet and CSV.
    page.get_by_text("Export this dataset").click()
    page.locator("#export-btn").click()
    # The report box shows "processing" while the export runs; then what was written, or why nothing was.
    page.wait_for_function("/notes,|Nothing exported/.test(document.querySelector('#export-report').innerText)",
                           timeout=SLOW)
    report = page.locator("#export-report").inner_text()
    assert "from-parquet" in report and "2 notes" in report, report
    link = page.locator("#export-file a").first
    link.wait_for()
    href = link.get_attribute("href")
    assert href and ".zip" in href
    body = page.request.get(href if href.startswith("http") else app.url.rstrip("/") + "/" + href.lstrip("/")).body()
    with zipfile.ZipFile(io.BytesIO(body)) as packed:
        names = set(packed.namelist())
    assert {"from-parquet/notes.parquet", "from-parquet/notes.csv", "from-parquet/manifest.json"} <= names
    assert sum(name.startswith("from-parquet/images/") for name in names) == 2
    shot(page, "12-data-parquet-import-and-export")
