"""The analysis on the real offline default (SmolLM2-135M + EfficientNet-Lite0, micl+late, untrained) and real
UMAP. Slow: a model load, one saliency batch (~30 s on 2 CPU cores), and numba's first compile (~20 s)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.analysis import projection
from core.analysis.attention import image_attention
from core.analysis.projection import aligned_projections, project
from core.analysis.saliency import saliency_by_layer
from core.data.schema import Note

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def sample_notes(count):
    if not (SAMPLE / "notes.csv").exists():
        pytest.skip("data/sample is not present")
    with open(SAMPLE / "notes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [Note(note_id=r["note_id"], title=r["title"], content=r["content"],
                 topics=[t.strip() for t in (r.get("topics") or "").split(",") if t.strip()],
                 image=str(SAMPLE / "images" / r["image"])) for r in rows]


@pytest.fixture(scope="module")
def default_model():
    from core.models.note_encoder import NoteEncoder, NoteEncoderConfig

    return NoteEncoder(NoteEncoderConfig(), device="cpu")


def test_saliency_and_attention_on_the_offline_default(default_model):
    notes = sample_notes(4)
    frame = saliency_by_layer(default_model, list(zip(notes[0::2], notes[1::2])), batch_pairs=2)
    assert len(frame) == default_model.llm.config.num_hidden_layers
    assert np.isfinite(frame[["S_v", "S_t", "S_o"]].to_numpy()).all()
    result = image_attention(default_model, notes[0], image_size=224)
    assert result["heatmap"].shape == (7, 7) and result["heatmap"].sum() == pytest.approx(1.0, abs=1e-5)
    assert result["overlay"].size == (224, 224)
    assert default_model.llm.config._attn_implementation == "sdpa"


def test_real_umap_is_cached_and_aligned(tmp_path, monkeypatch):
    vectors = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    first = project(vectors, cache_dir=tmp_path, key="umap", n_epochs=30)
    assert first.shape == (40, 2) and np.isfinite(first).all()
    monkeypatch.setattr(projection, "compute_projection", lambda *a, **k: pytest.fail("recomputed"))
    assert np.array_equal(project(vectors, cache_dir=tmp_path, key="umap", n_epochs=30), first)
    monkeypatch.undo()
    a, b = aligned_projections(vectors, vectors.copy(), n_epochs=30)  # no cache: two real fits
    assert np.allclose(a, b, atol=1e-4)
