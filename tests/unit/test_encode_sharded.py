"""Sharded cache filling in one process: each shard is one encode call, only missing notes are encoded, and
the file is assembled in store order."""
import numpy as np

from core.data.schema import Note
from core.encode import VectorCache, fill_cache_sharded


def fake_encoder(calls):
    def encode(notes, progress):
        calls.append([n.note_id for n in notes])
        return np.stack([np.eye(16, dtype=np.float32)[int(n.note_id[1:]) % 16] for n in notes])
    return encode


def test_shards_encode_only_what_is_missing_and_keep_store_order(tmp_path):
    notes = [Note(note_id=f"n{i}", title=f"t{i}") for i in range(10)]
    cache = VectorCache(tmp_path / "cache", "both", "fp")
    calls, seen = [], []
    vectors = fill_cache_sharded(cache, notes[:7], fake_encoder(calls), shard_notes=3,
                                 progress=lambda done, total: seen.append((done, total)))
    assert calls == [["n0", "n1", "n2"], ["n3", "n4", "n5"], ["n6"]] and seen[-1] == (7, 7)
    assert np.array_equal(vectors.argmax(1), np.arange(7))
    calls.clear()
    notes[2] = Note(note_id="n2", title="edited")
    vectors = fill_cache_sharded(cache, notes, fake_encoder(calls), shard_notes=3)
    assert calls == [["n2", "n7", "n8"], ["n9"]]  # the edited note and the new ones, nothing else
    assert np.array_equal(vectors.argmax(1), np.arange(10))
    assert not list(cache.folder.glob(".*part*"))
    assert np.array_equal(cache.vectors(notes, fake_encoder(calls)), vectors) and len(calls) == 2
