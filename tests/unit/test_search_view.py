"""The Search tab without a server: a stale search is dropped, explanations are escaped, missing modalities
are said, and no emoji reaches a page."""
import re
import threading
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from app import render  # noqa: E402
from app.tabs import search as search_tab  # noqa: E402
from app.tabs.common import Generations, modality_label  # noqa: E402
from core.data.schema import Note  # noqa: E402
from core.explain import Explanation  # noqa: E402
from core.workbench import Variant  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "app"


def test_a_newer_search_supersedes_an_older_one_per_session():
    generations = Generations()
    first = generations.begin("a")
    assert not generations.superseded("a", first)
    second = generations.begin("a")
    assert generations.superseded("a", first) and not generations.superseded("a", second)
    assert not generations.superseded("b", 1)  # another session (or an API client without a number)
    assert not generations.superseded("b", None)
    small = Generations(sessions=2)
    small.begin("x"), small.begin("y"), small.begin("z")
    assert not small.superseded("x", 0)  # the oldest session is forgotten, not held forever


def test_an_older_search_result_is_dropped(monkeypatch):
    """Two searches of one session: the first is still running when the second is asked for; the first's
    result never reaches the page, the second's does."""
    generations = Generations()
    started, release = threading.Event(), threading.Event()

    def slow_search(backend, *args):
        if args[2] == "old-note":
            started.set()
            release.wait(5)
        return (f"query {args[2]}", f"results {args[2]}", "")

    monkeypatch.setattr(search_tab, "search", slow_search)
    args = lambda note: ("sample", search_tab.FROM_DATASET, note, "", "", "", None, "run", "both", 5)  # noqa: E731
    out = {}
    old = generations.begin("s")
    worker = threading.Thread(target=lambda: out.setdefault(
        "old", search_tab.guarded_search(None, generations, "s", old, *args("old-note"))))
    worker.start()
    assert started.wait(5)
    new = generations.begin("s")  # the user picked another note while the first search ran
    release.set()
    worker.join(5)
    newer = search_tab.guarded_search(None, generations, "s", new, *args("new-note"))
    assert all(isinstance(part, type(gr.skip())) for part in out["old"]), out["old"]
    assert newer == ("query new-note", "results new-note", "")
    # a search already superseded when its turn comes does no work at all
    monkeypatch.setattr(search_tab, "search", lambda *a: pytest.fail("a stale search ran"))
    generations.begin("s")
    search_tab.guarded_search(None, generations, "s", new, *args("new-note"))


def test_card_explanations_escape_user_text():
    note = Note("n<1>", title="<script>alert(1)</script> bird", content="", topics=["<b>bold</b>"],
                image=None)
    why = Explanation("n<1>", 0.5, None, ("<b>bold</b>",), ("script", "bird", "<i>"), True, 0.25)
    block = render.explanation(why, query_has_image=False)
    card = render.note_card(note, rank=1, score=0.9, why=block, title_words=why.shared_words, clickable=True)
    assert "<script>" not in card and "<b>bold" not in card and "<i>" not in card
    assert "&lt;<mark>script</mark>&gt;" in card and "<mark>bird</mark>" in card
    assert 'data-note-id="n&lt;1&gt;"' in card and 'role="button"' in card
    assert "query has no image" in block and "0.500" in block and "25% image" in block
    assert render.highlight("Birds and a bird", ["bird"]) == "Birds and a <mark>bird</mark>"  # whole words only


def test_rank_and_score_are_separate_elements():
    card = render.note_card(Note("n", title="t"), rank=5, score=0.924)
    assert '<span class="wb-rank">#5</span>' in card and ">0.924</span>" in card
    assert "#5 0.924" in re.sub(r"<[^>]+>", "", card)  # apart in the text too, not only on screen


def _variant(name, variant):
    return Variant(name=name, kind="run", variant=variant, dataset="d")


def test_the_page_says_what_the_query_lacks():
    run, text_run = _variant("r", "micl+late"), _variant("t", "text")
    no_image = Note("q", title="a bird")
    no_text = Note("q", title="", image="x.png")
    assert any("has no image" in gap for gap in search_tab.query_gaps(run, no_image, "both", composed=True))
    assert "composed query" in search_tab.query_gaps(run, no_image, "both", composed=True)[0]
    assert not search_tab.query_gaps(text_run, no_image, "both")  # the text variant never needed one
    assert any("Image-only search" in gap for gap in search_tab.query_gaps(run, no_image, "image"))
    assert any("Text-only search" in gap for gap in search_tab.query_gaps(run, no_text, "text"))
    assert any("never looks at pictures" in gap for gap in search_tab.query_gaps(text_run, no_text, "image"))
    assert not search_tab.query_gaps(run, Note("q", title="t", image="x.png"), "both")


def test_modalities_are_named_for_people_and_clicks_carry_a_note_id():
    assert [modality_label(m) for m in ("both", "image", "text")] == ["image + text", "image only", "text only"]
    assert search_tab.clicked_note("cars/red car\n3") == "cars/red car"
    assert search_tab.clicked_note("") is None


EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u23E9-\u23FF\uFE0F]")


@pytest.mark.parametrize("name", ["search.py", "compare.py", "common.py", "explore.py", "data.py", "attention.py"])
def test_no_emoji_in_the_tabs(name):
    """Chromium without an emoji font draws these as boxes: marks are CSS (render.mark) instead."""
    text = (APP / "tabs" / name).read_text()
    assert not EMOJI.findall(text), EMOJI.findall(text)
    assert not EMOJI.findall((APP / "render.py").read_text())
