"""Tiny models and notes shared by the analysis tests (built once per variant per session: a few seconds each)."""
from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image

from core.data.schema import Note
from core.models.note_encoder import NoteEncoder, NoteEncoderConfig


@functools.lru_cache(maxsize=None)
def tiny_model(variant: str, **overrides) -> NoteEncoder:
    return NoteEncoder(NoteEncoderConfig.tiny(variant, **overrides), device="cpu")


def picture(seed: int, size=(48, 40)) -> Image.Image:
    image = Image.new("RGB", size, (40 * seed % 256, 90, 200 - 30 * seed % 200))
    for x in range(seed % 5 * 6, seed % 5 * 6 + 12):
        for y in range(8, 20):
            image.putpixel((x % size[0], y), (255, 255, 0))
    return image


def sample_notes(count: int = 8) -> list[Note]:
    words = ["red bird", "blue car", "green tree", "star map", "sun cloud", "dog house", "cat food", "fire sign"]
    return [Note(note_id=f"n{i}", title=words[i % len(words)], content="a small icon of the " * (1 + i % 3),
                 topics=["icon"] if i % 2 else [], image=picture(i)) for i in range(count)]


def sample_pairs(count: int = 4) -> list[tuple[Note, Note]]:
    notes = sample_notes(2 * count)
    return list(zip(notes[0::2], notes[1::2]))
