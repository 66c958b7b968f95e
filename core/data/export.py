"""Export a dataset, and what the workspace has already computed on it, as Parquet (and CSV for the tables).

Written to a new (or empty) folder:
- `notes.parquet`: note_id, title, content, topics (list of text), category, image as {bytes, path} (the
  stored image's bytes and its file name), the layout of a Hugging Face Image column (the file carries the
  `datasets` features, so `load_dataset("parquet", ...)` sees images); `import-parquet` reads it back;
- `pairs.parquet`: note_id_1, note_id_2;
- per variant (run or zero-shot baseline) and modality whose cached vectors cover the dataset under the
  encoder's current weights: `vectors/<variant>-<modality>.parquet` (note_id, vector as list<float32>);
  `neighbours/<variant>-<modality>.parquet` (note_id, rank, neighbour_id, score), the exact k nearest by the
  cached vectors (computed here: they are not cached anywhere; skipped past `MAX_NEIGHBOUR_NOTES`);
  `maps/<variant>-<modality>.parquet` (note_id, x, y) when the Explore tab's map of that variant alone was
  cached for exactly these vectors (side-by-side maps of two variants are not exported);
- `metrics.parquet`: one row per cached evaluation still valid for the current weights and data (variant,
  split, modality, seed, protocol and every number the evaluation reports);
- with CSV: `notes.csv`, `pairs.csv` and `images/` (an upload folder the ordinary import reads), and a CSV
  beside every table except the vectors;
- `manifest.json`: what was written, and what was left out and why.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from core.errors import WorkbenchError

FORMATS = ("parquet", "csv", "both")
# Exact neighbours cost N^2 dot products, so past this many notes an export leaves them out.
MAX_NEIGHBOUR_NOTES = 100_000
MODALITY_NAMES = ("both", "image", "text")

# The Hugging Face `datasets` features of notes.parquet, in the schema metadata it reads them from.
_HF_FEATURES = {
    "note_id": {"dtype": "string", "_type": "Value"},
    "title": {"dtype": "string", "_type": "Value"},
    "content": {"dtype": "string", "_type": "Value"},
    "topics": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
    "category": {"dtype": "string", "_type": "Value"},
    "image": {"_type": "Image"},
}


def _write_table(table, folder: Path, stem: str, csv: bool, parquet: bool, written: list[str]) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    if parquet:
        pq.write_table(table, folder / f"{stem}.parquet")
        written.append(str((folder / f"{stem}.parquet")))
    if csv:
        pacsv.write_csv(table, folder / f"{stem}.csv")
        written.append(str(folder / f"{stem}.csv"))


def export_dataset(workspace, dataset: str, out: str | os.PathLike, formats: str = "both",
                   neighbours: int = 10, progress=None) -> dict:
    """Write the dataset (and its cached vectors, neighbours, maps, metrics) to `out`; returns the manifest."""
    import pyarrow as pa

    from core.data.store import Store
    from core.workspace import Workspace

    if formats not in FORMATS:
        raise WorkbenchError(f"unknown export format {formats!r}; choose {', '.join(FORMATS)}")
    if neighbours < 0:
        raise WorkbenchError("neighbours must be 0 (none) or more")
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    store = Store(ws)
    info = store.dataset(dataset)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise WorkbenchError(f"{out} exists and is not an empty folder; export into a new one")
    out.mkdir(parents=True, exist_ok=True)
    parquet, csv = formats in ("parquet", "both"), formats in ("csv", "both")
    notes = store.notes(dataset)
    pairs = store.pairs(dataset)
    written: list[str] = []
    left_out: list[str] = []
    report = progress or (lambda done, total, message: None)

    # ---- notes and images
    image_bytes, image_names = [], []
    if csv:
        (out / "images").mkdir()
    for done, note in enumerate(notes):
        report(done, len(notes), "exporting notes")
        if note.image:
            path = Path(note.image)
            image_bytes.append(path.read_bytes())
            image_names.append(path.name)
            if csv and not (out / "images" / path.name).exists():
                shutil.copyfile(path, out / "images" / path.name)
        else:
            image_bytes.append(None)
            image_names.append(None)
    report(len(notes), max(len(notes), 1), "exporting notes")
    columns = {"note_id": pa.array([n.note_id for n in notes], pa.string()),
               "title": pa.array([n.title for n in notes], pa.string()),
               "content": pa.array([n.content for n in notes], pa.string()),
               "topics": pa.array([list(n.topics) for n in notes], pa.list_(pa.string())),
               "category": pa.array([n.category for n in notes], pa.string())}
    if parquet:
        image = pa.StructArray.from_arrays([pa.array(image_bytes, pa.binary()), pa.array(image_names, pa.string())],
                                           names=["bytes", "path"],
                                           mask=pa.array([b is None for b in image_bytes], pa.bool_()))
        table = pa.table({**columns, "image": image})
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})})
        _write_table(table, out, "notes", csv=False, parquet=True, written=written)
    if csv:
        # The upload format: topics joined by commas, the image as a path inside images/.
        table = pa.table({**{k: v for k, v in columns.items() if k != "topics"},
                          "topics": pa.array([",".join(n.topics) for n in notes], pa.string()),
                          "image": pa.array([f"images/{name}" if name else "" for name in image_names], pa.string())})
        _write_table(table.select(["note_id", "title", "content", "image", "topics", "category"]), out, "notes",
                     csv=True, parquet=False, written=written)
    del image_bytes
    pairs_table = pa.table({"note_id_1": pa.array([a for a, _ in pairs], pa.string()),
                            "note_id_2": pa.array([b for _, b in pairs], pa.string())})
    _write_table(pairs_table, out, "pairs", csv, parquet, written)

    # ---- what the workspace computed: vectors (and neighbours, maps from them), evaluations
    vectors_found = _cached_vectors(ws, dataset, notes, left_out)
    if not vectors_found and not any(reason.startswith("vectors of ") for reason in left_out):
        left_out.append("vectors, neighbours and maps: no variant has cached vectors of this dataset "
                        "(python -m core encode fills them)")
    ids = [n.note_id for n in notes]
    for number, (name, modality, matrix) in enumerate(vectors_found):
        report(number, len(vectors_found), "exporting vectors")
        stem = f"{name}-{modality}"
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1])
        _write_table(pa.table({"note_id": ids, "vector": vectors.cast(pa.list_(pa.float32()))}), out / "vectors",
                     stem, csv=False, parquet=True, written=written)
        if neighbours and len(notes) > MAX_NEIGHBOUR_NOTES:
            left_out.append(f"neighbours of {stem}: {len(notes):,} notes, over {MAX_NEIGHBOUR_NOTES:,} for an "
                            "exact search")
        elif neighbours and len(notes) > 1:
            _write_table(_neighbour_table(ids, matrix, neighbours), out / "neighbours", stem, csv, parquet, written)
        coords = _cached_map(ws, dataset, name, modality, matrix)
        if coords is None:
            left_out.append(f"map of {stem}: not cached (open it in the Explore tab first)")
        else:
            _write_table(pa.table({"note_id": ids, "x": coords[:, 0].astype(np.float32),
                                   "y": coords[:, 1].astype(np.float32)}), out / "maps", stem, csv, parquet, written)
    metrics = _cached_metrics(ws, store, dataset, left_out)
    if metrics:
        keys = list(dict.fromkeys(key for row in metrics for key in row))
        _write_table(pa.table({key: [row.get(key) for row in metrics] for key in keys}), out, "metrics", csv,
                     parquet, written)
    manifest = {"dataset": dataset, "notes": info.notes, "pairs": info.pairs, "images": info.images,
                "source": info.source, "formats": formats,
                "written": sorted(str(Path(p).relative_to(out)) for p in written),
                "vectors": [f"{name}-{modality}" for name, modality, _ in vectors_found],
                "metrics": len(metrics), "left_out": left_out}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _cached_vectors(ws, dataset: str, notes, left_out: list[str]) -> list[tuple[str, str, np.ndarray]]:
    """(variant, modality, vectors in store order) for every cache that covers every note under the variant's
    current weights; encodes nothing."""
    from core import service
    from core.encode import VectorCache, note_hash
    from core.workspace import check_dataset_name

    found = []
    if not ws.indexes_dir.is_dir():
        return found
    for owner in sorted(ws.indexes_dir.iterdir()):
        folder = owner / check_dataset_name(dataset)
        if owner.name.startswith("_") or not folder.is_dir():
            continue
        for modality in MODALITY_NAMES:
            if not (folder / f"{modality}.npy").is_file():
                continue
            label = f"{owner.name}-{modality}"
            try:
                fingerprint = service.encoder_fingerprint(ws, owner.name)
            except WorkbenchError:
                left_out.append(f"vectors of {label}: the run is gone from this workspace")
                continue
            index, _, matrix = VectorCache(folder, modality, fingerprint).load()
            if matrix is None:
                left_out.append(f"vectors of {label}: made with other weights than the run's current ones")
                continue
            rows = [index.get(f"{n.note_id}\0{note_hash(n, modality)}") for n in notes]
            if any(row is None for row in rows):
                missing = sum(row is None for row in rows)
                left_out.append(f"vectors of {label}: {missing:,} notes not encoded yet (python -m core encode)")
                continue
            found.append((owner.name, modality, np.asarray(matrix[rows], dtype=np.float32)))
    return found


def _neighbour_table(ids: list[str], matrix: np.ndarray, k: int):
    import pyarrow as pa

    from core.index import exact_neighbours

    k = min(k, len(ids) - 1)
    rows, _, best = exact_neighbours(matrix, len(ids), k)
    order = np.argsort(rows)  # rows come back sorted already; kept explicit
    rows, best = rows[order], best[order]
    scores = np.einsum("nd,nkd->nk", matrix[rows], matrix[best])
    return pa.table({"note_id": [ids[r] for r in rows for _ in range(k)],
                     "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(rows)),
                     "neighbour_id": [ids[b] for b in best.reshape(-1)],
                     "score": scores.reshape(-1).astype(np.float32)})


def _cached_map(ws, dataset: str, name: str, modality: str, matrix: np.ndarray) -> np.ndarray | None:
    """The Explore tab's cached map of one variant's vectors (its default settings), if it is there."""
    from core.analysis.projection import _cache_path

    folder = ws.indexes_dir / "_maps" / dataset
    if not folder.is_dir():
        return None
    settings = dict(seed=0, method="umap", n_neighbors=15, min_dist=0.1, n_epochs=None, metric="cosine")
    path = _cache_path(folder, f"{dataset}-{name}-{modality}", matrix, settings)
    try:
        coords = np.load(path)
    except (OSError, ValueError):
        return None
    return coords if coords.shape == (len(matrix), 2) else None


def _cached_metrics(ws, store, dataset: str, left_out: list[str]) -> list[dict]:
    """The scalar results of every cached evaluation of the dataset that is current (weights, data, version)."""
    from core import service
    from core.workspace import check_dataset_name

    rows = []
    data_fingerprint = None
    for path in sorted(ws.indexes_dir.glob(f"*/{check_dataset_name(dataset)}/eval-*.json")):
        owner = path.parent.parent.name
        try:
            result = json.loads(path.read_text())
            fingerprint = service.encoder_fingerprint(ws, owner)
        except (OSError, ValueError, WorkbenchError):
            left_out.append(f"evaluation {owner}/{path.name}: unreadable, or its run is gone")
            continue
        if data_fingerprint is None:
            data_fingerprint = service._dataset_fingerprint(store, dataset)
        if result.get("_fingerprint") != [fingerprint, data_fingerprint, service.EVAL_VERSION]:
            left_out.append(f"evaluation {owner}/{path.name}: stale (other weights, data or evaluation version)")
            continue
        protocol = path.stem.split("-")[-1]
        row = {"variant": owner, "split": result.get("split"), "modality": result.get("modality"),
               "seed": int(path.stem.split("-")[-2]), "protocol": protocol}
        row.update({key: value for key, value in result.items()
                    if key not in row and key != "_fingerprint" and isinstance(value, (int, float))
                    and not isinstance(value, bool)})
        rows.append(row)
    return rows
