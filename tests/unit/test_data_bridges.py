"""Parquet and Hugging Face imports: the upload's checks and caps on rows from tables, hostile image paths and
data-file names refused with nothing imported, and export -> import giving back the same notes, pairs and images."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.data.bridges import import_table
from core.data.export import export_dataset
from core.data.images import ImageLimits, normalise_image
from core.data.problems import UploadError
from core.data.store import Store
from core.errors import WorkbenchError

try:
    from data_fixtures import bomb_png, good_upload, jpeg_bytes, png_bytes, store_state, truncated_jpeg
except ImportError:  # tests/ imported as a package
    from tests.unit.data_fixtures import bomb_png, good_upload, jpeg_bytes, png_bytes, store_state, truncated_jpeg

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "ws")
    notes, pairs, images = good_upload(tmp_path / "existing", n=4)
    store.import_dataset("existing", notes, pairs, images)  # a failed import must leave it as it was
    return store


def note_rows(n: int = 4) -> dict:
    return {"note_id": [f"p{i}" for i in range(n)], "title": [f"Title {i}" for i in range(n)],
            "content": [f"content {i}" for i in range(n)], "topics": [[f"t{i}", None, "shared"] for i in range(n)],
            "category": ["a/b" if i % 2 else "a/c" for i in range(n)]}


def write_parquet(path: Path, columns: dict, schema: pa.Schema | None = None, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=row_group_size)
    return path


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    return write_parquet(path, {"noteid1": [a for a, _ in pairs], "noteid2": [b for _, b in pairs]})


def refused(store, *fragments, **kwargs) -> UploadError:
    before = store_state(store)
    with pytest.raises(UploadError) as caught:
        import_table(store, "new", **kwargs)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert store_state(store) == before
    assert not store.has_dataset("new")
    return caught.value


def stored_bytes(store, dataset: str) -> dict[str, bytes | None]:
    return {n.note_id: Path(n.image).read_bytes() if n.image else None for n in store.notes(dataset)}


# ---------------------------------------------------------------------------------------------- Parquet
def test_parquet_with_image_bytes_imports_every_field(tmp_path, store):
    images = [png_bytes(color=(i * 50, 10, 10, 255)) for i in range(3)] + [None]
    notes = write_parquet(tmp_path / "up" / "notes.parquet", {**note_rows(4), "image": images},
                          row_group_size=3)  # two row groups: rows must stay aligned across them
    pairs = write_pairs(tmp_path / "up" / "pairs.parquet", [("p0", "p1"), ("p2", "p3")])
    report = import_table(store, "pq", notes, pairs)
    assert (report.read, report.imported, report.images, report.pairs_imported) == (4, 4, 3, 2)
    got = store.notes("pq")
    assert [n.note_id for n in got] == ["p0", "p1", "p2", "p3"]
    assert got[1].title == "Title 1" and got[1].content == "content 1" and got[1].category == "a/b"
    assert got[1].topics == ["t1", "shared"]  # a null inside the list is no topic
    assert store.pairs("pq") == [("p0", "p1"), ("p2", "p3")]
    # Each row got its own picture (not its neighbour's), normalised as an upload's would be.
    stored = stored_bytes(store, "pq")
    for i in range(3):
        assert stored[f"p{i}"] == normalise_image(images[i])[0]
    assert stored["p3"] is None


def test_parquet_with_relative_paths_and_a_struct_column(tmp_path, store):
    folder = tmp_path / "up"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(png_bytes(color=(1, 2, 3, 255)))
    (folder / "b.png").write_bytes(png_bytes(color=(9, 9, 9, 255)))
    embedded = jpeg_bytes(color=(200, 100, 0))
    image = pa.array([{"bytes": None, "path": "images/a.png"}, {"bytes": None, "path": "b.png"},
                      {"bytes": embedded, "path": "/home/someone/.cache/original.jpg"}, None], IMAGE_STRUCT)
    notes = write_parquet(folder / "notes.parquet", {**note_rows(4), "image": image})
    report = import_table(store, "paths", notes)
    assert report.images == 3
    stored = stored_bytes(store, "paths")
    assert stored["p0"] == normalise_image((folder / "images" / "a.png").read_bytes())[0]
    assert stored["p1"] == normalise_image((folder / "b.png").read_bytes())[0]
    # The bytes win over the struct's path (Hugging Face writes where the file once was).
    assert stored["p2"] is not None and stored["p3"] is None


def hostile_upload(tmp_path: Path, ref_for) -> Path:
    """notes.parquet whose second row's image path is `ref_for(folder, outside_png)`: a real PNG outside the
    upload folder, so only the path check (not a decode failure) can refuse it."""
    folder = tmp_path / "up"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "ok.png").write_bytes(png_bytes())
    outside = tmp_path / "outside" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes(png_bytes(color=(0, 255, 0, 255)))
    paths = ["images/ok.png", ref_for(folder, outside), ""]
    return write_parquet(folder / "notes.parquet", {**note_rows(3), "image": paths})


@pytest.mark.parametrize("ref_for, reason", [
    (lambda folder, outside: "../outside/secret.png", "leaves the images folder"),
    (lambda folder, outside: "images/../../outside/secret.png", "leaves the images folder"),
    (lambda folder, outside: str(outside), "leaves the images folder"),
    (lambda folder, outside: "../../etc/passwd", "leaves the images folder"),
    (lambda folder, outside: (folder / "images" / "link.png").symlink_to(outside) or "images/link.png",
     "is a link that leaves"),
], ids=["dotdot", "dotdot-inside", "absolute", "etc-passwd", "symlink"])
def test_hostile_image_paths_are_refused_with_nothing_imported(tmp_path, store, ref_for, reason):
    notes = hostile_upload(tmp_path, ref_for)
    error = refused(store, "notes.parquet line 2", reason, notes=notes)
    assert [p.row for p in error.problems] == [2]
    # With --skip-bad the hostile row alone is left out, and the outside file is never read in.
    report = import_table(store, "new", notes, skip_bad=True)
    assert report.imported == 2 and [row for _, row, _ in report.skipped] == [2]
    outside = normalise_image((tmp_path / "outside" / "secret.png").read_bytes())[0]
    assert outside not in stored_bytes(store, "new").values()


def test_a_path_dressed_as_an_embedded_image_is_refused(tmp_path, store):
    folder = tmp_path / "up"
    image = pa.array([{"bytes": png_bytes(), "path": None}, {"bytes": None, "path": "embedded image, row 1"}],
                     IMAGE_STRUCT)
    notes = write_parquet(folder / "notes.parquet", {**note_rows(2), "image": image})
    refused(store, "line 2", "names no file", notes=notes)


def test_corrupt_and_oversized_images_are_refused_by_row(tmp_path, store):
    images = [png_bytes(), truncated_jpeg(), bomb_png(), b"not an image at all", png_bytes(size=(8, 8))]
    notes = write_parquet(tmp_path / "up" / "notes.parquet", {**note_rows(5), "image": images})
    error = refused(store, "notes.parquet line 2", "corrupt", "line 3", "decompression bomb", "line 4",
                    "not an image", notes=notes)
    assert sorted({p.row for p in error.problems}) == [2, 3, 4]
    report = import_table(store, "new", notes, skip_bad=True)
    assert [n.note_id for n in store.notes("new")] == ["p0", "p4"]
    assert report.read == report.imported + len(report.skipped)


def test_image_bytes_over_the_byte_cap_are_refused_by_row(tmp_path):
    store = Store(tmp_path / "ws", image_limits=ImageLimits(max_bytes=2_000))
    big = jpeg_bytes(size=(400, 300))
    assert len(big) > 2_000
    notes = write_parquet(tmp_path / "up" / "notes.parquet", {**note_rows(2), "image": [png_bytes((4, 4)), big]})
    with pytest.raises(UploadError, match=r"notes.parquet line 2: image 'embedded image, row 2': image is [\d,]+ bytes, "
                                          r"over the limit of 2,000"):
        import_table(store, "capped", notes)
    assert not store.has_dataset("capped")


def test_text_checks_are_the_uploads_own(tmp_path, store):
    columns = note_rows(4)
    columns["note_id"][2] = "p0"  # duplicate id
    columns["title"][3], columns["content"][3] = "", ""  # an empty note
    notes = write_parquet(tmp_path / "up" / "notes.parquet", columns)
    pairs = write_pairs(tmp_path / "up" / "pairs.parquet", [("p0", "p1"), ("p1", "p1"), ("p1", "zz")])
    error = refused(store, "line 3: duplicate note_id 'p0' (first on line 1)", "line 4: note has neither title",
                    "pairs.parquet line 2: self-pair", "pairs.parquet line 3: unknown note_id 'zz'",
                    notes=notes, pairs=pairs)
    assert len(error.problems) == 4


def test_unknown_columns_need_a_mapping(tmp_path, store):
    notes = write_parquet(tmp_path / "up" / "notes.parquet",
                          {"id": ["a", "b"], "name": ["x", "y"], "caption": ["c", "d"], "label": [1, 2]})
    refused(store, "unknown column 'name'", "unknown column 'caption'", notes=notes)
    import_table(store, "mapped", notes, columns=["name=title", "caption=content", "label=-"])
    assert [(n.note_id, n.title, n.content) for n in store.notes("mapped")] == [("a", "x", "c"), ("b", "y", "d")]
    with pytest.raises(UploadError, match="names 'nope', which is not a column"):
        import_table(store, "other", notes, columns=["nope=title", "name=title", "caption=content", "label=-"])
    with pytest.raises(WorkbenchError, match="'colour' is not a notes column"):
        import_table(store, "other", notes, columns=["label=colour"])


def test_an_image_column_of_the_wrong_type_refuses_the_file(tmp_path, store):
    notes = write_parquet(tmp_path / "up" / "notes.parquet", {**note_rows(2), "image": [1, 2]})
    refused(store, "column 'image' holds int64", notes=notes)


def test_a_file_that_is_not_parquet_is_a_file_problem(tmp_path, store):
    notes = tmp_path / "notes.parquet"
    notes.write_bytes(b"PAR1 but nothing else")
    refused(store, "not a readable Parquet file", notes=notes)


# ---------------------------------------------------------------------------------------------- Hugging Face
def write_hf_folder(folder: Path, batches: list[dict], data_files: list[str] | None = None) -> Path:
    """A folder as datasets' save_to_disk lays it out: data-0000i-of-0000n.arrow (IPC stream), state.json,
    dataset_info.json with the features (an Image column is a struct {bytes, path})."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data-{i:05d}-of-{len(batches):05d}.arrow" for i in range(len(batches))]
    schema = pa.schema([("note_id", pa.string()), ("title", pa.string()), ("text", pa.string()),
                        ("tags", pa.list_(pa.string())), ("image", IMAGE_STRUCT)],
                       metadata={"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}})})
    for name, columns in zip(names, batches):
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(pa.table(columns, schema=schema))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": name} for name in (data_files or names)], "_fingerprint": "0",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"image": {"_type": "Image"}}}))
    return folder


def hf_batch(ids: list[str], images: list[bytes | None]) -> dict:
    return {"note_id": ids, "title": [f"T {i}" for i in ids], "text": [f"text of {i}" for i in ids],
            "tags": [["x", i] for i in ids],
            "image": [{"bytes": b, "path": f"/tmp/hf-cache/{i}.png"} if b is not None else None
                      for i, b in zip(ids, images)]}


def test_hf_folder_imports_across_data_files_without_datasets(tmp_path, store):
    folder = write_hf_folder(tmp_path / "hf", [hf_batch(["a", "b"], [png_bytes(), None]),
                                               hf_batch(["c"], [jpeg_bytes()])])
    pairs = write_pairs(tmp_path / "pairs.parquet", [("a", "c")])
    report = import_table(store, "hf", folder, pairs)
    assert (report.imported, report.images, report.pairs_imported) == (3, 2, 1)
    got = {n.note_id: n for n in store.notes("hf")}
    assert got["c"].content == "text of c" and got["c"].topics == ["x", "c"]
    assert got["b"].image is None and got["c"].image.endswith(".jpg")


def test_hf_rows_are_counted_across_data_files(tmp_path, store):
    folder = write_hf_folder(tmp_path / "hf", [hf_batch(["a", "b"], [png_bytes(), png_bytes()]),
                                               hf_batch(["c", "d"], [png_bytes(), truncated_jpeg()])])
    error = refused(store, "hf line 4: image 'embedded image, row 4'", notes=folder)
    assert [p.row for p in error.problems] == [4]


@pytest.mark.parametrize("name", ["../evil.arrow", "/etc/passwd", "sub/data.arrow", ".hidden.arrow"])
def test_hf_data_file_names_must_stay_in_the_folder(tmp_path, store, name):
    folder = write_hf_folder(tmp_path / "hf", [hf_batch(["a"], [png_bytes()])], data_files=[name])
    refused(store, "is not a plain name inside the folder", notes=folder)


def test_hf_data_file_linking_out_is_refused(tmp_path, store):
    elsewhere = write_hf_folder(tmp_path / "elsewhere", [hf_batch(["a"], [png_bytes()])])
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "data-00000-of-00001.arrow").symlink_to(elsewhere / "data-00000-of-00001.arrow")
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    refused(store, "is a link that leaves the folder", notes=folder)


def test_hf_dataset_dict_picks_the_split(tmp_path, store):
    root = tmp_path / "dd"
    write_hf_folder(root / "train", [hf_batch(["a", "b"], [png_bytes(), None])])
    write_hf_folder(root / "test", [hf_batch(["z"], [None])])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    import_table(store, "dd-train", root)
    import_table(store, "dd-test", root, split="test")
    assert [n.note_id for n in store.notes("dd-train")] == ["a", "b"]
    assert [n.note_id for n in store.notes("dd-test")] == ["z"]
    refused(store, "no split 'valid'", notes=root, split="valid")


# ---------------------------------------------------------------------------------------------- export
def test_export_then_import_gives_the_same_notes_pairs_and_image_bytes(tmp_path, store):
    folder = tmp_path / "src"
    notes, pairs, images = good_upload(folder, n=6)
    photo = io.BytesIO()  # a detailed photo, stored as a resized JPEG: encoding it again would change its bytes
    Image.merge("RGB", [Image.effect_noise((700, 300), 60 + 20 * band) for band in range(3)]).save(photo, "JPEG")
    (images / "img1.png").write_bytes(photo.getvalue())
    store.import_dataset("src", notes, pairs, images)
    manifest = export_dataset(store.workspace, "src", tmp_path / "out", "both")
    assert {"notes.parquet", "pairs.parquet", "notes.csv", "pairs.csv"} <= set(manifest["written"])
    import_table(store, "back", tmp_path / "out" / "notes.parquet", tmp_path / "out" / "pairs.parquet")

    def fields(dataset):
        return [(n.note_id, n.title, n.content, n.topics, n.category) for n in store.notes(dataset)]

    assert fields("back") == fields("src")
    assert store.pairs("back") == store.pairs("src")
    assert stored_bytes(store, "back") == stored_bytes(store, "src")
    # The same bytes are the same files: the re-import added no image to the workspace.
    assert {n.image for n in store.notes("back")} == {n.image for n in store.notes("src")}
    # The CSV side is an upload folder the ordinary import reads.
    store.import_dataset("csv", tmp_path / "out" / "notes.csv", tmp_path / "out" / "pairs.csv")
    assert fields("csv") == fields("src") and store.pairs("csv") == store.pairs("src")


def test_export_writes_cached_vectors_neighbours_and_current_metrics_only(tmp_path, store):
    from core import service
    from core.analysis.projection import _cache_path
    from core.encode import note_hash

    notes = store.notes("existing")
    ids = [n.note_id for n in notes]
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(len(notes), 8)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    cache = service.vector_cache(store.workspace, "zs-text", "existing", "both")
    order = list(reversed(range(len(notes))))  # the cache's own order differs from the store's
    cache.save([ids[i] for i in order], [note_hash(notes[i], "both") for i in order], matrix[order])
    stale = service.vector_cache(store.workspace, "zs-image", "existing", "both")
    stale.fingerprint = "weights that are gone"
    stale.save(ids, [note_hash(n, "both") for n in notes], matrix)
    folder = cache.folder
    current = [service.encoder_fingerprint(store.workspace, "zs-text"),
               service._dataset_fingerprint(store, "existing"), service.EVAL_VERSION]
    (folder / "eval-test-both-0-distractors.json").write_text(json.dumps(
        {"split": "test", "modality": "both", "recall@10": 0.5, "queries": 2, "_fingerprint": current}))
    (folder / "eval-test-text-0-distractors.json").write_text(json.dumps(
        {"split": "test", "modality": "text", "recall@10": 0.9, "_fingerprint": ["old", "old", 1]}))
    maps = store.workspace.indexes_dir / "_maps" / "existing"
    maps.mkdir(parents=True)
    coords = rng.normal(size=(len(notes), 2)).astype(np.float32)
    settings = dict(seed=0, method="umap", n_neighbors=15, min_dist=0.1, n_epochs=None, metric="cosine")
    np.save(_cache_path(maps, "existing-zs-text-both", matrix, settings), coords)

    manifest = export_dataset(store.workspace, "existing", tmp_path / "out", "parquet", neighbours=2)
    assert manifest["vectors"] == ["zs-text-both"]
    assert any("zs-image-both" in reason and "other weights" in reason for reason in manifest["left_out"])
    vectors = pq.read_table(tmp_path / "out" / "vectors" / "zs-text-both.parquet")
    assert vectors.schema.field("vector").type == pa.list_(pa.float32())
    assert vectors.column("note_id").to_pylist() == ids
    assert np.allclose(np.array(vectors.column("vector").to_pylist(), np.float32), matrix)
    neighbours = pq.read_table(tmp_path / "out" / "neighbours" / "zs-text-both.parquet").to_pylist()
    scores = matrix @ matrix.T
    np.fill_diagonal(scores, -np.inf)
    first = [row for row in neighbours if row["note_id"] == ids[0]]
    assert [row["neighbour_id"] for row in first] == [ids[j] for j in np.argsort(-scores[0])[:2]]
    assert [row["rank"] for row in first] == [1, 2]
    placed = pq.read_table(tmp_path / "out" / "maps" / "zs-text-both.parquet")
    assert np.allclose(placed.column("x").to_numpy(), coords[:, 0])
    metrics = pq.read_table(tmp_path / "out" / "metrics.parquet").to_pylist()
    assert metrics == [{"variant": "zs-text", "split": "test", "modality": "both", "seed": 0,
                        "protocol": "distractors", "recall@10": 0.5, "queries": 2}]


def test_export_refuses_a_folder_with_files(tmp_path, store):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(WorkbenchError, match="not an empty folder"):
        export_dataset(store.workspace, "existing", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
