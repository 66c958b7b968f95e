"""The Runs tab in Debian's Chromium, and the state that follows the jobs: a run trained from the page shows in
the banner and in Runs without a reload, two runs overlaid and diffed, one deleted; a reloaded page puts the
running job's settings back in the Fine-tune form.

Same server and page fixtures as test_workbench.py (sample dataset, two tiny runs); screenshots in
artifacts/screenshots/."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_workbench import app, errors_shown, no_error_on_the_page, open_tab, page, pick, shot  # noqa: E402,F401,F811

TRAINED = "browser-runs-tiny"
REATTACHED = "browser-reattach"
JOB_TIMEOUT = 300_000


def table_text(page) -> str:
    return page.locator("#runs-table").inner_text()


def start_tiny(page, run, steps, image_mode, late):
    open_tab(page, "Fine-tune")
    page.locator("#ft-preset").get_by_text("tiny", exact=True).click()
    page.locator("#ft-image-mode").get_by_text(image_mode, exact=True).click()
    box = page.locator("#ft-late input")
    box.check() if late else box.uncheck()
    field = page.locator("#ft-steps input")
    field.fill(str(steps))
    field.press("Tab")
    page.locator("#ft-run textarea, #ft-run input").first.fill(run)
    page.locator("#ft-start").click()
    page.wait_for_function(f"{text_of('#ft-progress')}.includes({json.dumps(run)})")


def text_of(selector: str) -> str:
    """A JavaScript expression: the element's text, or '' while it is not on the page."""
    return f"((document.querySelector({json.dumps(selector)}) || {{}}).innerText || '')"


def test_the_runs_tab_lists_every_run(page, app):
    open_tab(page, "Runs")
    page.wait_for_selector("#runs-table")
    page.wait_for_function(f"['tiny-micl-late', 'tiny-basic'].every((r) => {text_of('#runs-table')}.includes(r))")
    text = table_text(page)
    assert "finished" in text and "sample" in text and "micl+late" in text
    assert "2 run(s)" in page.locator("#runs-summary").inner_text()
    shot(page, "20-runs")


def test_a_run_trained_in_the_page_shows_up_without_a_reload(page, app):
    page.wait_for_function(f"{text_of('#wb-banner')}.includes('2 trained variant(s)')")
    start_tiny(page, TRAINED, 4, "basic", late=False)
    assert "sample" in page.locator("#ft-dataset").inner_text()  # which dataset the form trains on
    page.wait_for_function(f"{text_of('#ft-progress')}.includes('dataset sample')")
    page.wait_for_function(f"{text_of('#ft-progress')}.includes('finished')",
                           timeout=JOB_TIMEOUT)
    # the banner follows the job: no reload, no tab switch
    page.wait_for_function(f"{text_of('#wb-banner')}.includes('3 trained variant(s)')")
    assert json.loads((app.backend.workspace.run_dir(TRAINED) / "run.json").read_text())["dataset"] == "sample"
    shot(page, "21-runs-finetune-finished")


def legend(page) -> list[str]:
    return page.locator("#runs-curves .legendtext").all_inner_texts()


def keep_only(page, elem_id: str, keep: str) -> None:
    """Remove every chosen token of a multiselect but `keep`'s, one at a time, looking the tokens up afresh
    each time: a refresh that lands in between re-renders them, and a list taken once goes stale."""
    for _ in range(20):
        removed = page.evaluate(
            "([id, keep]) => { for (const token of document.querySelectorAll(`#${id} .token`)) {"
            " if (!token.textContent.includes(keep)) { const x = token.querySelector('.token-remove');"
            " if (x) { x.click(); return true; } } } return false; }", [elem_id, keep])
        if not removed:
            return
        page.wait_for_timeout(300)
    raise AssertionError(f"#{elem_id} kept other choices than {keep!r}")


def test_overlay_diff_and_delete_a_run(page, app):
    open_tab(page, "Runs")
    page.wait_for_function(f"{text_of('#runs-table')}.includes({json.dumps(TRAINED)})")
    page.wait_for_function("document.querySelectorAll('#runs-curves .legendtext').length >= 2")
    wanted = {TRAINED, "tiny-micl-late"}
    for attempt in range(3):  # a refresh queued before the change may still land: then choose again
        keep_only(page, "runs-select", "tiny-micl-late")
        pick(page, "runs-select", TRAINED)
        page.mouse.click(5, 5)  # close the menu
        try:
            page.wait_for_function("(() => { const names = Array.from(document.querySelectorAll("
                                   "'#runs-curves .legendtext')).map((e) => e.textContent);"
                                   f" return {json.dumps(sorted(wanted))}.every((n) => names.includes(n))"
                                   " && names.length === 2; })()", timeout=30_000)
            break
        except playwright.TimeoutError:
            if attempt == 2:
                raise AssertionError(f"the overlay shows {legend(page)}, not {sorted(wanted)}") from None
    page.wait_for_function(f"{text_of('#runs-diff-table')}.includes({json.dumps(TRAINED)})")
    diff = page.locator("#runs-diff-table").inner_text()
    assert "variant" in diff and "basic" in diff and "micl+late" in diff
    assert "created_at" not in diff  # only settings, and only those that differ
    assert not errors_shown(page)
    shot(page, "22-runs-overlay-diff")

    pick(page, "runs-manage", TRAINED)
    page.locator("#runs-confirm textarea, #runs-confirm input").first.fill(TRAINED)
    page.locator("#runs-delete-btn").click()
    page.wait_for_function(f"{text_of('#runs-report')}.includes('Deleted run')")
    page.wait_for_function(f"!{text_of('#runs-table')}.includes({json.dumps(TRAINED)})")
    page.wait_for_function(f"{text_of('#wb-banner')}.includes('2 trained variant(s)')")
    assert not app.backend.workspace.run_dir(TRAINED).exists()
    assert "tiny-micl-late" in table_text(page)
    assert not errors_shown(page)
    shot(page, "23-runs-deleted")


def test_a_reload_restores_the_running_jobs_settings(page, app):
    try:
        start_tiny(page, REATTACHED, 5000, "none", late=True)
        # past step 0 the worker has written run.json, which the form's settings are read back from
        page.wait_for_function(f"/step [1-9]/.test({text_of('#ft-progress')})", timeout=JOB_TIMEOUT)
        page.reload()
        page.wait_for_selector("#wb-banner")
        open_tab(page, "Fine-tune")
        page.wait_for_function("(() => { const box = document.querySelector('#ft-run textarea, #ft-run input');"
                               f" return box && box.value === {json.dumps(REATTACHED)}; }})()")
        assert page.locator("#ft-steps input").input_value() == "5000"
        checked = page.evaluate("Array.from(document.querySelectorAll('#ft-image-mode input:checked, #ft-preset "
                                "input:checked')).map((e) => e.closest('label').innerText.trim())")
        assert checked == ["none", "tiny"], checked
        assert page.locator("#ft-late input").is_checked()
        # the job panel re-attaches on its next poll after the form is back
        page.wait_for_function(f"/running|queued/.test({text_of('#ft-progress')})", timeout=60_000)
        shot(page, "24-runs-finetune-reattached")
        page.locator("#ft-stop").click()
        page.wait_for_function(f"/cancel|stopp/i.test({text_of('#ft-progress')})")
    finally:  # a job left running would train on after the test
        for job in app.backend.workbench.jobs():
            if job.run == REATTACHED and job.active:
                app.backend.workbench.cancel_job(job.job_id)
