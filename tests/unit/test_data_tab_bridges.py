"""The Data tab's bridges without a server: a Parquet upload imports as notes (image bytes in the table, or
paths into the images zip), Parquet pairs beside CSV notes are refused with nothing imported, and Export
packs the dataset with the vectors, neighbours and maps the workspace computed into one .zip, leaving
nothing unpacked behind and escaping every name it reports."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

gr = pytest.importorskip("gradio")

from app.backend import Backend  # noqa: E402
from app.tabs import data as data_tab  # noqa: E402
from core.errors import WorkbenchError  # noqa: E402

try:
    from data_fixtures import good_upload, png_bytes, write_csv, write_zip
except ImportError:  # tests/ imported as a package
    from tests.unit.data_fixtures import good_upload, png_bytes, write_csv, write_zip


def quiet(*args, **kwargs):
    """A progress callback for calls outside a Gradio event."""


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setattr(data_tab, "EXPORTS_DIR", tmp_path / "exports")
    backend = Backend(tmp_path / "ws")
    notes, pairs, images = good_upload(tmp_path / "existing", n=4)
    backend.store.import_dataset("existing", notes, pairs, images)
    return backend


def notes_table(images: list) -> pa.Table:
    n = len(images)
    return pa.table({"note_id": [f"p{i}" for i in range(n)], "title": [f"Title {i}" for i in range(n)],
                     "content": [f"content {i}" for i in range(n)], "category": ["a"] * n, "image": images})


def test_a_parquet_upload_with_image_bytes_imports_as_notes(tmp_path, backend):
    notes = tmp_path / "upload" / "notes.parquet"
    notes.parent.mkdir()
    pq.write_table(notes_table([png_bytes(color=(200, 0, i * 60, 255)) for i in range(3)]), notes)
    pairs = write_csv(tmp_path / "upload" / "pairs.csv", ["note_id_1", "note_id_2"], [["p0", "p1"]])
    report, problems, _, choice, _ = data_tab.import_upload(backend, "from-parquet", str(notes), str(pairs), None,
                                                            False, quiet)
    assert "from-parquet" in backend.dataset_names(), report
    stored = backend.store.notes("from-parquet")
    assert [n.note_id for n in stored] == ["p0", "p1", "p2"] and all(n.image for n in stored)
    assert backend.store.pairs("from-parquet") == [("p0", "p1")]
    assert choice["value"] == "from-parquet" and len(problems) == 0


def test_a_parquet_upload_with_paths_reads_them_from_the_images_zip(tmp_path, backend):
    notes = tmp_path / "upload" / "notes.parquet"
    notes.parent.mkdir()
    pq.write_table(notes_table(["a.png", "b.png"]), notes)
    images = write_zip(tmp_path / "upload" / "images.zip", {"a.png": png_bytes(), "b.png": png_bytes((8, 8))})
    data_tab.import_upload(backend, "paths", str(notes), None, str(images), False, quiet)
    assert [bool(n.image) for n in backend.store.notes("paths")] == [True, True]


def test_parquet_pairs_need_parquet_notes(tmp_path, backend):
    notes, _, images = good_upload(tmp_path / "csv-upload", n=2)
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"note_id_1": ["n0"], "note_id_2": ["n1"]}), pairs)
    report, *_ = data_tab.import_upload(backend, "mixed", str(notes), str(pairs), None, False, quiet)
    assert "The pairs file must be" in report and "mixed" not in backend.dataset_names()
    # The Workbench's door says the same to a Python caller.
    with pytest.raises(WorkbenchError, match="Parquet pairs go with a Parquet notes file"):
        backend.workbench.import_files("mixed", notes, pairs, images)


def cache_vectors_and_map(backend, dataset: str) -> np.ndarray:
    """zs-text vectors of every note in the vector cache, and the Explore map of them, as a search and a
    map would have left them (no model is loaded)."""
    from core import service
    from core.analysis.projection import _cache_path
    from core.encode import note_hash

    ws = backend.workspace
    notes = backend.store.notes(dataset)
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(len(notes), 8)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    service.vector_cache(ws, "zs-text", dataset, "both").save(
        [n.note_id for n in notes], [note_hash(n, "both") for n in notes], matrix)
    settings = dict(seed=0, method="umap", n_neighbors=15, min_dist=0.1, n_epochs=None, metric="cosine")
    coords = rng.normal(size=(len(notes), 2)).astype(np.float32)
    np.save(_cache_path(backend.workbench.map_cache_dir(dataset), f"{dataset}-zs-text-both", matrix, settings),
            coords)
    return coords


def test_export_offers_one_zip_with_vectors_neighbours_and_maps(backend):
    coords = cache_vectors_and_map(backend, "existing")
    summary, path = data_tab.export_selected(backend, "existing", 2, quiet)
    archive = Path(path)
    assert archive.parent == data_tab.EXPORTS_DIR and archive.suffix == ".zip"
    with zipfile.ZipFile(archive) as packed:
        names = set(packed.namelist())
        for wanted in ("notes.parquet", "notes.csv", "pairs.parquet", "pairs.csv", "manifest.json",
                       "vectors/zs-text-both.parquet", "neighbours/zs-text-both.parquet",
                       "neighbours/zs-text-both.csv", "maps/zs-text-both.parquet", "maps/zs-text-both.csv"):
            assert f"existing/{wanted}" in names, (wanted, sorted(names))
        assert sum(name.startswith("existing/images/") for name in names) == 4
        import io

        placed = pq.read_table(io.BytesIO(packed.read("existing/maps/zs-text-both.parquet")))
        neighbours = pq.read_table(io.BytesIO(packed.read("existing/neighbours/zs-text-both.parquet")))
    assert np.allclose(placed.column("x").to_numpy(), coords[:, 0])
    assert neighbours.num_rows == 4 * 2
    assert "zs-text-both" in summary and "maps of zs-text-both" in summary
    # Only the zip stays: the unpacked folder and the staging file are gone.
    assert [p.name for p in data_tab.EXPORTS_DIR.iterdir()] == [archive.name]


def test_an_export_that_fails_leaves_nothing_and_says_why(backend):
    summary, path = data_tab.export_selected(backend, "no-such-dataset", 10, quiet)
    assert path is None and "Nothing exported" in summary
    assert list(data_tab.EXPORTS_DIR.iterdir()) == []
    summary, path = data_tab.export_selected(backend, "existing", "many", quiet)
    assert path is None and "whole number" in summary


def test_the_export_summary_escapes_names_and_reasons():
    text = data_tab.export_summary({"dataset": "d", "notes": 1, "pairs": 0, "written": [],
                                    "vectors": ["<img src=x onerror=alert(1)>"], "metrics": 0,
                                    "left_out": ["map of *run*: <b>not cached</b>"]})
    assert "<img" not in text and "<b>" not in text and "&lt;img" in text
