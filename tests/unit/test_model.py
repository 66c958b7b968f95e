"""The NoteLLM-2 model on tiny random backbones: every variant, every invariant the method relies on."""
import dataclasses

import numpy as np
import pytest
import torch

from core.data.schema import Note
from core.errors import WorkbenchError
from core.models.note_encoder import VARIANTS, NoteEncoder, NoteEncoderConfig
from core.models.prompts import IMAGE_TOKEN, SLOT_TOKEN
from tests.unit.model_fixtures import picture, sample_notes


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {variant: NoteEncoder(NoteEncoderConfig.tiny(variant), device="cpu") for variant in VARIANTS}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_gives_unit_vectors_of_the_configured_size(models, variant):
    model = models[variant]
    vectors = model.encode(sample_notes(), batch_size=3)
    assert vectors.dtype == np.float32
    assert vectors.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert model.variant == variant


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_outputs_match_the_variant_switches(models, variant):
    model = models[variant]
    image_mode, late = VARIANTS[variant]
    output = model(model.collate(sample_notes()))
    assert (output.visual_state is not None) == (image_mode == "micl")
    assert (output.visual_embedding is not None) == (image_mode == "micl")
    assert (output.gate is not None) == late
    if late:
        real = output.has_image
        assert torch.all(output.gate[real] > 0) and torch.all(output.gate[real] < 1)
        assert output.gate.shape == output.note_state.shape
        # A note without a picture keeps its LLM state: nothing is fused into it.
        assert not bool(real.all())
        assert torch.all(output.gate[~real] == 1)


def test_late_fusion_formula_gate_weights_the_llm_state():
    """h' = z h + (1 - z) v: z is the LLM's share. An inverted formula (z on the image) fails here."""
    from core.models.fusion import LateFusionGate

    gate = LateFusionGate(vision_width=3, llm_width=2)
    with torch.no_grad():
        gate.gate.weight.zero_()
        gate.gate.weight[:, 0] = 50.0  # z -> 1 when h[0] is large and positive
    state = torch.tensor([[1.0, 2.0]])
    image = torch.tensor([[10.0, 20.0]])
    fused, z = gate(state, image)
    assert torch.all(z > 0.999)
    torch.testing.assert_close(fused, state, atol=1e-3, rtol=0)
    fused, z = gate(state, image, has_image=torch.tensor([False]))
    torch.testing.assert_close(fused, state)


def test_fusion_calibration_ignores_notes_without_pictures(models):
    """W_p is scaled on real pictures only: a batch of image-less notes leaves it uncalibrated, and a batch
    with pictures scales |W_p c| to |h| on those pictures."""
    from core.models.note_encoder import NoteEncoder, NoteEncoderConfig

    model = NoteEncoder(NoteEncoderConfig.tiny("late"), device="cpu")
    before = model.fusion.image_projection.weight.detach().clone()
    no_pictures = [type(note)(note_id=note.note_id, title=note.title, content=note.content) for note in sample_notes()]
    with torch.no_grad():
        model(model.collate(no_pictures))
    assert not bool(model.fusion.calibrated)
    torch.testing.assert_close(model.fusion.image_projection.weight, before)
    with torch.no_grad():
        output = model(model.collate(sample_notes()))
    assert bool(model.fusion.calibrated)
    real = output.has_image
    vision, _ = model.image_features([n.image for n in sample_notes()])
    projected = model.fusion.project_image(vision.pooled.float())[real]
    ratio = projected.pow(2).mean().sqrt() / output.note_state[real].pow(2).mean().sqrt()
    assert abs(float(ratio.detach()) - 1.0) < 1e-3


def test_frozen_tower_gives_the_same_features_in_training_and_evaluation(models):
    """model.train() must not reach the frozen vision tower (dropout/drop-connect would change its features)."""
    model = models["micl+late"]
    images = [n.image for n in sample_notes()]
    for module in model.vision.modules():  # give the tiny tower a training-mode behaviour to leak
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.5
    model.train()
    assert not model.vision.training
    model._feature_cache.clear()
    during_training, _ = model.image_features(images)
    model.eval()
    model._feature_cache.clear()
    during_evaluation, _ = model.image_features(images)
    torch.testing.assert_close(during_training.pooled, during_evaluation.pooled, rtol=0, atol=0)


