"""The real offline default (SmolLM2-135M-Instruct + EfficientNet-Lite0, micl+late) on real clip-art notes."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.schema import Note
from core.models.note_encoder import NoteEncoder, NoteEncoderConfig

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def real_notes(count=4):
    with open(SAMPLE / "notes.csv", newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["image"]][:count]
    return [Note(row["note_id"], row["title"], row["content"], [t.strip() for t in row["topics"].split(",") if t.strip()],
                 str(SAMPLE / "images" / row["image"]), row["category"]) for row in rows]


@pytest.fixture(scope="module")
def default_model():
    return NoteEncoder(NoteEncoderConfig(), device="cpu")


def test_offline_default_encodes_real_notes_into_unit_vectors(default_model):
    notes = real_notes()
    assert default_model.variant == "micl+late"
    assert default_model.llm.config.hidden_size == 576  # SmolLM2-135M
    assert default_model.vision.grid == (7, 7)  # EfficientNet-Lite0: 49 patch tokens
    output = default_model(default_model.collate(notes))
    assert output.has_image.all()
    vectors = default_model.encode(notes)
    assert vectors.shape == (4, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.isfinite(vectors).all()
    # Different notes get different vectors (a collapsed encoder would pass the norm check alone).
    similarity = vectors @ vectors.T
    assert similarity[~np.eye(4, dtype=bool)].max() < 0.9999


def test_offline_vision_tower_sees_real_images(default_model):
    notes = real_notes()
    features, has_image = default_model.image_features([note.image for note in notes])
    assert features.patches.shape == (4, 49, 1280)
    assert has_image.all()
    zero, zero_flag = default_model.image_features([None])
    assert not zero_flag.any()
    assert not torch.allclose(features.pooled[0].float(), zero.pooled[0].float())
