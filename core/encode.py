"""Note vectors: batched encoding (sorted by prompt length to cut padding, inference mode, bf16 backbones),
kept on disk per (encoder, dataset, modality) so nothing is encoded twice.

Layout: WORKSPACE/indexes/<encoder>/<dataset>/<modality>.npy (float32, rows) and <modality>.json
({"fingerprint", "ids", "hashes"}). `fingerprint` names the encoder's weights (file size and mtime of a
run's model.safetensors, or a zero-shot baseline's version); a note's hash covers its title, content,
topics and image path. A changed fingerprint drops the cache; a new or edited note is encoded alone and
appended, so adding one note never re-encodes the corpus, and a query note is encoded on its own.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from core.data.schema import Note
from core.features import VisionFeatureCache, model_features

Progress = Callable[[int, int], None]


def note_hash(note: Note, modality: str = "both") -> str:
    image = note.image if isinstance(note.image, (str, os.PathLike)) or note.image is None else f"pil:{id(note.image)}"
    payload = json.dumps([note.title, note.content, list(note.topics), str(image) if image else None, modality])
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def feature_cache_for(model, workspace_root) -> VisionFeatureCache | None:
    """One disk-backed cache per model object (it remembers features in memory too)."""
    if getattr(model, "vision", None) is None:
        return None
    cache = getattr(model, "_workbench_feature_cache", None)
    if cache is None or (workspace_root is not None and cache.folder is None):
        cache = VisionFeatureCache(workspace_root, model.vision)
        model._workbench_feature_cache = cache
    return cache


@torch.inference_mode()
def encode_notes(model, notes: Sequence[Note], batch_size: int = 32, modality: str = "both",
                 progress: Progress | None = None, workspace_root=None) -> np.ndarray:
    """(N, d) float32 L2-normalised vectors in the order of `notes`.

    NoteEncoders get their vision features from the workspace's disk cache; any other encoder (the
    zero-shot baselines) is called through its own `.encode`."""
    from core.models.note_encoder import NoteEncoder

    notes = [note if isinstance(note, Note) else Note.from_dict(note) for note in notes]
    if not isinstance(model, NoteEncoder):
        return np.asarray(model.encode(notes, batch_size=batch_size, modality=modality, progress=progress),
                          dtype=np.float32)
    cache = feature_cache_for(model, workspace_root)
    return model.encode(notes, batch_size=batch_size, modality=modality, progress=progress,
                        image_features=lambda images: model_features(model, cache, images))


class VectorCache:
    """Vectors of one encoder on one dataset in one modality, on disk, filled incrementally."""

    def __init__(self, folder: Path, modality: str, fingerprint: str):
        self.folder = Path(folder)
        self.modality = modality
        self.fingerprint = fingerprint
        self.matrix_path = self.folder / f"{modality}.npy"
        self.meta_path = self.folder / f"{modality}.json"

    def load(self) -> tuple[dict[str, int], list[str], np.ndarray | None]:
        try:
            meta = json.loads(self.meta_path.read_text())
            matrix = np.load(self.matrix_path)
        except (OSError, ValueError):
            return {}, [], None
        if meta.get("fingerprint") != self.fingerprint or len(meta["ids"]) != len(matrix):
            return {}, [], None
        index = {f"{i}\0{h}": row for row, (i, h) in enumerate(zip(meta["ids"], meta["hashes"]))}
        return index, meta["hashes"], matrix

    def save(self, ids: list[str], hashes: list[str], matrix: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        staging_matrix = self.folder / f".{self.modality}.{pid}.npy"
        np.save(staging_matrix, matrix.astype(np.float32))
        staging_meta = self.folder / f".{self.modality}.{pid}.json"
        staging_meta.write_text(json.dumps({"fingerprint": self.fingerprint, "ids": ids, "hashes": hashes}))
        # The matrix goes first and the meta checks its length: a reader never pairs a new meta with an old matrix
        # silently (a mismatch is treated as no cache).
        os.replace(staging_matrix, self.matrix_path)
        os.replace(staging_meta, self.meta_path)

    def vectors(self, notes: Sequence[Note], encode: Callable[[list[Note], Progress | None], np.ndarray],
                progress: Progress | None = None) -> np.ndarray:
        """Vectors for `notes` (in their order); encodes only notes the cache lacks and stores them."""
        index, _, matrix = self.load()
        hashes = [note_hash(note, self.modality) for note in notes]
        keys = [f"{note.note_id}\0{h}" for note, h in zip(notes, hashes)]
        missing = [i for i, key in enumerate(keys) if key not in index]
        if missing:
            fresh = encode([notes[i] for i in missing], progress)
            old_ids, old_hashes = [], []
            if matrix is not None:
                meta = json.loads(self.meta_path.read_text())
                old_ids, old_hashes = meta["ids"], meta["hashes"]
            new_ids = old_ids + [notes[i].note_id for i in missing]
            new_hashes = old_hashes + [hashes[i] for i in missing]
            matrix = fresh if matrix is None else np.concatenate([matrix, fresh])
            self.save(new_ids, new_hashes, matrix)
            base = len(old_ids)
            for offset, i in enumerate(missing):
                index[keys[i]] = base + offset
        elif progress is not None:
            progress(len(notes), len(notes))
        return matrix[[index[key] for key in keys]] if keys else np.zeros((0, 0), np.float32)
