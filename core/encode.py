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
from datetime import timedelta
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
                 progress: Progress | None = None, workspace_root=None, compile: bool = False) -> np.ndarray:
    """(N, d) float32 L2-normalised vectors in the order of `notes`.

    NoteEncoders get their vision features from the workspace's disk cache; any other encoder (the
    zero-shot baselines) is called through its own `.encode`. `compile=True` runs the LLM through
    torch.compile with inductor's cache in the workspace's cache/inductor: worth it for large jobs only
    (bench/README.md has the compile time, the cached start and the gain)."""
    from core.models.note_encoder import NoteEncoder

    notes = [note if isinstance(note, Note) else Note.from_dict(note) for note in notes]
    if not isinstance(model, NoteEncoder):
        return np.asarray(model.encode(notes, batch_size=batch_size, modality=modality, progress=progress),
                          dtype=np.float32)
    cache = feature_cache_for(model, workspace_root)
    if compile:
        from core.runtime import use_compile_cache

        if workspace_root is not None:
            use_compile_cache(Path(workspace_root) / "cache" / "inductor")
        model.compile_inference = True
    try:
        return model.encode(notes, batch_size=batch_size, modality=modality, progress=progress,
                            image_features=lambda images: model_features(model, cache, images))
    finally:
        model.compile_inference = False


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


# ------------------------------------------------------------------------------ spread over processes
# Notes still to encode are cut into shards of this many (in store order); each shard is one `encode` call, so
# its length-sorted batches are the same whichever process encodes it and however many there are: the vectors
# of N processes are those of one, bit for bit, on the same kind of device.
SHARD_NOTES = 1024


def distributed_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment torchrun / accelerate launch set; (0, 1, 0) alone."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class ProcessGroup:
    """torch.distributed's default group for a sharded encode: gloo on CPU, NCCL with one GPU per local rank.
    Destroyed on exit, since a group left open makes the processes abort at interpreter shutdown."""

    def __init__(self):
        self.rank, self.world, self.local_rank = distributed_world()
        self.started = False

    def __enter__(self) -> "ProcessGroup":
        if self.world > 1:
            import torch.distributed as dist

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if gpus:
                torch.cuda.set_device(self.local_rank % gpus)  # "cuda" then means this rank's own GPU
            # The group only carries a barrier and a broadcast, so gloo serves wherever NCCL cannot (no GPU, or
            # more processes than GPUs on a node: NCCL refuses two ranks on one device).
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
            # Ranks wait at barriers for the slowest shard and for rank 0's assembly of a large file: a generous
            # timeout rather than the default that could end a healthy million-note encode.
            dist.init_process_group("nccl" if gpus and gpus >= local_world else "gloo", timeout=timedelta(hours=2))
            self.started = True
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            import torch.distributed as dist

            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.started:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, value):
        """Rank 0's `value` on every rank."""
        if not self.started:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def fill_cache_sharded(cache: VectorCache, notes: Sequence[Note],
                       encode: Callable[[list[Note], Progress | None], np.ndarray], group: ProcessGroup | None = None,
                       shard_notes: int = SHARD_NOTES, progress: Progress | None = None) -> np.ndarray | None:
    """Encode the notes `cache` lacks, shard i on rank i mod world, and assemble the vector file once.

    Each rank writes its shards to a part file beside the cache; after a barrier rank 0 appends all of them in
    store order to the cache with VectorCache.save (atomic replace) and removes the parts; after a second
    barrier every rank may read the file. Returns the vectors of `notes` on rank 0, None elsewhere. Alone
    (no group, or a world of one) the same shards run in one process."""
    group = group or ProcessGroup()
    rank, world = (group.rank, group.world) if group.started else (0, 1)
    index, _, _ = cache.load()
    hashes = [note_hash(note, cache.modality) for note in notes]
    keys = [f"{note.note_id}\0{h}" for note, h in zip(notes, hashes)]
    missing = [i for i, key in enumerate(keys) if key not in index]
    shards = [missing[start:start + shard_notes] for start in range(0, len(missing), max(1, shard_notes))]
    mine = shards[rank::world]
    # A name no other encode shares: rank 0's random tag, broadcast.
    tag = group.agree(os.urandom(6).hex())
    part = cache.folder / f".{cache.modality}.{tag}.part{rank}of{world}.npz"
    cache.folder.mkdir(parents=True, exist_ok=True)
    rows, vectors, done, total = [], [], 0, sum(len(s) for s in mine)
    for shard in mine:
        vectors.append(np.asarray(encode([notes[i] for i in shard], None), dtype=np.float32))
        rows.extend(shard)
        done += len(shard)
        if progress is not None:
            progress(done, total)
    if progress is not None and not total:
        progress(0, 0)
    staging = part.with_name(part.name + ".tmp.npz")
    np.savez(staging, rows=np.asarray(rows, dtype=np.int64),
             vectors=np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))
    os.replace(staging, part)
    group.barrier()
    result = None
    if rank == 0:
        try:
            result = _assemble(cache, notes, hashes, keys, missing, [
                cache.folder / f".{cache.modality}.{tag}.part{r}of{world}.npz" for r in range(world)])
        finally:
            for r in range(world):
                (cache.folder / f".{cache.modality}.{tag}.part{r}of{world}.npz").unlink(missing_ok=True)
    group.barrier()
    return result


def _assemble(cache: VectorCache, notes, hashes, keys, missing, parts) -> np.ndarray:
    rows, vectors = [], []
    for path in parts:
        with np.load(path) as data:
            if len(data["rows"]):
                rows.append(data["rows"])
                vectors.append(data["vectors"])
    index, _, matrix = cache.load()
    if missing:
        old_ids, old_hashes = [], []
        if matrix is not None:
            meta = json.loads(cache.meta_path.read_text())
            old_ids, old_hashes = meta["ids"], meta["hashes"]
        rows = np.concatenate(rows)
        if not np.array_equal(np.sort(rows), np.asarray(missing)):
            raise RuntimeError("the encoded shards do not cover the missing notes exactly")
        block = np.concatenate(vectors)[np.argsort(rows)]  # `missing` is in ascending store order
        matrix = block if matrix is None else np.concatenate([matrix, block])
        cache.save(old_ids + [notes[i].note_id for i in missing], old_hashes + [hashes[i] for i in missing], matrix)
        for offset, i in enumerate(missing):
            index[keys[i]] = len(old_ids) + offset
    return matrix[[index[key] for key in keys]] if keys else np.zeros((0, 0), np.float32)
