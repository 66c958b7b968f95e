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


def test_efficientnet_features_are_the_same_in_training_and_evaluation(default_model):
    """EfficientNet applies drop-connect in training mode: a frozen tower that followed model.train() gave
    features 10-21% off. It must give the very same features whatever mode its owner is in."""
    images = [note.image for note in real_notes()]
    default_model.train()
    default_model._feature_cache.clear()
    training, _ = default_model.image_features(images)
    default_model.eval()
    default_model._feature_cache.clear()
    evaluation, _ = default_model.image_features(images)
    torch.testing.assert_close(training.pooled, evaluation.pooled, rtol=0, atol=0)


def test_zero_shot_baselines_encode_real_notes():
    """Every zero-shot baseline encodes; zs-llm reads the text (its image-only vectors are one shared point,
    its text vectors are not), and the untrained MLRM's image reaches its vector."""
    from core.baselines import ZERO_SHOT, load_zero_shot

    notes = real_notes(6)
    for name in ZERO_SHOT:
        encoder = load_zero_shot(name, "cpu")
        both = encoder.encode(notes, batch_size=4)
        assert both.shape[0] == 6 and np.isfinite(both).all(), name
        np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-4)
        image_only = encoder.encode(notes, batch_size=4, modality="image")
        text_only = encoder.encode(notes, batch_size=4, modality="text")
        if name == "zs-llm":
            assert np.abs(image_only - image_only[0]).max() < 1e-5  # no text: nothing to tell notes apart
            distinct = [i for i, note in enumerate(notes)
                        if all((note.title, note.content) != (o.title, o.content) for o in notes[:i])]
            assert len(distinct) >= 3
            assert (both[distinct] @ both[distinct].T)[~np.eye(len(distinct), dtype=bool)].max() < 0.999
            np.testing.assert_allclose(both, text_only, atol=1e-5)
        if name == "zs-mlrm":
            # Calibrated on real pictures: "both" is not the image alone (the old calibration on image-less
            # notes made W_p ~200x too large, and "both" equalled "image only" to cosine 0.999999).
            cosine = np.sum(both * image_only, axis=1)
            assert cosine.max() < 0.999
            assert not np.allclose(both, text_only, atol=1e-3)
