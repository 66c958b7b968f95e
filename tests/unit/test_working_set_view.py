"""The working set's view without a server: what the page script sends is refused unless it is a small JSON
object, the marks on a search card escape their ids, the panel escapes titles, and a new version gets a free
name."""
import pytest

gr = pytest.importorskip("gradio")

from app.backend import Backend  # noqa: E402
from app.tabs import working_set as panel  # noqa: E402
from app.tabs.search import pair_marks  # noqa: E402
from core.errors import WorkbenchError  # noqa: E402
from tests.unit.data_fixtures import write_csv  # noqa: E402


def test_only_a_small_json_object_is_read_from_the_page():
    assert panel.read_payload("") is None and panel.read_payload(None) is None
    assert panel.read_payload('{"ids": ["a"], "n": 3}') == {"ids": ["a"], "n": 3}
    for junk in ("not json", '["a", "b"]', '"a"', "7"):
        with pytest.raises(WorkbenchError):
            panel.read_payload(junk)
    with pytest.raises(WorkbenchError, match="too large"):
        panel.read_payload('{"ids": ["' + "x" * panel.MAX_PAYLOAD_CHARS + '"]}')


def test_a_new_version_gets_the_next_free_name():
    assert panel.suggest_name("sample", ["sample"]) == "sample-v2"
    assert panel.suggest_name("sample", ["sample", "sample-v2", "sample-v3"]) == "sample-v4"
    assert panel.suggest_name("sample-v2", ["sample", "sample-v2"]) == "sample-v3"  # not sample-v2-v2


def test_card_marks_escape_the_ids_and_show_the_current_mark():
    html = pair_marks('q"><script>', "n<1>", "related")
    assert "<script>" not in html and 'data-query-id="q&quot;&gt;&lt;script&gt;"' in html
    assert 'data-note-id="n&lt;1&gt;"' in html and 'data-mark="related"' in html
    assert html.count("<button") == 2 and 'data-mark="not related"' in html
    assert 'data-mark=""' in pair_marks("q", "n", None)


def test_the_panel_counts_and_escapes_titles(tmp_path):
    notes = write_csv(tmp_path / "notes.csv", ["note_id", "title", "content", "image"],
                      [["a", "<img src=x onerror=alert(1)>", "x", ""], ["b", "plain", "y", ""]])
    backend = Backend(tmp_path / "ws")
    backend.store.import_dataset("d", notes)
    assert "Empty" in panel.summary_html(backend, "d")
    backend.workbench.working_set_mark("d", "a", "b", "related")
    html = panel.summary_html(backend, "d")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'data-notes="0" data-related="1" data-negatives="0"' in html
    assert "unknown dataset" in panel.summary_html(backend, "nope")
