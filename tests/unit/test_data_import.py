"""Imports: round trips in every accepted layout, and every kind of bad input refused with file, row and reason."""
from __future__ import annotations

import threading

import pytest
from PIL import Image

from core.data.images import ImageLimits, load_image
from core.data.problems import UploadError
from core.data.store import Store
from core.errors import WorkbenchError

try:
    from data_fixtures import (NOTE_HEADER, bomb_png, good_upload, jpeg_bytes, png_bytes, store_state, truncated_jpeg,
                               write_csv, write_jsonl, write_zip)
except ImportError:  # tests/ imported as a package
    from tests.unit.data_fixtures import (NOTE_HEADER, bomb_png, good_upload, jpeg_bytes, png_bytes, store_state,
                                          truncated_jpeg, write_csv, write_jsonl, write_zip)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "ws")
    # A dataset already there: a failed import must leave it exactly as it was.
    notes, pairs, images = good_upload(tmp_path / "existing", n=4)
    store.import_dataset("existing", notes, pairs, images)
    return store


def refused(store, tmp_path, *fragments, **kwargs) -> UploadError:
    """Import must fail with every fragment in the message and change nothing in the store."""
    before = store_state(store)
    with pytest.raises(UploadError) as caught:
        store.import_dataset("new", **kwargs)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message
    assert store_state(store) == before
    assert not store.has_dataset("new")
    return caught.value


# ------------------------------------------------------------------------------------------ round trips

def test_round_trip_csv_folder(tmp_path, store):
    notes, pairs, images = good_upload(tmp_path / "up", n=6)
    big = Image.new("RGBA", (1200, 800), (0, 0, 0, 0))  # fully transparent: must come out white
    big.save(images / "img0.png")
    report = store.import_dataset("ds", notes, pairs, images)
    assert (report.read, report.imported, report.skipped) == (6, 6, [])
    assert (report.pairs_read, report.pairs_imported) == (4, 4)
    got = store.notes("ds")
    assert [n.note_id for n in got] == [f"n{i}" for i in range(6)]
    first = got[0]
    assert first.title == "Title 0" and first.content == "content of note 0" and first.topics == ["tag0"]
    assert first.category == "animals/birds"
    image = load_image(first.image)
    assert image.mode == "RGB" and max(image.size) == 512 and image.getpixel((10, 10)) == (255, 255, 255)
    assert store.pairs("ds") == [("n0", "n2"), ("n1", "n3"), ("n2", "n4"), ("n3", "n5")]
    assert store.categories("ds") == {"animals/birds": 3, "animals/cats": 3}
    assert store.note("ds", "n3").title == "Title 3"
    assert [n.note_id for n in store.notes("ds", ["n4", "n1"])] == ["n1", "n4"]
    info = {d.name: d for d in store.list_datasets()}["ds"]
    assert (info.notes, info.pairs, info.images, info.categories) == (6, 4, 6, 2)
    with pytest.raises(WorkbenchError, match="no note 'zz'"):
        store.note("ds", "zz")
    with pytest.raises(WorkbenchError, match="already exists"):
        store.import_dataset("ds", notes, pairs, images)


def test_images_are_content_addressed_and_shared(tmp_path, store):
    folder = tmp_path / "up"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes(color=(1, 2, 3, 255)))
    (folder / "b.png").write_bytes(png_bytes(color=(1, 2, 3, 255)))
    notes = write_csv(folder / "notes.csv", ["note_id", "title", "content", "image"],
                      [["x", "t", "c", "a.png"], ["y", "t", "c", "b.png"], ["z", "text only", "", ""]])
    store.import_dataset("ds", notes)  # no --images: looked up next to the notes file
    x, y, z = store.notes("ds")
    assert x.image == y.image and z.image is None
    store.delete_dataset("ds")
    assert not store.has_dataset("ds")
    assert not any(p.name == x.image.rsplit("/", 1)[-1] for p in store.workspace.images_dir.iterdir())
    with pytest.raises(WorkbenchError, match="unknown dataset"):
        store.delete_dataset("ds")


