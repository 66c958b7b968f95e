"""The app's note dropdowns ask the store for a page of notes, keep the current note listed, and search as the
user types."""
from types import SimpleNamespace

from app.tabs.common import note_choices, refresh_notes
from core.data.store import Store

try:
    from data_fixtures import write_csv
except ImportError:  # tests/ imported as a package
    from tests.unit.data_fixtures import write_csv


def test_dropdown_pages_through_the_store(tmp_path):
    rows = [[f"n{i}", f"note number {i}" if i != 77 else "Heron at dusk", "c"] for i in range(120)]
    store = Store(tmp_path / "ws")
    store.import_dataset("d", write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], rows))
    backend = SimpleNamespace(store=store)
    first = note_choices(backend, "d")
    assert len(first) == 50 and first[0][1] == "n0"
    assert [value for _, value in note_choices(backend, "d", "heron")] == ["n77"]
    assert note_choices(backend, "d", "n11")[0][1] == "n11"
    # The current note keeps its label even when it is not on the first page.
    update = refresh_notes(backend, "d", "n100")
    assert update["value"] == "n100" and update["choices"][0] == ("note number 100 [n100]", "n100")
    assert refresh_notes(backend, "d", "gone")["value"] == "n0"
    assert note_choices(backend, None) == []
