"""The image-path instruments: frozen towers, the feature cache's key, preprocessing, and the health
figures that tell a broken image path from visual neglect."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.analysis.image_path import (chance_loss, connector_variation, health_verdict, image_path_health,
                                      image_side_vectors)
from core.data.schema import Note
from core.features import VisionFeatureCache
from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
from core.models.vision import square_on_white, tiny_clip_tower
from tests.unit.model_fixtures import picture


def test_a_frozen_tower_never_enters_training_mode():
    tower = tiny_clip_tower()
    tower.train()
    assert not tower.training and not any(m.training for m in tower.modules())


def test_the_feature_cache_is_keyed_by_what_produced_the_features(tmp_path):
    """Another preprocessing or other weights write to another folder: stale features are never reused."""
    tower = tiny_clip_tower()
    image = picture("red")
    first = VisionFeatureCache(tmp_path, tower)
    features, _ = first([image])
    tower.preprocessing = "stretch"
    stretched = VisionFeatureCache(tmp_path, tower)
    assert stretched.folder != first.folder
    other_weights = tiny_clip_tower(seed=1)
    assert VisionFeatureCache(tmp_path, other_weights).folder != first.folder
    again = VisionFeatureCache(tmp_path, tiny_clip_tower())
    assert again.folder == first.folder
    reread, _ = again([image])
    torch.testing.assert_close(reread.pooled, features.pooled)


def test_a_cache_refuses_a_tower_changed_under_it(tmp_path):
    tower = tiny_clip_tower()
    cache = VisionFeatureCache(tmp_path, tower)
    tower.preprocessing = "stretch"
    with pytest.raises(RuntimeError, match="changed"):
        cache([picture("red")])


def test_padding_keeps_the_shape_of_a_tall_drawing():
    """A thin black bar on a wide white canvas: trimmed, then centred on white; stretching would fill the frame."""
    canvas = Image.new("RGB", (300, 100), (255, 255, 255))
    canvas.paste((0, 0, 0), (140, 10, 160, 90))  # 20 wide, 80 tall
    padded = np.asarray(square_on_white(canvas, 100, "pad").convert("L"))
    dark_columns = np.where((padded < 128).any(axis=0))[0]
    dark_rows = np.where((padded < 128).any(axis=1))[0]
    assert 15 <= len(dark_columns) <= 30  # keeps its 1:4 aspect
    assert len(dark_rows) >= 85  # the trimmed bar fills the height
    assert abs((dark_columns.min() + dark_columns.max()) / 2 - 50) < 3  # centred
    stretched = np.asarray(square_on_white(canvas, 100, "stretch").convert("L"))
    assert (stretched < 128).any(axis=0).sum() < 15


def test_connector_variation_tells_a_constant_from_varied_outputs():
    constant = torch.ones(8, 4, 16) * 3.0
    assert connector_variation(constant) == 0.0
    varied = torch.randn(8, 4, 16, generator=torch.Generator().manual_seed(0))
    assert 0.8 < connector_variation(varied) < 1.1
    nearly = constant + 0.01 * varied
    assert connector_variation(nearly) < 0.01


def test_chance_loss_and_verdict():
    assert chance_loss(16) == pytest.approx(math.log(31))
    healthy = {"connector_variation": 0.5, "connector_probe_r10": 0.2, "zs_image_r10": 0.25}
    assert health_verdict(healthy, visual_loss=2.0, chance=math.log(31)) is None
    collapsed = dict(healthy, connector_variation=0.02)
    assert "hardly vary" in health_verdict(collapsed)
    lost = dict(healthy, connector_probe_r10=0.05)
    assert "frozen tower" in health_verdict(lost)
    assert "chance" in health_verdict(healthy, visual_loss=math.log(31), chance=math.log(31))
    # A loss near chance with n_v retrieval near the tower's is a noisy batch figure, not a broken path...
    learning = dict(healthy, nv_r10=0.17)
    assert health_verdict(learning, visual_loss=0.98 * math.log(31), chance=math.log(31)) is None
    # ...but with n_v retrieval lost as well it is one.
    assert "chance" in health_verdict(dict(healthy, nv_r10=0.03), visual_loss=math.log(31), chance=math.log(31))


def _notes(count: int = 12) -> list[Note]:
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    return [Note(str(i), title=f"note {i}", content="", image=picture(colours[i % len(colours)],
                                                                       "square" if i % 2 else "circle"))
            for i in range(count)]


def test_image_path_health_reports_every_instrument_of_the_variant():
    notes = _notes()
    pairs = [(str(i), str(i + 6)) for i in range(6)]  # same colour and shape: related
    micl = NoteEncoder(NoteEncoderConfig.tiny("micl"), device="cpu")
    health = image_path_health(micl, notes, pairs)
    assert {"zs_image_r10", "connector_probe_r10", "nv_r10", "nv_state_r10", "image_only_r10",
            "connector_variation"} <= set(health)
    # Identical pictures give identical frozen features: the tower finds every partner.
    assert health["zs_image_r10"] == 1.0
    late = NoteEncoder(NoteEncoderConfig.tiny("late"), device="cpu")
    assert "connector_probe_r10" not in image_path_health(late, notes, pairs)
    text = NoteEncoder(NoteEncoderConfig.tiny("text"), device="cpu")
    assert image_path_health(text, notes, pairs) == {}


def test_the_probe_sees_a_collapsed_connector():
    """Zeroing the connector's output projection makes every picture the same token: variation 0."""
    notes = _notes()
    model = NoteEncoder(NoteEncoderConfig.tiny("basic"), device="cpu")
    healthy = image_side_vectors(model, notes)
    assert float(healthy["connector_variation"]) > 0.1
    with torch.no_grad():
        for module in model.connector.projection:
            if isinstance(module, torch.nn.Linear):
                module.weight.zero_()
    collapsed = image_side_vectors(model, notes)
    assert float(collapsed["connector_variation"]) < 1e-3


def test_nv_state_is_read_before_the_shared_head():
    """A head squeezed to rank 1 leaves every n_v embedding on one line (nv_r10 falls), while the state
    before the head, which tells where the picture is lost, does not move."""
    notes = _notes()
    pairs = [(str(i), str(i + 6)) for i in range(6)]
    model = NoteEncoder(NoteEncoderConfig.tiny("micl"), device="cpu")
    before = image_side_vectors(model, notes)
    with torch.no_grad():
        weight = model.head.weight
        weight.copy_(weight[:1].expand_as(weight).clone())
    after = image_side_vectors(model, notes)
    np.testing.assert_allclose(after["nv_state"], before["nv_state"], atol=1e-6)
    assert np.abs(after["nv"] @ after["nv"].T).min() > 0.999  # every embedding is +-the same unit vector
    assert not np.allclose(np.abs(before["nv"] @ before["nv"].T), 1.0, atol=1e-3)
    health = image_path_health(model, notes, pairs)
    assert 0 <= health["nv_r10"] <= 1 and 0 <= health["nv_state_r10"] <= 1
