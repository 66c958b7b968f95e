"""The same query three ways: image only, text only, and both, to see which modality drives its neighbours."""
from __future__ import annotations

from typing import Callable

from core.data.schema import Note
from core.errors import WorkbenchError

MODALITIES = ("both", "image", "text")


def modality_neighbours(search_fn: Callable[[Note, str], list], note: Note, k: int = 10) -> dict[str, list]:
    """{"both": [...], "image": [...], "text": [...]}, each the first k hits of `search_fn(note, modality)`, a
    list of {"note_id", "score"} dicts best first. "image" empties the note's text, "text" replaces its image
    with a zero image (the model's `collate(notes, modality)` does this, so search_fn only passes the
    modality on). A note without an image gets an empty "image" list: its image-only query would be a blank."""
    results = {}
    for modality in MODALITIES:
        if modality == "image" and (note.image is None or (isinstance(note.image, str) and not note.image.strip())):
            results[modality] = []
            continue
        hits = list(search_fn(note, modality) or [])[:k]
        for hit in hits:
            if not isinstance(hit, dict) or "note_id" not in hit:
                raise WorkbenchError(f"search_fn must return dicts with note_id and score, got {hit!r}")
        results[modality] = hits
    return results
