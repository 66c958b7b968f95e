"""Imports stream: rows reach a scratch database in chunks, bad bytes deep in a file still refuse it whole,
and nothing of the scratch file outlives the import."""
from __future__ import annotations

import pytest

from core.data import store as store_module
from core.data.problems import UploadError
from core.data.readers import NotesRead, iter_notes
from core.data.store import Store

try:
    from data_fixtures import png_bytes, write_csv
except ImportError:  # tests/ imported as a package
    from tests.unit.data_fixtures import png_bytes, write_csv


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(store_module._Staging, "CHUNK", 3)


def scratch_files(store) -> list:
    return sorted(p.name for p in store.workspace.root.glob(".import-*"))


def test_reader_yields_rows_one_at_a_time(tmp_path):
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], [[f"n{i}", "t", "c"] for i in range(5)])
    result = NotesRead(file="n.csv")
    rows = iter_notes(notes, result)
    first = next(rows)
    assert first.note.note_id == "n0" and result.read == 1 and result.records == []
    assert [r.line for r in rows] == [3, 4, 5, 6] and result.read == 5 and len(result.ids) == 5


def test_chunked_import_keeps_order_images_and_skips(tmp_path, small_chunks):
    folder = tmp_path / "up"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    (folder / "bad.png").write_bytes(b"nope")
    rows = [[f"n{i}", f"title {i}", "c", "a.png" if i % 4 == 0 else "", f"cat{i % 3}"] for i in range(20)]
    rows[7][3] = "bad.png"
    rows[11] = ["n3", "dup", "c", "", ""]
    notes = write_csv(folder / "notes.csv", ["note_id", "title", "content", "image", "category"], rows)
    pairs = write_csv(folder / "pairs.csv", ["note_id_1", "note_id_2"], [["n0", "n1"], ["n7", "n2"], ["n3", "n19"]])
    store = Store(tmp_path / "ws")
    with pytest.raises(UploadError, match="notes.csv line 9: image 'bad.png'"):
        store.import_dataset("d", notes, pairs, folder)
    assert not store.has_dataset("d") and scratch_files(store) == []
    report = store.import_dataset("d", notes, pairs, folder, skip_bad=True)
    assert report.imported == 18 and [row for _, row, _ in report.skipped] == [9, 13]
    assert report.pairs_imported == 2 and "problem on notes.csv line 9" in report.pairs_skipped[0][2]
    kept = store.notes("d")
    assert [n.note_id for n in kept] == [f"n{i}" for i in range(20) if i not in (7, 11)]
    assert sum(1 for n in kept if n.image) == report.images == 5
    info = store.dataset("d")
    assert (info.notes, info.images, info.categories, info.pairs) == (18, 1, 3, 2)
    assert scratch_files(store) == []


def test_a_bad_byte_past_the_first_block_refuses_the_file(tmp_path):
    rows = [[f"n{i}", "title", "x" * 200] for i in range(2000)]
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], rows)
    data = notes.read_bytes()
    notes.write_bytes(data[:-20] + b"\xe9" + data[-19:])
    store = Store(tmp_path / "ws")
    with pytest.raises(UploadError, match="n.csv line 2001: not UTF-8 text: byte 0xe9") as caught:
        store.import_dataset("d", notes, skip_bad=True)
    assert len(caught.value.problems) == 1
    assert not store.has_dataset("d") and scratch_files(store) == []


def test_a_file_of_only_a_byte_order_mark_is_empty(tmp_path):
    notes = tmp_path / "n.csv"
    notes.write_bytes(b"\xef\xbb\xbf \n")
    with pytest.raises(UploadError, match="empty"):
        Store(tmp_path / "ws").import_dataset("d", notes)


def test_note_search_pages_by_id_and_title_words(tmp_path):
    rows = [[f"n{i}", title, "c"] for i, title in enumerate(
        ["Red Bird", "blue bird on a branch", "Crème brûlée", "n1 lookalike", "Birdhouse plan"])]
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], rows)
    store = Store(tmp_path / "ws")
    store.import_dataset("d", notes)
    store.import_dataset("other", notes)
    ids = lambda query, limit=50: [n.note_id for n in store.search_notes("d", query, limit)]  # noqa: E731
    assert ids("") == ["n0", "n1", "n2", "n3", "n4"] and ids("", 2) == ["n0", "n1"]
    assert ids("n1") == ["n1", "n3"]  # the id, then titles with a word starting "n1"
    assert ids("bird") == ["n0", "n1", "n4"]  # word prefixes, any case
    assert ids("creme") == ["n2"]  # accents folded
    assert ids("blue bird") == ["n1"] and ids("zebra") == [] and ids('"bird*') == ["n0", "n1", "n4"]
    store.delete_dataset("other")
    assert ids("bird") == ["n0", "n1", "n4"]
    store.delete_dataset("d")
    with store._db() as db:  # the full-text index forgets deleted notes
        assert db.conn.execute("select count(*) from notes_fts where notes_fts match 'bird'").fetchone()[0] == 0
