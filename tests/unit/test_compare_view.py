"""The Compare tab without a server: a comparison that finishes after a newer one of the same session was
asked for never reaches the page (the first comparison of unencoded variants takes minutes, so the older
answer arriving last is the usual race), and one already superseded when its turn comes does no work."""
import threading

import pytest

gr = pytest.importorskip("gradio")

from app.tabs import compare as compare_tab  # noqa: E402
from app.tabs.common import Generations  # noqa: E402


def _shown(note):
    return (f"query {note}", f"side {note}", None, f"summary {note}")


def test_an_older_comparison_never_overwrites_a_newer_one(monkeypatch):
    generations = Generations()
    started, release = threading.Event(), threading.Event()

    def slow_compare(backend, dataset, note_id, names, modality, k):
        if note_id == "old-note":
            started.set()
            release.wait(5)
        return _shown(note_id)

    monkeypatch.setattr(compare_tab, "compare", slow_compare)
    args = lambda note: ("sample", note, ["a", "b"], "both", 10)  # noqa: E731
    out = {}
    old = generations.begin("s")
    worker = threading.Thread(target=lambda: out.setdefault(
        "old", compare_tab.guarded_compare(None, generations, "s", old, *args("old-note"))))
    worker.start()
    assert started.wait(5)
    new = generations.begin("s")  # another note picked while the first comparison ran
    release.set()
    worker.join(5)
    newer = compare_tab.guarded_compare(None, generations, "s", new, *args("new-note"))
    assert len(out["old"]) == 4 and all(isinstance(part, type(gr.skip())) for part in out["old"]), out["old"]
    assert newer == _shown("new-note")
    # Another session's comparison is its own: it is not dropped by this one's numbers.
    assert compare_tab.guarded_compare(None, generations, "other", 1, *args("x")) == _shown("x")
    # Superseded before its turn: no work at all.
    monkeypatch.setattr(compare_tab, "compare", lambda *a: pytest.fail("a stale comparison ran"))
    generations.begin("s")
    assert all(isinstance(part, type(gr.skip())) for part in
               compare_tab.guarded_compare(None, generations, "s", new, *args("new-note")))


def test_a_failing_comparison_says_so_in_its_four_outputs(monkeypatch):
    def broken(*args):
        raise ValueError("boom")

    monkeypatch.setattr(compare_tab, "compare", broken)
    generations = Generations()
    number = generations.begin("s")
    query, side, table, summary = compare_tab.guarded_compare(None, generations, "s", number, "sample", "n",
                                                              ["a", "b"], "both", 10)
    assert query == "" and summary == "" and len(table) == 0
    assert 'class="wb-notice error"' in side and "ValueError: boom" in side
