"""Attention on the image: per-layer shares, and a heat map with the patch grid's shape that sums to 1."""
from __future__ import annotations

import numpy as np
import pytest

from core.analysis.attention import image_attention
from core.data.schema import Note
from core.errors import WorkbenchError

try:
    from analysis_fixtures import sample_notes, tiny_model
except ImportError:
    from tests.unit.analysis_fixtures import sample_notes, tiny_model


@pytest.mark.parametrize("variant", ["micl+late", "basic"])
def test_heat_map_has_the_grid_shape_and_sums_to_one(variant):
    model = tiny_model(variant)
    note = sample_notes(1)[0]
    result = image_attention(model, note, image_size=(64, 48))
    layers = model.llm.config.num_hidden_layers
    grid = model.vision.grid
    assert result["heatmap"].shape == grid
    assert result["heatmap"].sum() == pytest.approx(1.0, abs=1e-5) and (result["heatmap"] >= 0).all()
    assert result["per_layer"].shape == (layers,)
    assert ((result["per_layer"] > 0) & (result["per_layer"] < 1)).all()
    assert result["token_attention"].shape == (layers, model.connector.num_tokens)
    assert np.allclose(result["token_attention"].sum(axis=1), result["per_layer"])
    assert result["overlay"].size == (64, 48)
    if variant == "micl+late":
        assert result["per_layer_visual"].shape == (layers,)
    else:
        assert result["per_layer_visual"] is None
    assert model.llm.config._attn_implementation == "sdpa"


def test_last_layer_choice_and_a_note_without_image():
    model = tiny_model("micl+late")
    result = image_attention(model, Note(note_id="x", title="no picture"), layers="last")
    assert result["overlay"] is None and result["layers_used"] == [model.llm.config.num_hidden_layers - 1]
    assert result["heatmap"].sum() == pytest.approx(1.0, abs=1e-5)


def test_mlp_connector_maps_tokens_one_to_one_onto_patches():
    model = tiny_model("basic", connector="mlp")
    result = image_attention(model, sample_notes(1)[0])
    assert result["heatmap"].shape == model.vision.grid
    assert result["heatmap"].sum() == pytest.approx(1.0, abs=1e-5)


def test_variant_without_image_tokens_is_a_clear_error():
    with pytest.raises(WorkbenchError, match="no image tokens"):
        image_attention(tiny_model("late"), sample_notes(1)[0])