def test_reference_layout_with_zip_and_ids_without_extension(tmp_path, store):
    archive = write_zip(tmp_path / "imgs.zip", {"covers/101.jpg": jpeg_bytes(), "covers/102.png": png_bytes()})
    notes = write_csv(tmp_path / "notes.csv", ["noteid", "title", "content", "imgid", "category"],
                      [["101", "Cake", "sweet #baking# #dessert[话题]#", "101", "food@desserts@"],
                       ["102", "Pie", "crust", "102", "food@desserts@"]])
    pairs = write_csv(tmp_path / "pairs.csv", ["noteid1", "noteid2"], [["101", "102"]])
    report = store.import_dataset("ref", notes, pairs, archive)
    assert report.imported == 2 and report.pairs_imported == 1
    cake = store.note("ref", "101")
    assert cake.topics == ["baking", "dessert"] and cake.content == "sweet" and cake.category == "food/desserts"
    assert cake.image.endswith(".jpg") and store.note("ref", "102").image.endswith(".png")


def test_jsonl_notes_and_pairs(tmp_path, store):
    folder = tmp_path / "up"
    folder.mkdir()
    (folder / "p.png").write_bytes(png_bytes())
    notes = write_jsonl(folder / "notes.jsonl", [
        {"note_id": 1, "title": "A", "content": "x", "image": "p.png", "topics": ["red", "round"]},
        {"note_id": 2, "title": "B", "content": "y", "image": None, "category": "misc"},
    ])
    pairs = write_jsonl(folder / "pairs.jsonl", [{"note_id_1": 1, "note_id_2": 2}])
    store.import_dataset("j", notes, pairs)
    a, b = store.notes("j")
    assert (a.note_id, a.topics, b.image, b.category) == ("1", ["red", "round"], None, "misc")
    assert store.pairs("j") == [("1", "2")]


def test_topics_limits(tmp_path, store):
    tags = " ".join(f"#t{i}#" for i in range(12))
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"],
                      [["a", "t", f"hello {tags} #this tag is far too long# #1 best #2"]])
    store.import_dataset("tags", notes)
    note = store.note("tags", "a")
    assert note.topics == [f"t{i}" for i in range(10)]
    assert "#t10#" in note.content and "#this tag is far too long#" in note.content and "#1 best #2" in note.content


# ----------------------------------------------------------------------------------------- bad inputs

def test_zip_slip_entry(tmp_path, store):
    archive = write_zip(tmp_path / "evil.zip", {"../evil.png": png_bytes(), "ok.png": png_bytes()})
    notes = write_csv(tmp_path / "notes.csv", ["note_id", "title", "content", "image"], [["a", "t", "c", "ok.png"]])
    refused(store, tmp_path, "evil.zip", "'../evil.png'", "zip-slip", notes_file=notes, images=archive)


def test_symlink_in_zip(tmp_path, store):
    archive = write_zip(tmp_path / "links.zip", {"ok.png": png_bytes()}, symlinks={"pw.png": "/etc/passwd"})
    notes = write_csv(tmp_path / "notes.csv", ["note_id", "title", "content", "image"],
                      [["a", "t", "c", "ok.png"], ["b", "t", "c", "pw.png"]])
    refused(store, tmp_path, "links.zip", "'pw.png' is a symbolic link", "notes.csv line 3", "'pw.png' not found",
            notes_file=notes, images=archive)


def test_symlink_leaving_folder(tmp_path, store):
    folder = tmp_path / "imgs"
    folder.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    (folder / "link.png").symlink_to(outside)
    notes = write_csv(tmp_path / "notes.csv", ["note_id", "title", "content", "image"],
                      [["a", "t", "c", "link.png"], ["b", "t", "c", "../secret.png"]])
    refused(store, tmp_path, "notes.csv line 2", "link that leaves", "notes.csv line 3", "leaves the images folder",
            notes_file=notes, images=folder)


@pytest.mark.parametrize("name,data,reason", [
    ("bomb.png", bomb_png(), "claims 10,000 Mpx, over the limit of 16 Mpx (a decompression bomb?)"),
    ("wide.png", bomb_png(9_000, 9_000), "claims 81 Mpx, over the limit of 16 Mpx"),
    ("tall.png", bomb_png(1_000, 20_000), "claims 20 Mpx, over the limit of 16 Mpx"),
    ("cut.jpg", truncated_jpeg(), "truncated or corrupt image"),
    ("text.png", b"this is not a picture, just text\n" * 4, "not an image"),
])
def test_bad_image_files(tmp_path, store, name, data, reason):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / name).write_bytes(data)
    (folder / "fine.png").write_bytes(png_bytes())
    notes = write_csv(tmp_path / "notes.csv", ["note_id", "title", "content", "image"],
                      [["ok", "t", "c", "fine.png"], ["bad", "t", "c", name]])
    refused(store, tmp_path, "notes.csv line 3", f"image '{name}'", reason, notes_file=notes, images=folder)


