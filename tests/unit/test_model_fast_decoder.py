"""The fast inference path of the LLM (core/models/fast_decoder.py) computes the model's own function."""
import numpy as np
import torch

from core.models import fast_decoder
from core.models.note_encoder import NoteEncoder, NoteEncoderConfig
from tests.unit.model_fixtures import sample_notes


def _model(variant="micl+late"):
    torch.manual_seed(0)
    model = NoteEncoder(NoteEncoderConfig.tiny(variant)).eval()
    with torch.no_grad():  # non-zero LoRA so that folding it into the weights is exercised
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return model


def _both_paths(model, notes):
    model.fast_inference = False
    reference = model.encode(notes, batch_size=3)
    model.fast_inference = True
    return reference, model.encode(notes, batch_size=3)


def test_fast_path_matches_the_reference_forward_for_every_image_mode():
    for variant in ("text", "basic", "micl+late"):
        model = _model(variant)
        assert fast_decoder.supports(model.llm)
        reference, fast = _both_paths(model, sample_notes())
        np.testing.assert_allclose(fast, reference, atol=1e-5)
        assert model._fused_llm is not None


def test_fused_weights_follow_weight_updates():
    model = _model()
    notes = sample_notes()
    before = model.encode(notes)
    with torch.no_grad():
        for name, parameter in model.llm.named_parameters():
            if "lora_A" in name:
                parameter.mul_(-1.0)  # an in-place update, as an optimizer step does
    reference, fast = _both_paths(model, notes)
    assert not np.allclose(fast, before, atol=1e-4)
    np.testing.assert_allclose(fast, reference, atol=1e-5)


def test_training_forward_drops_the_inference_copy_and_hooks_use_the_reference_path():
    model = _model()
    notes = sample_notes()
    model.encode(notes)
    assert model._fused_llm is not None
    model.train()
    model(model.collate(notes)).embedding.sum().backward()
    assert model._fused_llm is None
    model.eval()
    seen = []
    handle = model.llm.layers[0].register_forward_hook(lambda *args: seen.append(1))
    model.encode(notes)
    handle.remove()
    assert seen
