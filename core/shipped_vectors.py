"""Vectors shipped beside the demo checkpoints, so the demo's first search on the sample encodes nothing.

A shipped checkpoint folder (assets/checkpoints/<variant>/) may hold `vectors.json` and one float16 `.npy`
per (dataset, modality): the vectors those exact weights give the notes of that exact dataset. The manifest
names both by content, not by anything a workspace invents:

- the checkpoint: sha256 of its model.safetensors (a run's own fingerprint, size and mtime, differs in
  every clone and install);
- the dataset: `content_fingerprint`, sha256 over each note's id, title, text, topics and image file name
  (images are stored under the sha256 of their bytes), so a re-import of the same files matches and any
  edited note, added note or changed image does not.

`install` copies them into the workspace's ordinary vector cache (core.encode.VectorCache, under the run's
current encoder fingerprint and the workspace's own note hashes), which every search, explanation and
evaluation already reads; only when both fingerprints match, and never over a cache that already covers the
dataset. Anything else is left to encoding, as if nothing had been shipped.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.data.schema import Note
from core.errors import WorkbenchError
from core.runs import RUN_FILE, WEIGHTS_FILE, read_run_file
from core.encode import VectorCache, note_hash

log = logging.getLogger(__name__)

MANIFEST = "vectors.json"
FORMAT = "notellm2-workbench/shipped-vectors/1"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_fingerprint(notes: Sequence[Note]) -> str:
    """What the vectors of a dataset are computed from, independent of the workspace it lives in: the
    image's file name is the hash of its bytes, its folder is the workspace's (so it is left out)."""
    digest = hashlib.sha256()
    for note in sorted(notes, key=lambda n: n.note_id):
        image = Path(str(note.image)).name if note.image is not None else None
        digest.update(json.dumps([note.note_id, note.title, note.content, list(note.topics), image]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def vectors_file(dataset: str, modality: str) -> str:
    return f"vectors.{dataset}.{modality}.npy"


def write(folder: Path, dataset: str, notes: Sequence[Note], vectors: dict[str, np.ndarray]) -> Path:
    """Write `vectors` ({modality: (N, d) rows in the order of `notes`}) beside the checkpoint in `folder`,
    as float16, with the manifest naming the checkpoint's weights and the dataset's content."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    weights = file_sha256(folder / WEIGHTS_FILE)
    if manifest.get("format") != FORMAT or manifest.get("weights_sha256") != weights:
        manifest = {"format": FORMAT, "weights_sha256": weights, "datasets": {}}
    for modality, matrix in vectors.items():
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.shape[0] != len(notes):
            raise ValueError(f"{modality}: {matrix.shape[0]} vectors for {len(notes)} notes")
        np.save(folder / vectors_file(dataset, modality), matrix.astype(np.float16), allow_pickle=False)
    entry = manifest["datasets"].get(dataset)
    fingerprint = content_fingerprint(notes)
    if not entry or entry.get("fingerprint") != fingerprint:
        entry = {"fingerprint": fingerprint, "modalities": []}
    entry["ids"] = [note.note_id for note in notes]
    entry["modalities"] = sorted(set(entry["modalities"]) | set(vectors))
    manifest["datasets"][dataset] = entry
    manifest_path.write_text(json.dumps(manifest))
    return manifest_path


@dataclass(frozen=True)
class Installed:
    run: str
    dataset: str
    modality: str
    outcome: str  # installed | present (the cache already had them) | skipped: <why>


def install(workspace, store, run: str, folder: Path, dataset: str) -> list[Installed]:
    """Copy the vectors `folder` ships for `dataset` into the vector cache of workspace run `run`, when the
    run's weights are the shipped ones and the workspace's dataset is the one they were computed on."""
    from core import encoders
    from core.workspace import check_dataset_name

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    entry = (manifest.get("datasets") or {}).get(dataset) if manifest.get("format") == FORMAT else None
    if not entry:
        return []

    def every(outcome):
        return [Installed(run, dataset, modality, outcome) for modality in entry.get("modalities", [])]

    weights = Path(workspace.run_dir(run)) / WEIGHTS_FILE
    try:
        if file_sha256(weights) != manifest.get("weights_sha256"):
            return every("skipped: the run's weights are not the ones the vectors were computed with")
    except OSError:
        return every("skipped: the run has no weights")
    if not store.has_dataset(dataset):
        return every("skipped: no such dataset in the workspace")
    notes = store.notes(dataset)
    if content_fingerprint(notes) != entry.get("fingerprint"):
        return every("skipped: the dataset differs from the one the vectors were computed on")
    row_of = {note_id: row for row, note_id in enumerate(entry.get("ids", []))}
    if len(row_of) != len(notes) or any(note.note_id not in row_of for note in notes):
        return every("skipped: the shipped ids do not cover the dataset")
    fingerprint = encoders.fingerprint(workspace, run)
    out = []
    for modality in entry.get("modalities", []):
        cache = VectorCache(workspace.indexes_dir / run / check_dataset_name(dataset), modality, fingerprint)
        hashes = [note_hash(note, modality) for note in notes]
        present, _, _ = cache.load()
        if all(f"{note.note_id}\0{h}" in present for note, h in zip(notes, hashes)):
            out.append(Installed(run, dataset, modality, "present"))
            continue
        try:
            shipped = np.load(folder / vectors_file(dataset, modality), allow_pickle=False)
        except (OSError, ValueError):
            out.append(Installed(run, dataset, modality, "skipped: the vector file is missing or unreadable"))
            continue
        if shipped.ndim != 2 or shipped.shape[0] != len(row_of):
            out.append(Installed(run, dataset, modality, "skipped: the vector file has the wrong shape"))
            continue
        matrix = shipped[[row_of[note.note_id] for note in notes]].astype(np.float32)
        # float16 storage: back to unit length, as every encoder's output is.
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
        cache.save([note.note_id for note in notes], hashes, matrix)
        out.append(Installed(run, dataset, modality, "installed"))
    for item in out:
        log.info("shipped vectors of %s on %s (%s): %s", run, dataset, item.modality, item.outcome)
    return out


def install_all(workspace, store, directory: Path, runs: Sequence[str] | None = None) -> list[Installed]:
    """`install` for every shipped checkpoint folder under `directory` (restricted to `runs` when given) and
    every dataset its manifest names."""
    directory = Path(directory)
    out: list[Installed] = []
    if not directory.is_dir():
        return out
    for folder in sorted(p for p in directory.iterdir() if (p / MANIFEST).is_file() and (p / RUN_FILE).is_file()):
        try:
            run = read_run_file(folder)["run"]
            datasets = json.loads((folder / MANIFEST).read_text()).get("datasets") or {}
        except (WorkbenchError, OSError, ValueError, KeyError, TypeError):
            continue
        if runs is not None and run not in runs:
            continue
        try:
            if not workspace.run_dir(run).is_dir():
                continue
        except WorkbenchError:  # a manifest beside a run.json whose name is no run name: nothing to fill
            continue
        for dataset in datasets:
            out.extend(install(workspace, store, run, folder, dataset))
    return out