def test_image_too_big_in_bytes_and_missing(tmp_path):
    store = Store(tmp_path / "ws", image_limits=ImageLimits(max_bytes=2_000))
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "noise.png").write_bytes(png_bytes((300, 300)) + b"\0" * 3_000)
    notes = write_csv(tmp_path / "notes.csv", ["note_id", "title", "content", "image"],
                      [["a", "t", "c", "noise.png"], ["b", "t", "c", "nowhere.png"]])
    refused(store, tmp_path, "line 2", "over the limit of 2,000", "line 3", "'nowhere.png' not found",
            notes_file=notes, images=folder)


def test_latin1_csv(tmp_path, store):
    notes = write_csv(tmp_path / "latin.csv", ["note_id", "title", "content", "image"],
                      [["a", "ok", "plain", ""], ["b", "Café crème", "déjà vu", ""]], encoding="latin-1")
    error = refused(store, tmp_path, "latin.csv line 3", "not UTF-8", "byte 0xe9", "Latin-1", notes_file=notes)
    assert len(error.problems) == 1
    # Encoding problems are about the whole file: --skip-bad does not import half of it.
    with pytest.raises(UploadError):
        store.import_dataset("new", notes, skip_bad=True)


def test_misnamed_and_missing_columns(tmp_path, store):
    notes = write_csv(tmp_path / "n.csv", ["note_id", "titel", "content", "img_path"], [["a", "t", "c", ""]])
    refused(store, tmp_path, "n.csv line 1", "unknown column 'titel'; did you mean 'title'?", "missing column 'title'",
            "unknown column 'img_path'", "expected note_id,title,content,image", notes_file=notes)
    pairs = write_csv(tmp_path / "p.csv", ["source", "target"], [["a", "a"]])
    good = write_csv(tmp_path / "g.csv", ["note_id", "title", "content"], [["a", "t", "c"]])
    refused(store, tmp_path, "p.csv line 1", "missing column 'note_id_1'", notes_file=good, pairs_file=pairs)


def test_duplicates_empty_notes_and_long_fields(tmp_path, store):
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], [
        ["a", "t", "c"], ["b", "t", "c"], ["a", "again", "c"], ["e", "", "  "], ["", "no id", "c"],
        ["long", "t", "x" * 60_000], ["c", "t", "c", "extra"],
    ])
    error = refused(store, tmp_path,
                    "n.csv line 4: duplicate note_id 'a' (first on line 2)",
                    "n.csv line 5: note has neither title nor content",
                    "n.csv line 6: empty note_id",
                    "n.csv line 7: content is 60,000 characters long, over the limit of 50,000",
                    "n.csv line 8: has 4 fields but the header has 3",
                    notes_file=notes)
    assert [p.row for p in error.problems] == [4, 5, 6, 7, 8]


def test_bad_pairs(tmp_path, store):
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], [["a", "t", "c"], ["b", "t", "c"]])
    pairs = write_csv(tmp_path / "p.csv", ["note_id_1", "note_id_2"],
                      [["a", "b"], ["a", "ghost"], ["b", "b"], ["b", "a"], ["", "a"]])
    refused(store, tmp_path,
            "p.csv line 3: unknown note_id 'ghost'",
            "p.csv line 4: self-pair: 'b' paired with itself",
            "p.csv line 5: duplicate pair ('b', 'a') (first on line 2, in either order)",
            "p.csv line 6: empty note id",
            notes_file=notes, pairs_file=pairs)


def test_bad_jsonl_lines(tmp_path, store):
    notes = tmp_path / "n.jsonl"
    notes.write_text('{"note_id": "a", "title": "t", "content": "c"}\n{not json}\n[1, 2]\n'
                     '{"note_id": "b", "title": ["x"], "content": "c"}\n', encoding="utf-8")
    refused(store, tmp_path, "n.jsonl line 2: not valid JSON", "n.jsonl line 3: expected a JSON object",
            "n.jsonl line 4: field 'title' should be text", notes_file=notes)
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"note_id": "a", "title": "t", "contents": "c"}])
    refused(store, tmp_path, "unknown field 'contents'; did you mean 'content'?", notes_file=unknown)