def test_missing_and_unreadable_images_become_zero_images_and_are_flagged(models, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    notes = sample_notes()[:2] + [Note("x", "t", image=str(broken)), Note("y", "t", image=None)]
    output = models["micl+late"](models["micl+late"].collate(notes))
    assert output.has_image.tolist() == [True, True, False, False]
    assert torch.isfinite(output.embedding).all()


@pytest.mark.parametrize("variant", ["micl", "micl+late"])
def test_visual_state_depends_only_on_the_image_part(models, variant):
    model = models[variant]
    base = sample_notes()[:2]
    changed_text = [dataclasses.replace(n, title=n.title + " with many more words", content="different")
                    for n in base]
    changed_image = [dataclasses.replace(n, image=picture("yellow", "square")) for n in base]
    with torch.no_grad():
        reference = model(model.collate(base))
        text_perturbed = model(model.collate(changed_text))
        image_perturbed = model(model.collate(changed_image))
    torch.testing.assert_close(text_perturbed.visual_state, reference.visual_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_perturbed.visual_embedding, reference.visual_embedding, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(text_perturbed.note_state, reference.note_state, atol=1e-4)
    assert not torch.allclose(image_perturbed.visual_state, reference.visual_state, atol=1e-4)


@pytest.mark.parametrize("variant", ["basic", "micl+late"])
def test_visual_tokens_replace_the_placeholder_in_every_row_of_a_mixed_length_batch(models, variant):
    model = models[variant]
    notes = sample_notes()
    batch = model.collate(notes)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "the batch must mix lengths to test this"
    seen = {}
    handle = model.llm.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"].detach().float()), with_kwargs=True)
    try:
        with torch.no_grad():
            model(batch)
            features, _ = model.image_features(batch["images"])
            visual = model.connector(features.pooled.float(), features.patches.float())
    finally:
        handle.remove()
    for row in range(len(notes)):
        positions = (batch["input_ids"][row] == IMAGE_TOKEN).nonzero().flatten()
        assert len(positions) == model.connector.num_tokens
        assert positions.max() < lengths[row], "visual tokens must sit inside the unpadded prompt"
        torch.testing.assert_close(seen["embeds"][row, positions], visual[row], atol=1e-5, rtol=1e-5)
        if model.config.image_mode == "micl":
            slot = (batch["input_ids"][row] == SLOT_TOKEN).nonzero().flatten()
            assert slot.tolist() == [batch["visual_index"][row].item() + 1]
            torch.testing.assert_close(seen["embeds"][row, slot[0]], model.slot_embedding.detach().float())


def test_right_padding_does_not_change_a_note_embedding(models):
    model = models["micl+late"]
    notes = sample_notes()
    together = model.encode(notes, batch_size=4)
    alone = np.stack([model.encode([note])[0] for note in notes])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_special_slot_token_starts_at_the_mean_input_embedding():
    model = NoteEncoder(NoteEncoderConfig.tiny("micl"), device="cpu")
    mean = model.llm.get_input_embeddings().weight.detach().float().mean(0)
    torch.testing.assert_close(model.slot_embedding.detach(), mean)


@pytest.mark.parametrize("variant", ["text", "micl+late", "basic+late"])
def test_save_and_load_round_trip_gives_equal_outputs(models, variant, tmp_path):
    model = models[variant]
    with torch.no_grad():  # perturb trainable weights so the test cannot pass on initial values alone
        for parameter in model.trainable_groups()["new_modules"]:
            parameter.add_(0.01 * torch.randn_like(parameter))
    before = model.encode(sample_notes())
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert not list((tmp_path / "ckpt").glob("*.bin")) and not list((tmp_path / "ckpt").glob("*.pt"))
    loaded = NoteEncoder.from_pretrained(tmp_path / "ckpt", device="cpu")
    assert loaded.variant == variant
    np.testing.assert_allclose(loaded.encode(sample_notes()), before, atol=1e-6)


def test_lora_weights_are_saved_but_frozen_backbones_are_not(tmp_path):
    from safetensors import safe_open

    config = NoteEncoderConfig.tiny("micl+late", llm="tiny:llama")
    model = NoteEncoder(config, device="cpu")
    keys = model._persisted_keys()
    assert any("lora_" in key for key in keys)
    assert all(not key.startswith("vision.") for key in keys if not config.vision.startswith("tiny:"))
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(keys)


def test_loading_a_checkpoint_of_another_architecture_is_a_clear_error(models, tmp_path):
    models["micl+late"].save_pretrained(tmp_path / "micl")
    other = NoteEncoder(NoteEncoderConfig.tiny("basic", embedding_dim=8), device="cpu")
    with pytest.raises(WorkbenchError, match="does not match a basic model"):
        other.load_weights(tmp_path / "micl" / "model.safetensors")


def test_bad_configuration_is_reported_in_words():
    with pytest.raises(WorkbenchError, match=r"unknown variant 'micl\+early'"):
        NoteEncoderConfig.for_variant("micl+early")
    with pytest.raises(WorkbenchError, match="connector must be"):
        NoteEncoderConfig.tiny("basic", connector="perceiver")


def test_unknown_backbone_names_are_a_clear_error():
    with pytest.raises(WorkbenchError, match="cannot load LLM 'no-such-org/no-such-llm'"):
        NoteEncoder(NoteEncoderConfig.tiny("text", llm="no-such-org/no-such-llm"))
    with pytest.raises(WorkbenchError, match="cannot load vision tower"):
        NoteEncoder(NoteEncoderConfig.tiny("basic", vision="no-such-org/no-such-vit"))


def test_unsupported_architectures_are_a_clear_error(tmp_path):
    from transformers import BertConfig

    folder = tmp_path / "bert"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(folder)
    with pytest.raises(WorkbenchError, match="unsupported vision architecture 'bert'"):
        NoteEncoder(NoteEncoderConfig.tiny("basic", vision=str(folder)))


def test_empty_text_and_overlong_text_still_encode(models):
    model = models["micl+late"]
    notes = [Note("empty", "", "", [], picture("red")), Note("long", "word " * 500, "more " * 5000, [], None)]
    vectors = model.encode(notes)
    assert np.isfinite(vectors).all()
    prompt = model.prompts.build(notes[1])
    assert len(prompt.ids) <= model.config.prompt.max_prompt_tokens + model.connector.num_tokens


def test_mlp_connector_gives_one_token_per_patch_plus_pooled():
    model = NoteEncoder(NoteEncoderConfig.tiny("basic", connector="mlp"), device="cpu")
    batch = model.collate(sample_notes()[:1])
    rows, cols = model.vision.grid
    assert int((batch["input_ids"] == IMAGE_TOKEN).sum()) == rows * cols + 1
    assert model.encode(sample_notes()).shape == (4, 16)
