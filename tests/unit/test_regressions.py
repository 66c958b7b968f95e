"""Regressions that once passed every other test: the warm-up of the learning rate, the training seed
reaching the new modules under the tiny backbones, and the zero-shot baselines encoding at all."""
import numpy as np
import pytest
import torch

from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
from core.runs import read_events
from core.train.trainer import lr_multiplier, train
from core.workspace import Workspace
from tests.unit.engine_fixtures import import_learnable
from tests.unit.model_fixtures import sample_notes


# ------------------------------------------------------------------------------------------- warm-up
def test_lr_multiplier_warms_up_linearly_then_decays_to_zero():
    total, warmup = 20, 4
    values = [lr_multiplier(step, total, warmup) for step in range(total)]
    assert values[:warmup] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(values[warmup - 1:], values[warmup:]))  # then never rises
    assert values[-1] == pytest.approx(1 / (total - warmup)) and lr_multiplier(total, total, warmup) == 0.0
    assert lr_multiplier(0, total, 0) == 1.0  # no warm-up asked: full rate from the first step


def test_training_applies_the_warm_up_to_the_optimizer(tmp_path):
    """The schedule must reach the optimizer: the first step runs at lr / warmup, not at the full rate."""
    root = tmp_path / "ws"
    root.mkdir()
    import_learnable(root, "toy")
    train(root, "toy", "late", "warm", preset="tiny", steps=8, eval_every=0, test_fraction=0.3, warmup_ratio=0.5,
          lr_new=1e-3)
    lrs = [row["lr"] for row in read_events(Workspace.open(root).run_dir("warm")) if "loss" in row]
    assert len(lrs) == 8
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs == pytest.approx([1e-3 * lr_multiplier(step, 8, 4) for step in range(8)])


# ------------------------------------------------------------------------------------------- seeds
def _new_module_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # what the trainer does before building the model
    model = NoteEncoder(NoteEncoderConfig.tiny("micl+late"), device="cpu")
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if name.startswith(("connector", "fusion", "head"))}


def _backbone_weights(seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    model = NoteEncoder(NoteEncoderConfig.tiny("micl+late"), device="cpu")
    return [p.detach().clone() for name, p in model.named_parameters()
            if name.startswith("llm.") and "lora" not in name][:4]


def test_the_seed_decides_the_new_modules_under_tiny_backbones():
    """The tiny backbones stand for pretrained weights: the same whatever the seed. The modules trained from
    scratch must follow the global seed the trainer sets (building a backbone must not reseed it)."""
    zero, again, one = _new_module_weights(0), _new_module_weights(0), _new_module_weights(1)
    assert zero and set(zero) == set(one)
    assert all(torch.equal(zero[name], again[name]) for name in zero)  # reproducible
    changed = [name for name in zero if not torch.equal(zero[name], one[name])]
    # Zero-initialised tensors (the gate) stay equal; everything drawn at random must differ.
    random = [name for name in zero if zero[name].unique().numel() > 1]
    assert random and set(random) <= set(changed), sorted(set(random) - set(changed))
    assert all(torch.equal(a, b) for a, b in zip(_backbone_weights(0), _backbone_weights(1)))


def test_building_a_tiny_model_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    NoteEncoder(NoteEncoderConfig.tiny("text"), device="cpu")
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), expected)
    # ... and the model's own draws come after the seed, not from a generator the backbone reset.
    torch.manual_seed(5)
    a = NoteEncoder(NoteEncoderConfig.tiny("text"), device="cpu").head.weight.detach().clone()
    torch.manual_seed(6)
    b = NoteEncoder(NoteEncoderConfig.tiny("text"), device="cpu").head.weight.detach().clone()
    assert not torch.equal(a, b)


# ------------------------------------------------------------------------------------------- zero-shot
@pytest.fixture(scope="module")
def zero_shot_workspace(tmp_path_factory):
    return Workspace.open(tmp_path_factory.mktemp("zero-shot") / "ws")


@pytest.mark.parametrize("name", ["zs-image", "zs-concat", "zs-llm"])
def test_zero_shot_baselines_encode_unit_vectors(zero_shot_workspace, name):
    from core.baselines import load_zero_shot

    notes = sample_notes()
    encoder = load_zero_shot(name, "cpu", zero_shot_workspace.root)
    vectors = np.asarray(encoder.encode(notes, batch_size=2), dtype=np.float32)
    assert vectors.shape[0] == len(notes) and vectors.shape[1] > 1
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)  # different notes, different vectors
    text_only = np.asarray(encoder.encode(notes, batch_size=2, modality="text"), dtype=np.float32)
    image_only = np.asarray(encoder.encode(notes, batch_size=2, modality="image"), dtype=np.float32)
    if name == "zs-image":  # sees only the picture: with the picture zeroed every note looks alike
        assert np.allclose(text_only, text_only[0], atol=1e-4)
        assert not np.allclose(image_only[0], image_only[1], atol=1e-3)
    elif name == "zs-llm":  # sees only the text: with the text emptied every note looks alike
        assert np.allclose(image_only, image_only[0], atol=1e-4)
        assert not np.allclose(text_only[0], text_only[1], atol=1e-3)
    else:  # both halves matter
        assert not np.allclose(vectors, text_only, atol=1e-3) and not np.allclose(vectors, image_only, atol=1e-3)


# ------------------------------------------------------------------------------------------- vector cache
def test_the_vector_cache_is_keyed_by_the_encoder_fingerprint(tmp_path):
    """Vectors written under one encoder's weights are never read back for other weights."""
    from core.data.schema import Note
    from core.encode import VectorCache

    notes = [Note(f"n{i}", title=f"note {i}") for i in range(4)]
    calls = []

    def encoder(value):
        def encode(todo, progress):
            calls.append((value, len(todo)))
            return np.full((len(todo), 3), value, dtype=np.float32)
        return encode

    first = VectorCache(tmp_path, "both", "run/100/1").vectors(notes, encoder(1.0))
    again = VectorCache(tmp_path, "both", "run/100/1").vectors(notes, encoder(9.0))
    retrained = VectorCache(tmp_path, "both", "run/100/2").vectors(notes, encoder(2.0))
    assert calls == [(1.0, 4), (2.0, 4)]
    assert np.all(first == 1.0) and np.all(again == 1.0) and np.all(retrained == 2.0)