def test_many_problems_are_summarised(tmp_path, store):
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], [[f"x{i}", "", ""] for i in range(30)])
    error = refused(store, tmp_path, "30 problems", "... and 10 more", notes_file=notes)
    assert len(error.problems) == 30


# ------------------------------------------------------------------------------------------ skip-bad

def test_skip_bad_counts_add_up_and_report(tmp_path, store):
    folder = tmp_path / "up"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png_bytes())
    (folder / "cut.jpg").write_bytes(truncated_jpeg())
    archive = write_zip(tmp_path / "imgs.zip", {"ok.png": png_bytes(), "cut.jpg": truncated_jpeg(),
                                                "../../evil.png": png_bytes()})
    notes = write_csv(folder / "notes.csv", ["note_id", "title", "content", "image"], [
        ["a", "t", "c", "ok.png"], ["b", "t", "c", "cut.jpg"], ["c", "", "", ""], ["a", "dup", "c", ""],
        ["d", "t", "c", ""],
    ])
    pairs = write_csv(folder / "pairs.csv", ["note_id_1", "note_id_2"],
                      [["a", "d"], ["a", "b"], ["d", "d"], ["d", "zz"], ["d", "a"]])
    report = store.import_dataset("partial", notes, pairs, archive, skip_bad=True)
    assert report.read == report.imported + len(report.skipped) == 5
    assert report.imported == 2 and [row for _, row, _ in report.skipped] == [3, 4, 5]
    assert report.pairs_read == report.pairs_imported + len(report.pairs_skipped) == 5
    assert report.pairs_imported == 1
    assert "problem on notes.csv line 3" in report.pairs_skipped[0][2]
    assert len(report.ignored) == 1 and "zip-slip" in report.ignored[0][2]
    assert [n.note_id for n in store.notes("partial")] == ["a", "d"]
    path = tmp_path / "report.csv"
    report.write(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "kind,file,row,reason" and len(lines) == 1 + 3 + 4 + 1
    assert {d.name: d.skipped for d in store.list_datasets()}["partial"] == 7


def test_nothing_usable_is_refused_even_with_skip_bad(tmp_path, store):
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], [["a", "", ""]])
    before = store_state(store)
    with pytest.raises(UploadError, match="no usable notes"):
        store.import_dataset("new", notes, skip_bad=True)
    assert store_state(store) == before


def test_failed_import_removes_the_images_it_wrote(tmp_path, store):
    notes, pairs, images = good_upload(tmp_path / "up", n=6)
    (images / "img5.png").write_bytes(b"broken")
    before = store_state(store)
    with pytest.raises(UploadError, match="not an image"):
        store.import_dataset("new", notes, pairs, images)
    assert store_state(store) == before


def test_readers_never_see_half_an_import(tmp_path, store):
    rows = [[f"n{i}", f"title {i}", "content " * 20] for i in range(3000)]
    notes = write_csv(tmp_path / "n.csv", ["note_id", "title", "content"], rows)
    seen, done = set(), threading.Event()

    def watch():
        import sqlite3
        while not done.is_set():
            conn = sqlite3.connect(store.workspace.db_path, timeout=30)
            try:
                seen.add(conn.execute("select count(*) from notes where dataset = 'big'").fetchone()[0])
            finally:
                conn.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        store.import_dataset("big", notes)
    finally:
        done.set()
        watcher.join()
    assert seen <= {0, 3000}
    assert len(store.notes("big")) == 3000


def test_bad_names_and_missing_files(tmp_path, store):
    with pytest.raises(WorkbenchError, match="bad dataset name"):
        store.import_dataset("../x", tmp_path / "n.csv")
    with pytest.raises(WorkbenchError, match="notes file not found"):
        store.import_dataset("x", tmp_path / "nope.csv")
    notes = write_csv(tmp_path / "n.csv", NOTE_HEADER, [["a", "t", "c", "", "", ""]])
    with pytest.raises(WorkbenchError, match="no such folder"):
        store.import_dataset("x", notes, images=tmp_path / "nowhere")
    (tmp_path / "notzip.zip").write_bytes(b"PK nope")
    with pytest.raises(WorkbenchError, match="not a readable zip"):
        store.import_dataset("x", notes, images=tmp_path / "notzip.zip")
